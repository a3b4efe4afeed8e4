"""The seed README's walk-through, on the API, with the real programs.

Backend (``valve-console --backend-only``) + vPDU (``python vivian/vpdu.py``) as processes; the
operator uses ``python vivian/client.py`` to power outlet 3 like the seed's step 5.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.e2e.helpers import ROOT, Backend, free_port

MAC = "52:54:00:11:22:03"


def poll(fn, timeout=10.0, interval=0.1):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"not reached within {timeout} s (last: {last!r})")


@pytest.fixture
def farm_processes(tmp_path):
    backend = Backend(tmp_path / "data").start()
    vport = free_port()
    vpdu = subprocess.Popen(
        [
            sys.executable,
            "vivian/vpdu.py",
            "--port",
            str(vport),
            "--num-ports",
            "16",
            "--api",
            backend.url,
            "--console",
            f"127.0.0.1:{backend.netconsole_port}",
            "--log-dir",
            str(tmp_path / "vivian"),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert "vPDU listening" in vpdu.stdout.readline()
    try:
        with backend.http() as http:
            r = http.post(
                "/api/v1/pdu/",
                json={"name": "vpdu1", "pdu_model": "vpdu", "config": {"hostname": f"127.0.0.1:{vport}"}},
            )
            assert r.status_code == 201, r.text
        yield backend, vport
    finally:
        vpdu.terminate()
        vpdu.wait(10)
        assert backend.stop() == 0


def client(vport, *args):
    return subprocess.run(
        [sys.executable, "vivian/client.py", "--port", str(vport), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_seed_walkthrough_on_the_api(farm_processes):
    backend, vport = farm_processes
    with backend.http() as http:
        # 1. The services are healthy.
        assert http.get("/api/v1/health").json()["status"] == "ok"
        # 2. vPDU status: all ports OFF (both from the vPDU itself and as the gateway sees them).
        status = client(vport, "--status")
        assert status.returncode == 0 and status.stdout.count(": OFF") == 16
        pdus = poll(
            lambda: (
                (p := http.get("/api/v1/pdus").json()["pdus"])
                and all(o["state"] == "OFF" for o in p["vpdu1"]["ports"].values())
                and p
            )
        )
        # 3. One virtual PDU is registered, with 16 outlets.
        assert list(pdus) == ["vpdu1"] and len(pdus["vpdu1"]["ports"]) == 16
        # 4. No DUTs yet.
        assert http.get("/api/v1/machines").json()["machines"] == {}

        # 5. Power on a virtual test device.
        on = client(vport, "--outlet", "3", "--on")
        assert on.returncode == 0, on.stderr

        # 6. It boots and registers within 10 s.
        machines = poll(lambda: http.get("/api/v1/machines").json()["machines"], timeout=10)
        m = machines[MAC]
        assert m["ip_address"] == "10.42.0.13"
        assert set(m["tags"]) == {"virtio:pciid:0x1af4:0x1050", "virtio:family:VIRTIO"}
        assert m["local_tty_device"] == "ttyS1"  # 10. autoconfigured
        # 7. Not ready for service yet.
        assert m["ready_for_service"] is False and m["state"] == "WAIT_FOR_CONFIG"

        # 9 and 11. Set PDU vpdu1, port 3 and ready for service.
        r = http.patch(f"/api/v1/machine/{MAC}/", json={"pdu": "vpdu1", "pdu_port_id": 3, "ready_for_service": True})
        assert r.status_code == 200, r.text
        m = r.json()
        assert m["pdu"] == {"name": "vpdu1", "port_id": "3"} and m["ready_for_service"] is True
        assert m["state"] == "IDLE"

        # The machine's console log holds its boot log.
        log = poll(
            lambda: (t := http.get(f"/api/v1/console/{MAC}/log").text) and "MaRS: Registration complete" in t and t
        )
        assert "Linux version" in log and f"SALAD.machine_id={MAC}" in log
        consoles = http.get("/api/v1/consoles").json()["consoles"]
        assert consoles[MAC]["connected"] is True

        # The gateway sees outlet 3 ON (by polling: the operator used the vPDU client, not the API).
        poll(lambda: http.get("/api/v1/pdu/vpdu1").json()["ports"]["3"]["state"] == "ON")

        # Power it off again: the DUT stops, its console disconnects.
        off = client(vport, "--outlet", "3", "--off")
        assert off.returncode == 0
        poll(lambda: not http.get("/api/v1/consoles").json()["consoles"][MAC]["connected"])
        poll(lambda: http.get("/api/v1/pdu/vpdu1").json()["ports"]["3"]["state"] == "OFF")


def test_outlet_control_through_the_api_boots_the_dut(farm_processes):
    backend, vport = farm_processes
    with backend.http() as http:
        r = http.post("/api/v1/pdu/vpdu1/port/4/state", json={"state": "on"})
        assert r.json()["state"] == "ON"
        assert "Outlet   4: ON" in client(vport, "--status").stdout
        poll(lambda: "52:54:00:11:22:04" in http.get("/api/v1/machines").json()["machines"])
        r = http.post("/api/v1/pdu/vpdu1/port/4/state", json={"state": "off"})
        assert r.json()["state"] == "OFF"
