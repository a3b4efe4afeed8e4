"""Boot artefacts cached and served at /files/, and the dnsmasq hosts file kept in line with the machines."""

from __future__ import annotations

import asyncio
import os
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import AsyncIterator, Iterator

import httpx
import pytest

from tests.conftest import api_url, make_settings
from tests.jobs.conftest import FakeDuts, job_yaml, mac_of, wait_job
from valve_console.backend.boot import BootService, find_dnsmasq, parse_dhcp_hosts
from valve_console.backend.events import EventBus
from valve_console.backend.farm import Farm

KERNEL = os.urandom(4096)
INITRD = os.urandom(3000)


@pytest.fixture
def upstream() -> Iterator[tuple[str, list[str]]]:
    """(base URL, requested paths) of a local HTTP server with /vmlinuz and /initrd.img (else 404)."""
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            hits.append(self.path)
            if self.path == "/boot/slow":  # a kernel that never finishes
                self.send_response(200)
                self.send_header("Content-Length", str(1 << 20))
                self.end_headers()
                for _ in range(100):
                    try:
                        self.wfile.write(b"x" * 100)
                        self.wfile.flush()
                    except OSError:
                        return
                    time.sleep(0.1)
                return
            body = {"/boot/vmlinuz": KERNEL, "/boot/initrd.img": INITRD}.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", hits
    finally:
        server.shutdown()
        server.server_close()


async def _farm(tmp_path: Path, **settings) -> Farm:
    farm = Farm(make_settings(tmp_path / "data", **settings))
    await farm.start()
    return farm


@pytest.fixture
async def cachefarm(tmp_path: Path) -> AsyncIterator[tuple]:
    """(farm, http, macs, duts): like the jobs' ``jobfarm``, with the boot cache on."""
    farm = await _farm(tmp_path, boot_cache=True, hosts_debounce=0.05)
    http = httpx.AsyncClient(base_url=api_url(farm), timeout=10, headers={"Authorization": f"Bearer {farm.token}"})
    await farm.power.add_pdu("d1", "dummy", {"ports": 2})
    macs = [mac_of(i) for i in range(2)]
    for i, mac in enumerate(macs):
        reg = {"base_name": "fake", "tags": ["gpu:fake"], "mac_address": mac, "ip_address": f"10.0.0.{i + 10}"}
        assert (await http.post("/api/v1/machine/", json=reg)).status_code == 200
        patch = {"pdu": "d1", "pdu_port_id": str(i), "ready_for_service": True}
        assert (await http.patch(f"/api/v1/machine/{mac}/", json=patch)).status_code == 200
    duts = FakeDuts(farm)
    duts.start(macs)
    try:
        yield farm, http, macs, duts
    finally:
        await duts.stop()
        await http.aclose()
        await farm.stop()


def remote_job(base: str, kernel: str = "/boot/vmlinuz", mac: str | None = None) -> str:
    text = job_yaml("pass", target=f"id: '{mac}'" if mac else "tags: ['gpu:fake']")
    text = text.replace("http://127.0.0.1/kernel", base + kernel)
    return text.replace("http://127.0.0.1/initrd", base + "/boot/initrd.img")


async def test_remote_artefacts_are_cached_and_served(cachefarm, upstream) -> None:
    farm, http, macs, _ = cachefarm
    base, hits = upstream
    seen: list[str] = []

    async def watch() -> None:  # the boot.ipxe the DUT would fetch while the job runs
        while True:
            r = await http.get(f"/boot/{macs[0]}/boot.ipxe?platform=efi")
            if "-vmlinuz" in r.text:
                seen.append(r.text)
                return
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch())
    r = await http.post("/api/v1/jobs", json={"job": remote_job(base, mac=macs[0])})
    assert r.status_code == 200, r.text
    job = await wait_job(http, r.json()["id"])
    assert job["status"] == "PASS", job
    await asyncio.wait_for(watcher, 5)
    files = f"http://{farm.api_address[0]}:{farm.api_address[1]}/files/"
    kernel_url = re.search(r"^kernel (\S+)", seen[0], re.M).group(1)
    initrd_url = re.search(r"^initrd --name initrd (\S+)", seen[0], re.M).group(1)
    assert kernel_url.startswith(files) and kernel_url.endswith("-vmlinuz"), seen[0]
    assert initrd_url.startswith(files) and initrd_url.endswith("-initrd.img"), seen[0]
    assert base not in seen[0]
    async with httpx.AsyncClient() as anonymous:  # open to the DUTs: no token
        assert (await anonymous.get(kernel_url)).content == KERNEL
        assert (await anonymous.get(initrd_url)).content == INITRD
    assert sorted(hits) == ["/boot/initrd.img", "/boot/vmlinuz"]

    # A second job with the same URLs (on the other machine) does not download again.
    r = await http.post("/api/v1/jobs", json={"job": remote_job(base, mac=macs[1])})
    assert (await wait_job(http, r.json()["id"]))["status"] == "PASS"
    assert len(hits) == 2
    assert farm.jobs.boot_cache.downloads == 2


async def test_upstream_404_is_a_setup_fail(cachefarm, upstream) -> None:
    farm, http, _, duts = cachefarm
    base, _ = upstream
    r = await http.post("/api/v1/jobs", json={"job": remote_job(base, "/boot/missing")})
    job = await wait_job(http, r.json()["id"])
    assert job["status"] == "SETUP_FAIL", job
    assert "HTTP 404" in job["result"] and "/boot/missing" in job["result"], job
    assert not duts.boots  # the DUT was never booted
    assert not [p for p in (farm.settings.data_dir / "files").iterdir() if p.name.endswith(".part")]


async def test_cancel_stops_the_download(cachefarm, upstream) -> None:
    farm, http, _, duts = cachefarm
    base, hits = upstream
    r = await http.post("/api/v1/jobs", json={"job": remote_job(base, "/boot/slow")})
    job_id = r.json()["id"]
    deadline = asyncio.get_running_loop().time() + 5
    while "/boot/slow" not in hits:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)
    assert (await http.delete(f"/api/v1/job/{job_id}")).status_code == 200
    job = await wait_job(http, job_id, timeout=5)
    assert job["status"] == "INCOMPLETE" and job["result"] == "cancelled", job
    assert not duts.boots
    assert not list((farm.settings.data_dir / "files").iterdir())  # no partial file left


async def test_files_refuses_bad_names(farm) -> None:
    files = farm.settings.data_dir / "files"
    files.mkdir(parents=True, exist_ok=True)
    (files / "kernel").write_bytes(b"kernel bytes")
    (farm.settings.data_dir / "secret").write_text("no")
    async with httpx.AsyncClient(base_url=api_url(farm)) as http:
        r = await http.get("/files/kernel")
        assert r.status_code == 200 and r.content == b"kernel bytes"
        r = await http.get("/files/nothing-here")
        assert r.status_code == 404 and "nothing-here" in r.json()["error"]
        for name in ("..secret", ".hidden", "a%20b", "..%2Fsecret"):
            r = await http.get(f"/files/{name}")
            assert r.status_code in (400, 404), (name, r.status_code)
            assert "secret" not in r.text or "error" in r.json()
        assert (await http.get("/files/%2E%2E%2Fsecret")).status_code in (400, 404)
        assert (await http.get("/files/../secret")).status_code == 404


async def test_local_urls_are_not_downloaded(cachefarm) -> None:
    farm, http, macs, _ = cachefarm
    files = farm.settings.data_dir / "files"
    files.mkdir(exist_ok=True)
    (files / "kernel").write_bytes(KERNEL)
    local = f"http://{farm.api_address[0]}:{farm.api_address[1]}/files"
    text = job_yaml("pass").replace("http://127.0.0.1/kernel", f"{local}/kernel")
    text = text.replace("http://127.0.0.1/initrd", f"{local}/kernel")
    r = await http.post("/api/v1/jobs", json={"job": text})
    assert (await wait_job(http, r.json()["id"]))["status"] == "PASS"
    assert farm.jobs.boot_cache.downloads == 0


# ---------------------------------------------------------------------------------- dnsmasq hosts file


async def _hosts(farm: Farm, want: int, timeout: float = 5.0) -> list:
    path = farm.settings.data_dir / "dnsmasq" / "hosts.dhcp"
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        hosts = parse_dhcp_hosts(path.read_text()) if path.exists() else []
        if len(hosts) == want:
            return hosts
        assert asyncio.get_running_loop().time() < deadline, hosts
        await asyncio.sleep(0.05)


async def test_hosts_file_follows_the_machines(tmp_path: Path) -> None:
    farm = await _farm(tmp_path, hosts_debounce=0.05)
    try:
        async with httpx.AsyncClient(base_url=api_url(farm), headers={"Authorization": f"Bearer {farm.token}"}) as http:
            assert await _hosts(farm, 0) == []
            for i, name in enumerate(("gfx9_a", "Navi.21")):
                reg = {"base_name": name, "tags": [], "mac_address": mac_of(i), "ip_address": f"10.42.0.{20 + i}"}
                assert (await http.post("/api/v1/machine/", json=reg)).status_code == 200
            hosts = await _hosts(farm, 2)
            names = {mac: m["full_name"] for mac, m in farm.view.machines().items()}
            assert [(h.mac, h.ip) for h in hosts] == [(mac_of(0), "10.42.0.20"), (mac_of(1), "10.42.0.21")]
            for host in hosts:
                assert re.fullmatch(r"[a-z0-9-]+", host.hostname), host
                assert host.hostname == re.sub(r"[^a-z0-9-]+", "-", names[host.mac].lower()).strip("-")
            mode = (farm.settings.data_dir / "dnsmasq" / "hosts.dhcp").stat().st_mode & 0o777
            assert mode == 0o644

            # A new IP at re-registration changes the file; retiring drops the machine.
            reg = {"base_name": "gfx9_a", "tags": [], "mac_address": mac_of(0), "ip_address": "10.42.0.99"}
            assert (await http.post("/api/v1/machine/", json=reg)).status_code == 200
            deadline = asyncio.get_running_loop().time() + 5
            while "10.42.0.99" not in (await _hosts(farm, 2))[0].ip:
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.05)
            assert (await http.post(f"/api/v1/machine/{mac_of(1)}/retire")).status_code == 200
            assert [(h.mac, h.ip) for h in await _hosts(farm, 1)] == [(mac_of(0), "10.42.0.99")]
            assert farm.health()["services"]["boot"]["state"] == "ok"
    finally:
        await farm.stop()


@pytest.mark.skipif(find_dnsmasq() is None, reason="dnsmasq is not installed")
async def test_managed_dnsmasq_bad_config_degrades_boot(tmp_path: Path) -> None:
    # An interface name dnsmasq's config check refuses is not possible (we validate it), so give an
    # invalid private IP: the service 'boot' is degraded with the reason; the hosts file is still written.
    os.environ["VALVE_CONSOLE_PRIVATE_IP"] = "10.42.0.50"  # inside the default DHCP range
    try:
        farm = await _farm(tmp_path, dnsmasq_interface="vc-test0")
    finally:
        del os.environ["VALVE_CONSOLE_PRIVATE_IP"]
    try:
        health = farm.health()
        assert health["services"]["boot"]["state"] == "degraded", health
        assert "DHCP range" in health["services"]["boot"]["reason"]
        assert health["status"] == "degraded"
        assert (farm.settings.data_dir / "dnsmasq" / "hosts.dhcp").exists()
        assert farm.boot.proc is None
    finally:
        await farm.stop()


@pytest.mark.skipif(find_dnsmasq() is None, reason="dnsmasq is not installed")
async def test_failing_dnsmasq_check_degrades_boot(tmp_path: Path) -> None:
    bus = EventBus()
    service = BootService(bus, lambda: [], tmp_path / "dnsmasq", dnsmasq_conf="port=0\nno-such-option=1\n")
    await service.start()
    try:
        assert service.state == "degraded"
        assert "config check failed" in service.reason and "bad option at line 2" in service.reason, service.reason
        assert service.proc is None
        assert (tmp_path / "dnsmasq" / "hosts.dhcp").exists()
    finally:
        await service.stop()
