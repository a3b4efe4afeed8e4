"""A QEMU DUT (TCG) behind a vPDU outlet network-boots from a real backend, registers and shows its console.

Real peers only: ``valve-console --backend-only`` in a subprocess, ``vivian/vpdu.py --dut qemu`` in a
subprocess, and QEMU booting the Debian kernel + busybox initramfs of ``vivian/build_dut_image.py``
(cached in ``.cache/vivian``) through iPXE from the backend's ``/boot/<mac>/boot.ipxe`` and ``/files/``.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import poll_until
from tests.e2e.helpers import ROOT, Backend, free_port
from vivian.build_dut_image import BuildError, DutImage, build
from vivian.qemu import unreachable_boot_urls
from vivian.vpdu import outlet_mac

pytestmark = [
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86 is not installed"),
    pytest.mark.skipif(
        not Path("/usr/lib/ipxe/qemu/efi-virtio.rom").exists(), reason="ipxe-qemu (QEMU's iPXE ROMs) is not installed"
    ),
]

OUTLET = 2
MAC = outlet_mac(OUTLET)
BOOT_PATIENCE = 240.0  # TCG: ~12 s alone (iPXE), far more when the 2 shared cores are busy


@pytest.fixture(scope="module")
def image() -> DutImage:
    try:
        return build()
    except BuildError as exc:
        pytest.skip(f"the DUT image cannot be built from Debian packages: {exc}")


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def farm_with_qemu_vpdu(tmp_path: Path, image: DutImage, *dut_args: str, boot_api_host: bool = True):
    """A backend serving ``image`` as its default boot and a ``--dut qemu`` vPDU registered as ``vpdu1``."""
    data = tmp_path / "data"
    image.install(data)  # the gateway's default boot: /files/kernel and /files/initramfs.cpio.xz
    backend = Backend(data)
    if boot_api_host:
        backend.env["VALVE_CONSOLE_BOOT_API_HOST"] = f"10.0.2.2:{backend.port}"  # the API as slirp guests reach it
    backend.start()
    vpdu_port = free_port()
    vpdu = subprocess.Popen(
        [sys.executable, "vivian/vpdu.py", "--port", str(vpdu_port), "--num-ports", "4", "--dut", "qemu",
         "--api", backend.url, "--console", f"127.0.0.1:{backend.netconsole_port}",
         "--log-dir", str(tmp_path / "vivian"), "--log-level", "WARNING", *(f"--dut-arg={a}" for a in dut_args)],
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        poll_until(lambda: listening(vpdu_port), "the vPDU to listen", timeout=15, every=0.5)
        with backend.http() as http:
            pdu = {"name": "vpdu1", "driver": "vpdu", "config": {"hostname": f"127.0.0.1:{vpdu_port}"}}
            assert http.post("/api/v1/pdu/", json=pdu).status_code == 201
            yield backend, vpdu, http
    finally:
        vpdu.terminate()
        try:
            vpdu.wait(15)
        finally:
            if vpdu.poll() is None:
                vpdu.kill()
        backend.stop()


def boot_to_the_end(http) -> str:
    """Power the outlet on and return the DUT's console once it printed the end of its boot."""
    r = http.post(f"/api/v1/pdu/vpdu1/port/{OUTLET}/state", json={"state": "on"})
    assert r.json()["state"] == "ON", r.text

    def console_text() -> str:
        r = http.get(f"/api/v1/console/{MAC}/log")
        return r.text if r.status_code == 200 else ""

    return poll_until(lambda: (t := console_text()) and "safe to turn off" in t and t, "the end of the boot",
                      timeout=BOOT_PATIENCE, every=0.5)


def test_a_qemu_dut_network_boots_from_the_gateway_registers_and_shows_its_console(
    tmp_path: Path, image: DutImage
) -> None:
    with farm_with_qemu_vpdu(tmp_path, image) as (backend, vpdu, http):
        text = boot_to_the_end(http)
        machine = _json_if_ok(http.get(f"/api/v1/machine/{MAC}/"))
        assert machine is not None, "the DUT did not register"
        assert machine["ip_address"] == "10.0.2.17"  # slirp's DHCP: 10.0.2.<15 + outlet>
        assert machine["local_tty_device"] == "ttyS0"
        assert machine["base_name"] == "virtio"
        api = f"http://10.0.2.2:{backend.port}"
        # the firmware: QEMU's iPXE ROM fetched the gateway's script and files over slirp
        assert "iPXE" in text and f"Filename: {api}/boot/{MAC}/boot.ipxe" in text
        # "<url>... ok", with iPXE's progress figures in between when the download is slow (a loaded host)
        for name in ("kernel", "initramfs.cpio.xz"):
            assert re.search(re.escape(f"{api}/files/{name}...") + r"[^\n]*ok", text), name
        # the kernel's own log, with the command line of the gateway's registration boot
        assert "Linux version 6." in text and "DMI: QEMU Standard PC" in text
        assert f"machine_registration:latest -m 10.0.2.2:{backend.port} register" in text
        # the initramfs: console found by SALAD.ping/pong, then registered
        assert "+ b2c: eth0 is up, address 10.0.2.17" in text
        assert text.index("SALAD.ping") < text.rindex(f"SALAD.machine_id={MAC}") < text.index("MaRS:")
        assert unreachable_boot_urls(backend.url, MAC) == []
        assert "\r\nMaRS: Registration complete\n" in text  # a bare \n, as valve-infra's pattern wants
        assert "It's now safe to turn off your computer\r\n" in text
        console = http.get(f"/api/v1/console/{MAC}").json()
        assert console["connected"] and console["source"].startswith("netconsole@")

        # outlet OFF is a power cut: QEMU dies, its serial connection to the netconsole closes
        r = http.post(f"/api/v1/pdu/vpdu1/port/{OUTLET}/state", json={"state": "off"})
        assert r.json()["state"] == "OFF", r.text
        assert not _qemu_children(vpdu.pid), "QEMU survived the outlet OFF"
        poll_until(lambda: not http.get(f"/api/v1/console/{MAC}").json()["connected"], "the console to disconnect",
                   timeout=15, every=0.5)
    log = backend.log_text()
    assert f"{MAC} queried its boot configuration" in log


def test_the_kernel_fallback_boots_the_image_with_the_gateways_cmdline_and_registers(
    tmp_path: Path, image: DutImage
) -> None:
    # no boot_api_host: QEMU loads the image itself and tells the initramfs where the API is (vivian.api=)
    with farm_with_qemu_vpdu(tmp_path, image, "--boot=kernel", boot_api_host=False) as (backend, _vpdu, http):
        text = boot_to_the_end(http)
        assert "iPXE initialising devices" not in text  # no network boot
        assert f"-m 127.0.0.1:{backend.port} register" in text  # the gateway's own registration cmdline
        assert f"vivian.api=10.0.2.2:{backend.port}" in text
        assert "MaRS: Registration complete" in text
        assert _json_if_ok(http.get(f"/api/v1/machine/{MAC}/")) is not None
        # without boot_api_host an iPXE boot would fail: qemu.py names the URLs the guest cannot reach
        files = f"http://127.0.0.1:{backend.port}/files"
        assert unreachable_boot_urls(backend.url, MAC) == [f"{files}/kernel", f"{files}/initramfs.cpio.xz"]


def _json_if_ok(response) -> dict | None:
    return response.json() if response.status_code == 200 else None


def _qemu_children(pid: int) -> list[int]:
    """PIDs of qemu-system processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if comm.startswith("qemu-system") and int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found
