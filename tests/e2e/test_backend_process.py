"""The headless backend as a real process: clean stop, start failures, durability."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time

import httpx

from tests.e2e.helpers import ROOT, VALVE, Backend, free_port


def test_sigterm_stops_cleanly_and_releases_ports(tmp_path):
    backend = Backend(tmp_path / "data").start()
    with backend.http() as http:
        assert http.get("/api/v1/health").json()["status"] == "ok"
    assert backend.stop(signal.SIGTERM) == 0
    assert "farm stopped" in backend.log_text()
    for port in (backend.port, backend.netconsole_port):
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # free again
    assert not (tmp_path / "data" / "api.sock").exists()
    # The database was closed cleanly: WAL checkpointed and the file is consistent.
    db = sqlite3.connect(tmp_path / "data" / "valve-console.db")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_sigint_also_stops_cleanly(tmp_path):
    backend = Backend(tmp_path / "data").start()
    assert backend.stop(signal.SIGINT) == 0


def start_failure(data_dir, listen: str) -> str:
    """Start the backend where it cannot start: it must exit 2 with exactly one line on stderr."""
    proc = subprocess.run(
        [*VALVE, "--backend-only", "--data-dir", str(data_dir), "--listen", listen,
         "--netconsole", f"127.0.0.1:{free_port()}"],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("valve-console:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_port_in_use_is_one_line_and_exit_2(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = start_failure(tmp_path / "d", f"127.0.0.1:{port}")
    assert "address already in use" in line.lower()
    assert str(port) in line


def test_unwritable_data_dir_is_one_line_and_exit_2(tmp_path):
    target = tmp_path / "file-not-dir"
    target.write_text("x")
    assert "not writable" in start_failure(target / "sub", f"127.0.0.1:{free_port()}")


def test_the_console_without_a_terminal_is_one_line_and_exit_2(tmp_path):
    """``ssh host`` without -t: the console would draw into a pipe and wait for keys for ever."""
    env = {k: v for k, v in os.environ.items() if k != "TEXTUAL_DRIVER"}
    for args in (["--attach", f"http://127.0.0.1:{free_port()}"], ["demo", "--data-dir", str(tmp_path / "d")],
                 ["--data-dir", str(tmp_path / "d")]):
        result = subprocess.run([*VALVE, *args], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                timeout=30, env=env, cwd=ROOT)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.strip().splitlines() == [
            "valve-console: the console needs a terminal (over ssh: ssh -t; without a console: --backend-only)"]
    assert not (tmp_path / "d").exists()  # refused before anything started
    # the headless modes need no terminal
    # stderr to a file, not a pipe nobody reads (a full pipe would block the demo's logging, and its exit)
    err_path = tmp_path / "demo.err"
    with open(err_path, "w") as err:
        demo = subprocess.Popen([*VALVE, "demo", "--headless", "--data-dir", str(tmp_path / "h"), "--vpdu-port", "0"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, text=True,
                                env=env, cwd=ROOT)
    try:
        assert "API http://" in demo.stdout.readline(), err_path.read_text()[-3000:]
    finally:
        demo.send_signal(signal.SIGINT)
        try:
            demo.wait(60)
        except subprocess.TimeoutExpired:
            demo.kill()
            raise AssertionError("the headless demo did not stop on SIGINT: " + err_path.read_text()[-3000:]) from None


def test_backend_never_imports_textual(tmp_path):
    """Start the real --backend-only path in a subprocess and look at sys.modules once it is up."""
    script = f"""
import asyncio, sys
import valve_console.cli as cli
async def stop_when_up(stop):
    from valve_console.backend import farm
    assert 'textual' not in sys.modules
    return
cli._run_until_signal = stop_when_up
code = cli.main(["--backend-only", "--data-dir", {str(tmp_path / "d")!r}, "--listen", "127.0.0.1:0",
                 "--netconsole", "127.0.0.1:0"])
import valve_console.backend.api, valve_console.backend.power, valve_console.backend.consoles
import valve_console.drivers.pdu.vpdu, valve_console.drivers.pdu.dummy, valve_console.client
bad = sorted(m for m in sys.modules if m == 'textual' or m.startswith('textual.')
             or m.startswith(('valve_console.app', 'valve_console.screens', 'valve_console.widgets')))
print("CODE", code, "BAD", bad)
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "CODE 0 BAD []" in proc.stdout, proc.stdout + proc.stderr


def test_restart_keeps_machines_pdus_and_outlet_history(tmp_path):
    data = tmp_path / "data"
    backend = Backend(data).start()
    with backend.http() as http:
        assert (
            http.post("/api/v1/pdu/", json={"name": "d1", "driver": "dummy", "config": {"ports": 4}}).status_code == 201
        )
        http.post(
            "/api/v1/machine/", json={"base_name": "b", "mac_address": "02:00:00:00:00:01", "ip_address": "10.0.0.1"}
        )
        http.patch(
            "/api/v1/machine/02:00:00:00:00:01/",
            json={"pdu": "d1", "pdu_port_id": "3", "pdu_off_delay": 3.0, "comment": "keep me"},
        )
        assert http.post("/api/v1/pdu/d1/port/3/state", json={"state": "off"}).json()["state"] == "OFF"
    off_at = time.time()
    assert backend.stop() == 0

    backend = Backend(data).start()
    try:
        with backend.http() as http:
            m = http.get("/api/v1/machine/02:00:00:00:00:01/").json()
            assert m["pdu"] == {"name": "d1", "port_id": "3"} and m["comment"] == "keep me"
            assert "d1" in http.get("/api/v1/pdus").json()["pdus"]
            # min-off time survives the restart: switching on waits for the rest of the 3 s.
            t0 = time.monotonic()
            assert http.post("/api/v1/pdu/d1/port/3/state", json={"state": "on"}).json()["state"] == "ON"
            assert time.monotonic() - t0 >= 3.0 - (time.time() - off_at) - 0.3
    finally:
        backend.stop()
    db = sqlite3.connect(data / "valve-console.db")
    history = db.execute("SELECT state FROM outletlog WHERE pdu='d1' AND port_id='3' ORDER BY at").fetchall()
    assert ("OFF",) in history and history[-1] == ("ON",)


def test_kill_9_during_a_burst_of_writes_loses_nothing_acknowledged(tmp_path):
    data = tmp_path / "data"
    backend = Backend(data).start()
    acknowledged: list[str] = []
    stop = threading.Event()

    def writer() -> None:
        with httpx.Client(base_url=backend.url, timeout=5) as http:
            i = 0
            while not stop.is_set():
                mac = f"02:00:00:00:{i // 256:02x}:{i % 256:02x}"
                try:
                    r = http.post(
                        "/api/v1/machine/",
                        json={"base_name": "burst", "mac_address": mac, "ip_address": f"10.1.{i // 256}.{i % 256}"},
                    )
                except httpx.HTTPError:
                    return
                if r.status_code == 200:
                    acknowledged.append(mac)
                i += 1

    threads = [threading.Thread(target=writer) for _ in range(1)]
    for t in threads:
        t.start()
    while len(acknowledged) < 150:
        time.sleep(0.01)
    backend.proc.send_signal(signal.SIGKILL)
    backend.proc.wait()
    stop.set()
    for t in threads:
        t.join()
    assert len(acknowledged) >= 150

    backend = Backend(data).start()
    try:
        with backend.http() as http:
            stored = set(http.get("/api/v1/machines").json()["machines"])
    finally:
        backend.stop()
    missing = [mac for mac in acknowledged if mac not in stored]
    assert not missing, f"{len(missing)} acknowledged registrations lost"
    db = sqlite3.connect(data / "valve-console.db")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
