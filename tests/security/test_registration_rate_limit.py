"""Issue 15: open registration is rate-limited per source address (a token bucket).

A DUT registers once per boot, so its own re-registrations always pass; a source that posts faster
than the bucket refills gets 429 with the reason in words and a Retry-After, and nothing it sent is
applied. Other DUTs and the gateway's own tools (loopback) are not slowed down by it.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from tests.security import conftest_registration
from tests.security.conftest_registration import (
    ATTACKER,
    BYSTANDER,
    dut_url,
    local_url,
    registration,
    running_farm,
)

dut_network = conftest_registration.dut_network  # the module's DUT network (a fixture)

MAC = "52:54:00:bb:00:66"


async def post(net, source: str, farm, body: dict) -> httpx.Response:
    return await asyncio.to_thread(net.request, source, "POST", dut_url(farm, "/api/v1/machine/"), body)


async def test_a_flooding_source_gets_429_and_others_do_not(dut_network, tmp_path: Path) -> None:
    async with running_farm(tmp_path / "data", registration_rate_per_minute=60, registration_burst=3) as farm:
        answers = [await post(dut_network, ATTACKER, farm, registration(MAC, ATTACKER)) for _ in range(3)]
        assert [r.status_code for r in answers] == [200, 200, 200], [r.text for r in answers]
        last_seen = answers[-1].json()["last_seen"]
        refused = await post(dut_network, ATTACKER, farm, registration(MAC, ATTACKER, tags=["flood"]))
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"].startswith(
            f"too many registrations from {ATTACKER}: at most 60 a minute per source address (bursts of 3)"
        )
        assert 1 <= int(refused.headers["retry-after"]) <= 2
        machine = farm.view.machine(MAC)
        assert machine["last_seen"] == last_seen and machine["tags"] != ["flood"]  # nothing applied

        # Another DUT, and the gateway itself (loopback), are not limited by the flooding one.
        other = await post(dut_network, BYSTANDER, farm, registration("52:54:00:bb:00:77", BYSTANDER))
        assert other.status_code == 200, other.text
        async with httpx.AsyncClient(base_url=local_url(farm, "")) as local:
            for n in range(10):
                body = registration(f"52:54:00:cc:00:{n:02x}", f"10.9.0.{n + 1}")
                r = await local.post("/api/v1/machine/", json=body)
                assert r.status_code == 200, r.text

        # The bucket refills: one second later (60 a minute) the source may register once more.
        await asyncio.sleep(1.1)
        assert (await post(dut_network, ATTACKER, farm, registration(MAC, ATTACKER))).status_code == 200
        assert (await post(dut_network, ATTACKER, farm, registration(MAC, ATTACKER))).status_code == 429


async def test_a_dut_registering_once_per_boot_always_passes(dut_network, tmp_path: Path) -> None:
    """With the default bucket (10 a minute, bursts of 10) a DUT that re-registers at every boot of its
    training, even ten quick boots in a row, is never refused."""
    async with running_farm(tmp_path / "data") as farm:
        assert (farm.settings.registration_rate_per_minute, farm.settings.registration_burst) == (10, 10)
        started = time.monotonic()
        for boot in range(10):
            r = await post(dut_network, ATTACKER, farm, registration(MAC, ATTACKER))
            assert r.status_code == 200, f"boot {boot}: {r.text}"
        assert time.monotonic() - started < 30
