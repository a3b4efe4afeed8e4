"""Trusted source networks: valve-infra's tools on the gateway need no token; a DUT never acts as the operator.

The DUT is a real host on a network of its own: a network namespace joined to this one by a veth pair
(``10.213.0.1`` here, ``10.213.0.50`` the DUT), so the API sees a real peer address that is not the
gateway's.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from tests.conftest import make_settings, running_farm
from tests.netns import dut_namespace
from valve_console.backend.boot import BootCache, BootCacheError
from valve_console.backend.trust import Trust, own_addresses

GATEWAY, DUT = "10.213.0.1", "10.213.0.50"


@pytest.fixture(scope="module")
def dut_netns() -> Iterator[str]:
    """A network namespace holding the "DUT" at 10.213.0.50, linked to us (10.213.0.1) by a veth pair."""
    with dut_namespace("dut", GATEWAY, (DUT,)) as ns:
        yield ns


async def from_dut(ns: str, method: str, url: str, **kwargs) -> httpx.Response:
    """One HTTP request made from inside the DUT's namespace (its source address is the DUT's)."""
    return await asyncio.to_thread(_from_dut, ns, method, url, **kwargs)


def _from_dut(ns: str, method: str, url: str, **kwargs) -> httpx.Response:
    code = (
        "import httpx, json, sys; a = json.loads(sys.argv[1]); "
        "r = httpx.request(a['method'], a['url'], json=a.get('json'), timeout=10); "
        "print(r.status_code); print(r.text)"
    )
    import json

    args = json.dumps({"method": method, "url": url, **kwargs})
    out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code, args], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    status, _, text = out.stdout.partition("\n")
    return httpx.Response(int(status), text=text.rstrip("\n"))


@contextlib.asynccontextmanager
async def farm_trusting(tmp_path: Path, trusted: list[str]):
    data = tmp_path / f"data-{len(trusted)}-{'-'.join(trusted)}".replace("/", "_")
    async with running_farm(make_settings(data, listen="0.0.0.0:0", trusted_networks=trusted)) as farm:
        yield farm, farm.api_address[1]


PDU = {"name": "d1", "driver": "dummy", "config": {"ports": 2}}


def test_auto_trusts_loopback_and_the_gateways_own_addresses_only():
    trust = Trust(["auto"])
    assert trust.is_trusted("127.0.0.1") and trust.is_trusted("::1") and trust.is_trusted("::ffff:127.0.0.1")
    assert all(trust.is_trusted(str(a)) for a in own_addresses())
    assert not trust.is_trusted("10.42.0.66") and not trust.is_trusted(None) and not trust.is_trusted("nonsense")
    assert not Trust([]).is_trusted("127.0.0.1") and not Trust(["none"]).is_trusted("127.0.0.1")
    listed = Trust(["10.42.0.66/32"])
    assert listed.is_trusted("10.42.0.66") and not listed.is_trusted("127.0.0.1")
    with pytest.raises(ValueError, match="'10.42.0.300/24' is not a network"):
        Trust(["auto", "10.42.0.300/24"])


async def test_a_local_tool_acts_without_a_token_and_a_dut_cannot(dut_netns, tmp_path):
    async with farm_trusting(tmp_path, ["auto"]) as (farm, port):
        async with httpx.AsyncClient() as local:  # no token: valve-infra's dashboard and trigger containers
            r = await local.post(f"http://127.0.0.1:{port}/api/v1/pdu/", json=PDU)
            assert r.status_code == 201, r.text
            r = await local.post(f"http://{GATEWAY}:{port}/api/v1/pdu/d1/port/0/state", json={"state": "off"})
            assert r.status_code == 200, r.text  # the gateway's own private address counts as the gateway
        refused = await from_dut(dut_netns, "POST", f"http://{GATEWAY}:{port}/api/v1/pdu/d1/port/0/state",
                           json={"state": "on"})
        assert refused.status_code == 401 and "operator token required" in refused.json()["error"]
        assert (await from_dut(dut_netns, "GET", f"http://{GATEWAY}:{port}/api/v1/machines")).status_code == 200
        assert len(farm.power.pdus) == 1


async def test_without_trusted_networks_the_token_is_needed_again(dut_netns, tmp_path):
    async with farm_trusting(tmp_path, ["none"]) as (farm, port):
        async with httpx.AsyncClient() as local:
            r = await local.post(f"http://127.0.0.1:{port}/api/v1/pdu/", json=PDU)
            assert r.status_code == 401
            r = await local.post(f"http://127.0.0.1:{port}/api/v1/pdu/", json=PDU,
                                 headers={"Authorization": f"Bearer {farm.token}"})
            assert r.status_code == 201
    async with farm_trusting(tmp_path, [f"{DUT}/32"]) as (farm, port):  # an operator may list a host
        listed = await from_dut(dut_netns, "POST", f"http://{GATEWAY}:{port}/api/v1/pdu/", json=PDU)
        assert listed.status_code == 201, listed.text


async def test_the_boot_cache_never_fetches_from_a_trusted_address(dut_netns, tmp_path):
    """A job's kernel URL on the gateway itself, or a remote one that redirects there, is refused."""
    trust = Trust(["auto"])
    cache = BootCache(tmp_path / "files", "http://10.42.0.1:8000/files", guard=trust.check_fetch_url)
    with pytest.raises(BootCacheError, match=r"points at 127\.0\.0\.1, an address of the gateway"):
        await cache.local_url("http://127.0.0.1:8000/api/v1/events", "kernel")
    with pytest.raises(BootCacheError, match="an address of the gateway"):
        await cache.local_url("http://localhost:9/kernel", "kernel")
    assert await cache.local_url("http://10.42.0.1:8000/boot/default_kernel") == (
        "http://10.42.0.1:8000/boot/default_kernel"  # the gateway's own files: the DUT fetches them, not us
    )
    # a server on the DUT's network that redirects to the gateway's loopback
    script = (
        "import http.server\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        self.send_response(302); self.send_header('Location', 'http://127.0.0.1:8000/api/v1/events')\n"
        "        self.end_headers()\n"
        f"http.server.HTTPServer(('{DUT}', 8081), H).serve_forever()\n"
    )
    server = subprocess.Popen(["ip", "netns", "exec", dut_netns, sys.executable, "-c", script])
    try:
        async with httpx.AsyncClient() as probe:
            for _ in range(50):
                with contextlib.suppress(httpx.HTTPError):
                    await probe.get(f"http://{DUT}:8081/", timeout=1)
                    break
                await asyncio.sleep(0.1)
        with pytest.raises(BootCacheError, match=r"http://127\.0\.0\.1:8000/api/v1/events points at 127\.0\.0\.1"):
            await cache.local_url(f"http://{DUT}:8081/kernel", "kernel")
    finally:
        server.kill()
        server.wait()
    assert cache.downloads == 0 and not list((tmp_path / "files").glob("*"))
