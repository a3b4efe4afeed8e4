"""The seed README's walk-through, on the API, with the real programs.

Backend (``valve-console --backend-only``) + vPDU (``python vivian/vpdu.py``) as processes; the
operator uses ``python vivian/client.py`` to power outlet 3 like the seed's step 5. It runs twice:
with ``vpdu1`` driven over the vPDU protocol, and with the vPDU behind the SNMP APC driver.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import poll_until
from tests.e2e.helpers import ROOT, Backend, Vpdu

MAC = "52:54:00:11:22:03"
SNMPD = shutil.which("snmpd") or ("/usr/sbin/snmpd" if Path("/usr/sbin/snmpd").exists() else None)


@pytest.fixture(params=["vpdu", "snmp"])
def farm_processes(request, tmp_path):
    """Yields (backend, vPDU TCP port, port id offset).

    APC outlets count from 1 where the vPDU's count from 0, so the seed's outlet 3 is APC port 4.
    """
    if request.param == "snmp" and SNMPD is None:
        pytest.skip("net-snmp snmpd is not installed (apt-get install snmpd)")
    backend = Backend(tmp_path / "data").start()
    vpdu = Vpdu(backend, tmp_path / "vivian", snmp=request.param == "snmp").start()
    try:
        with backend.http() as http:
            if request.param == "snmp":
                r = http.post("/api/v1/pdu/", json={
                    "name": "vpdu1", "driver": "apc_masterswitch",
                    "config": {"hostname": f"127.0.0.1:{vpdu.snmp_port}", "version": "2c", "community": "private"}})
                assert r.status_code == 201, r.text
                assert len(poll_until(lambda: http.get("/api/v1/pdu/vpdu1").json()["ports"])) == 16
            else:
                assert len(vpdu.add_to(http)["ports"]) == 16
        yield backend, vpdu.port, 1 if request.param == "snmp" else 0
    finally:
        vpdu.stop()
        assert backend.stop() == 0


def client(vport, *args):
    return subprocess.run([sys.executable, "vivian/client.py", "--port", str(vport), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=30)


def test_seed_walkthrough_on_the_api(farm_processes):
    backend, vport, offset = farm_processes
    port3 = str(3 + offset)
    with backend.http() as http:
        # 1. The services are healthy.
        assert http.get("/api/v1/health").json()["status"] == "ok"
        # 2. vPDU status: all ports OFF (both from the vPDU itself and as the gateway sees them).
        status = client(vport, "--status")
        assert status.returncode == 0 and status.stdout.count(": OFF") == 16
        pdus = poll_until(lambda: (p := http.get("/api/v1/pdus").json()["pdus"])
                    and all(o["state"] == "OFF" for o in p["vpdu1"]["ports"].values()) and p)
        # 3. One virtual PDU is registered, with 16 outlets.
        assert list(pdus) == ["vpdu1"] and len(pdus["vpdu1"]["ports"]) == 16
        # 4. No DUTs yet.
        assert http.get("/api/v1/machines").json()["machines"] == {}

        # 5. Power on a virtual test device.
        on = client(vport, "--outlet", "3", "--on")
        assert on.returncode == 0, on.stderr

        # 6. It boots and registers within 10 s.
        machines = poll_until(lambda: http.get("/api/v1/machines").json()["machines"], timeout=10)
        m = machines[MAC]
        assert m["ip_address"] == "10.42.0.13"
        assert set(m["tags"]) == {"virtio:pciid:0x1af4:0x1050", "virtio:family:VIRTIO"}
        assert m["local_tty_device"] == "ttyS1"  # 10. autoconfigured
        # 7. Not ready for service yet.
        assert m["ready_for_service"] is False and m["state"] == "WAIT_FOR_CONFIG"

        # 9 and 11. Set PDU vpdu1, port 3 and ready for service.
        r = http.patch(f"/api/v1/machine/{MAC}/", json={"pdu": "vpdu1", "pdu_port_id": int(port3),
                                                          "ready_for_service": True})
        assert r.status_code == 200, r.text
        m = r.json()
        assert m["pdu"] == {"name": "vpdu1", "port_id": port3} and m["ready_for_service"] is True
        assert m["state"] == "IDLE"

        # The machine's console log holds its boot log.
        log = poll_until(lambda: (t := http.get(f"/api/v1/console/{MAC}/log").text)
                   and "MaRS: Registration complete" in t and t)
        assert "Linux version" in log and f"SALAD.machine_id={MAC}" in log
        assert http.get("/api/v1/consoles").json()["consoles"][MAC]["connected"] is True

        # The gateway sees the outlet ON (by polling: the operator used the vPDU client, not the API).
        poll_until(lambda: http.get("/api/v1/pdu/vpdu1").json()["ports"][port3]["state"] == "ON", timeout=15)

        # Power it off again: the DUT stops, its console disconnects.
        off = client(vport, "--outlet", "3", "--off")
        assert off.returncode == 0
        poll_until(lambda: not http.get("/api/v1/consoles").json()["consoles"][MAC]["connected"])
        poll_until(lambda: http.get("/api/v1/pdu/vpdu1").json()["ports"][port3]["state"] == "OFF", timeout=15)

        # And through the API, over the PDU's own protocol: on, then off again.
        assert http.post(f"/api/v1/pdu/vpdu1/port/{port3}/state", json={"state": "on"}).json()["state"] == "ON"
        assert "Outlet   3: ON" in client(vport, "--status").stdout
        assert http.post(f"/api/v1/pdu/vpdu1/port/{port3}/state", json={"state": "off"}).json()["state"] == "OFF"
        assert "Outlet   3: OFF" in client(vport, "--status").stdout


def test_seed_walkthrough_to_a_gitlab_runner(tmp_path):
    """Steps 5 to 12 with Sgt. Hartman on: the operator only gives the DUT its outlet; it trains
    (registration + 2 boot loops through the vPDU), becomes ready for service by itself, and a
    runner for it appears on the (fake) GitLab, with its token in gitlab-runner's config.toml."""
    import tomllib

    from tests.gitlab.fake_gitlab import ADMIN_TOKEN, FakeGitlab

    gitlab = FakeGitlab()
    gitlab.start()
    data = tmp_path / "data"
    # DESIGN.md's names of the training counts (the same settings as training_loops / training_qualify)
    backend = Backend(data, env={"VALVE_CONSOLE_TRAINING": "true", "VALVE_CONSOLE_TRAINING_BOOT_COUNT": "2",
                                 "VALVE_CONSOLE_TRAINING_QUALIFYING_COUNT": "2"}).start()
    vpdu = Vpdu(backend, tmp_path / "vivian").start()
    vport = vpdu.port
    try:
        with backend.http() as http:
            vpdu.add_to(http)
            r = http.post("/api/v1/gitlab", json={"name": "fdo", "url": gitlab.url, "token": ADMIN_TOKEN,
                                                  "farm_name": "valve", "farm_tags": ["farm:valve"]})
            assert r.status_code == 201, r.text
            # 5-6. Outlet 3 on from the vPDU client; the DUT boots and registers.
            assert client(vport, "--outlet", "3", "--on").returncode == 0
            poll_until(lambda: MAC in http.get("/api/v1/machines").json()["machines"], timeout=15)
            assert gitlab.runners == {}  # 7. not ready for service: no runner
            # 9. The operator sets its PDU and port, and nothing else.
            r = http.patch(f"/api/v1/machine/{MAC}/", json={"pdu": "vpdu1", "pdu_port_id": 3})
            assert r.status_code == 200, r.text
            # Sgt. Hartman: TRAINING, with progress, then ready for service on its own (step 11).
            poll_until(lambda: http.get(f"/api/v1/machine/{MAC}/").json()["state"] == "TRAINING", timeout=15)
            m = poll_until(lambda: (m := http.get(f"/api/v1/machine/{MAC}/").json())["ready_for_service"] and m,
                     timeout=90, every=0.5)
            training = m["training"]
            assert (training["state"], training["loops"], training["passes"]) == ("qualified", 2, 2)
            assert [r["status"] for r in training["results"]][-2:] == ["PASS", "PASS"]
            # 12. A runner exists on GitLab for this DUT, with its tags and the farm's.
            runner = poll_until(lambda: list(gitlab.runners.values()), timeout=20)[0]
            assert runner["description"].startswith("valve-") and "farm:valve" in runner["tag_list"]
            assert "virtio:family:VIRTIO" in runner["tag_list"]
            config = poll_until(lambda: (p := data / "gitlab-runner" / "config.toml").exists()
                          and tomllib.loads(p.read_text()), timeout=10)
            [entry] = config["runners"]
            assert entry["token"] == runner["token"] and entry["name"] == runner["description"]
            # Retiring the machine removes its runner.
            assert http.post(f"/api/v1/machine/{MAC}/retire").status_code == 200
            poll_until(lambda: gitlab.runners == {}, timeout=20)
    finally:
        vpdu.stop()
        gitlab.stop()
        assert backend.stop() == 0
