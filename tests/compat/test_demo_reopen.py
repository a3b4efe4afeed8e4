"""``valve-console demo --data-dir DIR`` run again on the same DIR reopens that farm (it crashed on vpdu1)."""

from __future__ import annotations

import os
import re
import signal
import subprocess

import httpx

from tests.conftest import poll_until
from tests.e2e.helpers import ROOT, VALVE


def demo(data_dir) -> tuple[subprocess.Popen, list[str]]:
    env = {k: v for k, v in os.environ.items() if k not in ("TEXTUAL_DRIVER",) and not k.startswith("VALVE_")}
    env["VALVE_CONSOLE_TRAINING"] = "false"
    proc = subprocess.Popen([*VALVE, "demo", "--headless", "--data-dir", str(data_dir), "--vpdu-port", "0"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=ROOT)
    lines = []
    while not any("power a DUT on" in line for line in lines):
        line = proc.stdout.readline()
        assert line, f"the demo ended: {proc.stderr.read()}"
        lines.append(line.rstrip("\n"))
    return proc, lines


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 0, proc.stderr.read()


def test_a_second_demo_on_the_same_data_dir_reopens_the_farm(tmp_path):
    data = tmp_path / "farm"
    proc, lines = demo(data)
    try:
        assert not any("reopened" in line for line in lines), lines  # a new farm says nothing of the kind
        api = re.search(r"API (http://\S+)", "\n".join(lines)).group(1)
        vport = re.search(r"--port (\d+) --outlet", "\n".join(lines)).group(1)
        subprocess.run(["python3", "vivian/client.py", "--port", vport, "--outlet", "3", "--on"], cwd=ROOT,
                       check=True, capture_output=True, timeout=30)
        poll_until(lambda: httpx.get(f"{api}/api/v1/machines").json()["machines"], "the DUT registered", 30)
    finally:
        stop(proc)
    proc, lines = demo(data)
    try:
        assert f"valve-console demo: reopened the farm in {data}: 1 PDU(s), 1 machine(s)" in lines[0], lines
        api = re.search(r"API (http://\S+)", "\n".join(lines)).group(1)
        assert list(httpx.get(f"{api}/api/v1/machines").json()["machines"]) == ["52:54:00:11:22:03"]
        pdu = poll_until(lambda: (p := httpx.get(f"{api}/api/v1/pdu/vpdu1").json())["state"] == "reachable" and p,
                         "vpdu1 reachable on its new port", 15)
        assert len(pdu["ports"]) == 16
    finally:
        stop(proc)
