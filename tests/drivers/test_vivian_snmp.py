"""Vivian's vPDU seen over SNMP as an APC MasterSwitch (``vpdu.py --snmp-port``), driven by PowerService."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import api_url, eventually, netconsole_address
from tests.drivers.conftest import free_tcp_port, free_udp_port
from valve_console.drivers.pdu import PortState
from vivian.client import CMD_STATUS, make_word, send_command

pytestmark = pytest.mark.usefixtures("snmp_engine")  # each test on the BER codec and on pysnmp

ROOT = Path(__file__).resolve().parents[2]
MAC2 = "52:54:00:11:22:02"  # vPDU outlet 2 = APC outlet 3


def dut_pids(vpdu: psutil.Process, mac: str) -> list[int]:
    return [p.pid for p in vpdu.children(recursive=True) if "dut.py" in " ".join(p.cmdline()) and mac in p.cmdline()]


@pytest.fixture
async def vpdu_snmp(farm, tmp_path):
    if shutil.which("snmpd") is None and not Path("/usr/sbin/snmpd").exists():
        pytest.skip("net-snmp snmpd is not installed (apt-get install snmpd)")
    tcp, udp = free_tcp_port(), free_udp_port()
    proc = subprocess.Popen(
        [sys.executable, "vivian/vpdu.py", "--port", str(tcp), "--snmp-port", str(udp), "--num-ports", "4",
         "--api", api_url(farm), "--console", netconsole_address(farm), "--log-dir", str(tmp_path / "duts"),
         "--dut-arg=--no-register", "--dut-arg=--boot-delay=0", "--log-level", "WARNING"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        lines = []
        deadline = time.monotonic() + 15
        while not any("answering SNMP" in line for line in lines):
            line = await asyncio.to_thread(proc.stdout.readline)
            if not line or time.monotonic() > deadline:
                raise AssertionError(f"vpdu.py did not start its SNMP face: {lines} {proc.stderr.read()}")
            lines.append(line)
        yield proc, tcp, udp
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                await asyncio.to_thread(proc.wait, 10)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait)


async def test_apc_masterswitch_driver_switches_a_vpdu_outlet(farm, vpdu_snmp):
    proc, tcp, udp = vpdu_snmp
    vpdu = psutil.Process(proc.pid)
    pdu = await farm.power.add_pdu("vapc", "apc_masterswitch", {"hostname": f"127.0.0.1:{udp}"})
    assert list(pdu["ports"]) == ["1", "2", "3", "4"]
    assert pdu["ports"]["3"]["label"] == "vPDU outlet 2"

    def vpdu_status(outlet: int) -> int:
        return send_command("127.0.0.1", tcp, make_word(CMD_STATUS, outlet))

    assert await farm.power.set_outlet("vapc", "3", "on") == PortState.ON
    assert await asyncio.to_thread(vpdu_status, 2) == 0x03  # the vPDU itself reports outlet 2 ON
    assert await asyncio.to_thread(vpdu_status, 3) == 0x04
    await eventually(lambda: len(dut_pids(vpdu, MAC2)) == 1, what="the DUT process behind outlet 2", timeout=5.0)
    dut = dut_pids(vpdu, MAC2)[0]

    assert await farm.power.set_outlet("vapc", "3", "off") == PortState.OFF
    assert await asyncio.to_thread(vpdu_status, 2) == 0x04
    await eventually(lambda: not psutil.pid_exists(dut) or psutil.Process(dut).status() == psutil.STATUS_ZOMBIE,
                     what="the DUT process to die", timeout=5.0)

    # Stopping the vPDU stops its snmpd and pass_persist helpers too (outlets, and rPDU2 metering).
    helpers = [p for p in vpdu.children(recursive=True) if "snmpd" in p.name() or "snmp_agent" in " ".join(p.cmdline())]
    assert len(helpers) in (2, 3)  # snmpd starts a helper at the first question on its subtree
    proc.terminate()
    await asyncio.to_thread(proc.wait, 10)
    gone, alive = await asyncio.to_thread(psutil.wait_procs, helpers, 5)
    assert not alive


def test_snmp_face_protocol_without_snmpd():
    """The pass_persist helper on its own: blank line after set, unknown state when the vPDU is down."""
    import io

    from vivian.snmp_agent import VpduFace, serve

    on = {0: False, 1: True}
    down = False

    def ask(host: str, port: int, word: int, timeout: float) -> int:
        if down:
            raise ConnectionRefusedError(111, "Connection refused")
        cmd, outlet = word & 3, word >> 2
        if cmd == 0:
            return 2
        if cmd == 3:
            return 0x03 if on[outlet] else 0x04
        on[outlet] = cmd == 1
        return 0x01

    ctl = ".1.3.6.1.4.1.318.1.1.4.4.2.1.3"
    face = VpduFace("127.0.0.1", 9, ask=ask)
    script = (f"PING\nget\n{ctl}.2\nset\n{ctl}.1\ninteger 1\n\nget\n{ctl}.1\ngetnext\n{ctl}.2\n"
              f"set\n{ctl}.1\ninteger 7\n\nset\n.1.3.6.1.4.1.318.1.1.4.4.2.1.4.1\nstring x\n\nget\n{ctl}.3\n")
    out = io.StringIO()
    serve(face, iter(script.splitlines(keepends=True)), out)
    assert out.getvalue().splitlines() == [
        "PONG",
        f"{ctl}.2", "integer", "1",  # vPDU outlet 1 is ON
        "DONE",
        f"{ctl}.1", "integer", "1",
        ".1.3.6.1.4.1.318.1.1.4.4.2.1.4.1", "string", "vPDU outlet 0",  # next column after the last ctl row
        "wrong-value",
        "not-writable",
        "NONE",  # outlet 3 does not exist on a 2-port vPDU
    ]
    down = True
    out = io.StringIO()
    serve(face, iter(f"get\n{ctl}.1\nset\n{ctl}.1\ninteger 2\n".splitlines(keepends=True)), out)
    assert out.getvalue().splitlines() == [f"{ctl}.1", "integer", "4", "commit-failed"]  # outletUnknown


def test_vpdu_reports_an_snmp_port_it_cannot_use(tmp_path):
    if shutil.which("snmpd") is None and not Path("/usr/sbin/snmpd").exists():
        pytest.skip("net-snmp snmpd is not installed (apt-get install snmpd)")
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "vivian/vpdu.py", "--port", str(free_tcp_port()), "--snmp-port", str(port),
             "--log-level", "WARNING"],
            cwd=ROOT, capture_output=True, text=True, timeout=20,
        )
    assert result.returncode == 2
    assert f"snmpd cannot serve udp:127.0.0.1:{port}" in result.stderr
