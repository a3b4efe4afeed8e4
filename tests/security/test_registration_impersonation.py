"""Issue 15, reproduction 8: registration rewrote other machines.

Re-posting a victim's MAC from another DUT changed its IP, name, tags and tty while it stayed IDLE and
ready; a new MAC with the victim's IP took its DHCP pin. Now a known machine re-registering from an
address other than its own, or changing its identity while ready for service, is held for the operator
(shown in its JSON and in ``GET /api/v1/registrations/held``, approved or rejected by the operator), and
an IP pinned to another machine is refused with 409 naming it. The DUTs are real peers on a network
namespace; loopback is the gateway's own tools (Vivian, the operator), which may re-register anything.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from tests.conftest import eventually
from tests.security import conftest_registration
from tests.security.conftest_registration import (
    ATTACKER,
    VICTIM,
    dut_url,
    local_url,
    registration,
    running_farm,
)
from valve_console.backend.boot import parse_dhcp_hosts

dut_network = conftest_registration.dut_network  # the module's DUT network (a fixture)

VICTIM_MAC = "52:54:00:aa:00:13"
ATTACKER_MAC = "52:54:00:aa:00:66"


def pins(farm) -> list[tuple[str, str, str]]:
    path = farm.settings.data_dir / "dnsmasq" / "hosts.dhcp"
    return [tuple(h) for h in parse_dhcp_hosts(path.read_text())] if path.exists() else []


def operator_client(farm) -> httpx.AsyncClient:
    """The operator's tools on the gateway: loopback, with the token."""
    return httpx.AsyncClient(base_url=local_url(farm, ""), headers={"Authorization": f"Bearer {farm.token}"})


async def from_dut(net, source: str, farm, body: dict) -> httpx.Response:
    return await asyncio.to_thread(net.request, source, "POST", dut_url(farm, "/api/v1/machine/"), body)


async def ready_victim(farm, net, http: httpx.AsyncClient) -> dict:
    """The victim registers from its own address, gets an outlet and is made ready for service (IDLE)."""
    r = await from_dut(net, VICTIM, farm, registration(VICTIM_MAC, VICTIM))
    assert r.status_code == 200, r.text
    r = await http.post("/api/v1/pdu/", json={"name": "d1", "driver": "dummy", "config": {"ports": 4}})
    assert r.status_code == 201, r.text
    r = await http.patch(f"/api/v1/machine/{VICTIM_MAC}/",
                         json={"pdu": "d1", "pdu_port_id": "1", "ready_for_service": True})
    assert r.status_code == 200, r.text
    machine = r.json()
    assert machine["state"] == "IDLE" and machine["pending_registration"] is None
    await eventually(lambda: pins(farm) == [(VICTIM_MAC, VICTIM, machine["full_name"])], "the victim's DHCP pin")
    return machine


async def test_another_dut_cannot_rewrite_a_ready_machine_or_take_its_ip(dut_network, tmp_path: Path) -> None:
    async with running_farm(tmp_path / "data") as farm:
        async with operator_client(farm) as http:
            before = await ready_victim(farm, dut_network, http)

            # The attacker re-posts the victim's MAC with its own IP, another name, tags and tty.
            forged = registration(VICTIM_MAC, ATTACKER, base_name="evil", tags=["evil"], local_tty_device="ttyS9")
            r = await from_dut(dut_network, ATTACKER, farm, forged)
            assert r.status_code == 202, r.text
            assert "held for the operator" in r.json()["message"]
            after = (await http.get(f"/api/v1/machine/{VICTIM_MAC}/")).json()
            for key in ("ip_address", "base_name", "full_name", "tags", "local_tty_device", "state",
                        "ready_for_service", "last_seen"):
                assert after[key] == before[key], key
            held = after["pending_registration"]
            assert held["source"] == ATTACKER
            assert held["changes"] == {"ip_address": ATTACKER, "base_name": "evil", "tags": ["evil"],
                                       "local_tty_device": "ttyS9"}
            assert any(f"from {ATTACKER}, not from its own address {VICTIM}" in why for why in held["reasons"])
            listed = (await http.get("/api/v1/registrations/held")).json()["held"]
            assert list(listed) == [VICTIM_MAC] and listed[VICTIM_MAC]["source"] == ATTACKER
            assert pins(farm) == [(VICTIM_MAC, VICTIM, before["full_name"])]

            # A new MAC with the victim's IP is refused, naming the victim; its pin stays.
            r = await from_dut(dut_network, ATTACKER, farm, registration(ATTACKER_MAC, VICTIM))
            assert r.status_code == 409, r.text
            assert r.json()["error"] == (
                f"the IP address {VICTIM} is pinned to {before['full_name']} ({VICTIM_MAC}): "
                "a machine cannot take another machine's address"
            )
            # The same from the gateway itself: one IP, one pinned machine, whoever asks.
            r = await http.post("/api/v1/machine/", json=registration(ATTACKER_MAC, VICTIM))
            assert r.status_code == 409 and before["full_name"] in r.json()["error"]
            # A new machine must register from the address it reports.
            r = await from_dut(dut_network, ATTACKER, farm, registration(ATTACKER_MAC, "10.214.0.99"))
            assert r.status_code == 403 and "from the address it reports" in r.json()["error"], r.text
            assert ATTACKER_MAC not in (await http.get("/api/v1/machines")).json()["machines"]
            await asyncio.sleep(0.2)  # the hosts writer's debounce is 0.05 s: nothing may have changed
            assert pins(farm) == [(VICTIM_MAC, VICTIM, before["full_name"])]
            assert farm.health()["services"]["boot"]["state"] == "ok"

            # The operator rejects the held registration: nothing changes, and it is gone from the list.
            assert (await httpx.AsyncClient().post(local_url(farm, f"/api/v1/machine/{VICTIM_MAC}/registration/reject"))
                    ).status_code == 401
            r = await http.post(f"/api/v1/machine/{VICTIM_MAC}/registration/reject")
            assert r.status_code == 200, r.text
            assert r.json()["pending_registration"] is None and r.json()["ip_address"] == VICTIM
            assert (await http.get("/api/v1/registrations/held")).json()["held"] == {}
            r = await http.post(f"/api/v1/machine/{VICTIM_MAC}/registration/approve")
            assert r.status_code == 404 and "no held registration" in r.json()["error"]


async def test_a_ready_machine_changing_its_identity_waits_for_the_operator(dut_network, tmp_path: Path) -> None:
    async with running_farm(tmp_path / "data") as farm:
        async with operator_client(farm) as http:
            before = await ready_victim(farm, dut_network, http)
            # The same registration from its own address is applied (it only updates last_seen).
            r = await from_dut(dut_network, VICTIM, farm, registration(VICTIM_MAC, VICTIM))
            assert r.status_code == 200 and r.json()["last_seen"] > before["last_seen"]
            # New tags from its own address while ready for service: held, the machine stays IDLE.
            r = await from_dut(dut_network, VICTIM, farm, registration(VICTIM_MAC, VICTIM, tags=["new:gpu"]))
            assert r.status_code == 202, r.text
            machine = (await http.get(f"/api/v1/machine/{VICTIM_MAC}/")).json()
            assert machine["tags"] == before["tags"] and machine["state"] == "IDLE"
            assert machine["pending_registration"]["changes"] == {"tags": ["new:gpu"]}
            assert "ready for service" in " ".join(machine["pending_registration"]["reasons"])
            # The operator approves: now it is applied, and the hold is gone.
            r = await http.post(f"/api/v1/machine/{VICTIM_MAC}/registration/approve")
            assert r.status_code == 200, r.text
            assert r.json()["tags"] == ["new:gpu"] and r.json()["pending_registration"] is None
            assert r.json()["full_name"] == before["full_name"]

            # Not ready for service (training, a new machine): its own re-registration is applied at once.
            r = await http.patch(f"/api/v1/machine/{VICTIM_MAC}/", json={"ready_for_service": False})
            assert r.status_code == 200
            r = await from_dut(dut_network, VICTIM, farm, registration(VICTIM_MAC, VICTIM, local_tty_device="ttyS1"))
            assert r.status_code == 200 and r.json()["local_tty_device"] == "ttyS1"
            # From another DUT it is held even then: only the machine itself (or the gateway) re-registers it.
            r = await from_dut(dut_network, ATTACKER, farm, registration(VICTIM_MAC, VICTIM, local_tty_device="ttyS2"))
            assert r.status_code == 202
            assert (await http.get(f"/api/v1/machine/{VICTIM_MAC}/")).json()["local_tty_device"] == "ttyS1"
            # The gateway's own tools (loopback: Vivian, the operator's scripts) may re-register anything.
            async with httpx.AsyncClient(base_url=local_url(farm, "")) as anonymous:
                r = await anonymous.post("/api/v1/machine/", json=registration(VICTIM_MAC, "10.214.0.50", tags=["x"]))
            assert r.status_code == 200 and r.json()["ip_address"] == "10.214.0.50"
            await eventually(lambda: pins(farm) == [(VICTIM_MAC, "10.214.0.50", before["full_name"])], "the new pin")
