"""SNMP power control: PowerService + apc_masterswitch vs the net-snmp CLI, same agents, same run.

Agents: three Debian ``snmpd`` processes on loopback, each serving 16 APC MasterSwitch outlets
through the pass_persist helper of the tests (``tests/drivers/pp_pdu.py``), SNMPv1, community private.

(a) One outlet set + read-back: ``PowerService.set_outlet`` (driver SET, then GET until the state
    reads back) vs ``snmpset`` + ``snmpget`` processes (MIBS= so the CLI loads no MIB files).
(b) Power-cycle (off, then on, each read back) of 48 outlets on 3 PDUs: PowerService with all 48
    cycles submitted at once vs the same steps done one after another with the CLI, and vs
    PowerService cycling one outlet. Off-delay 0.

(c) For scale, what per-PDU batching would give: the same 48-outlet cycle done by the drivers'
    ``set_many``/``get_many`` (one SET and one GET of 16 var-binds per PDU and step, the 3 PDUs
    at once), vs one outlet cycled by the driver alone. PowerService does not batch (yet).

Run: ``.venv/bin/python bench/bench_snmp.py`` (needs snmpd and snmp: ``apt-get install snmpd snmp``).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT  # noqa: E402
from valve_console.backend.events import EventBus  # noqa: E402
from valve_console.backend.power import PowerService  # noqa: E402
from valve_console.backend.store import Store  # noqa: E402
from valve_console.drivers.pdu import PortState  # noqa: E402
from valve_console.drivers.pdu.snmp import close_engines  # noqa: E402

HELPER = ROOT / "tests" / "drivers" / "pp_pdu.py"
CTL = "1.3.6.1.4.1.318.1.1.4.4.2.1.3"  # sPDUOutletCtl
OUTLETS = 16
PDUS = 3
ROUNDS_A = 200
ROUNDS_A_CLI = 60
ROUNDS_B = 5
CLI_ENV = {**os.environ, "MIBS": ""}


def free_udp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Agent:
    def __init__(self, workdir: Path) -> None:
        workdir.mkdir()
        self.port = free_udp_port()
        state = workdir / "apc.json"
        state.write_text(json.dumps({"names": [f"o{i}" for i in range(1, OUTLETS + 1)], "on": [False] * OUTLETS}))
        conf = workdir / "snmpd.conf"
        conf.write_text(
            "rwcommunity private 127.0.0.1\ndontLogTCPWrappersConnects yes\n"
            f"pass_persist .1.3.6.1.4.1.318 {sys.executable} {HELPER} apc {state}\n"
        )
        self.log = workdir / "snmpd.log"
        self.process = subprocess.Popen(
            [shutil.which("snmpd") or "/usr/sbin/snmpd", "-f", "-Lf", str(self.log), "-C", "-c", str(conf),
             "-p", str(workdir / "pid"), f"udp:127.0.0.1:{self.port}"],
            env={**CLI_ENV, "SNMP_PERSISTENT_DIR": str(workdir / "persist")},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while "NET-SNMP version" not in (self.log.read_text() if self.log.exists() else ""):
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"snmpd did not start: {self.log.read_text() if self.log.exists() else ''}")
            time.sleep(0.05)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()


def cli(tool: str, port: int, *args: str) -> str:
    out = subprocess.run([tool, "-v1", "-c", "private", "-Oqv", f"127.0.0.1:{port}", *args],
                         env=CLI_ENV, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def cli_switch(port: int, outlet: int, on: bool) -> None:
    """One set + read-back with the CLI, as PowerService does it."""
    value = "1" if on else "2"
    cli("snmpset", port, f"{CTL}.{outlet}", "i", value)
    got = cli("snmpget", port, f"{CTL}.{outlet}")
    assert got == value, got


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


async def main() -> None:
    if shutil.which("snmpset") is None or (shutil.which("snmpd") is None and not Path("/usr/sbin/snmpd").exists()):
        sys.exit("needs snmpd and the snmp CLI: apt-get install snmpd snmp")
    tmp = Path(tempfile.mkdtemp(prefix="bench-snmp-"))
    agents = [Agent(tmp / f"agent{i}") for i in range(PDUS)]
    store = Store.for_path(tmp / "db.sqlite")
    await store.open()
    power = PowerService(store, EventBus(), default_off_delay=0, poll_interval=3600, timeout=2.0)
    await power.start()
    try:
        for i, agent in enumerate(agents):
            await power.add_pdu(f"apc{i}", "apc_masterswitch", {"hostname": f"127.0.0.1:{agent.port}"})
            assert len(power.outlet_ids(f"apc{i}") or []) == OUTLETS

        # (a) one outlet: set + read-back --------------------------------------------------
        for _ in range(20):  # warm-up
            await power.set_outlet("apc0", "1", "on")
            await power.set_outlet("apc0", "1", "off")
        ours_a = []
        for k in range(ROUNDS_A):
            t0 = time.perf_counter()
            got = await power.set_outlet("apc0", "1", "on" if k % 2 == 0 else "off")
            ours_a.append(time.perf_counter() - t0)
            assert got == (PortState.ON if k % 2 == 0 else PortState.OFF)
        cli_a = []
        for k in range(ROUNDS_A_CLI):
            t0 = time.perf_counter()
            await asyncio.to_thread(cli_switch, agents[0].port, 1, k % 2 == 0)
            cli_a.append(time.perf_counter() - t0)
        await power.set_outlet("apc0", "1", "off")

        # (b) power-cycle 48 outlets on 3 PDUs ---------------------------------------------
        one, many, seq = [], [], []
        for _ in range(ROUNDS_B):
            t0 = time.perf_counter()
            await power.set_outlet("apc1", "5", "reboot")  # off, read back, on, read back
            one.append(time.perf_counter() - t0)
        for _ in range(ROUNDS_B):
            t0 = time.perf_counter()
            results = await asyncio.gather(*(power.set_outlet(f"apc{p}", str(o), "reboot")
                                             for p in range(PDUS) for o in range(1, OUTLETS + 1)))
            many.append(time.perf_counter() - t0)
            assert results == [PortState.ON] * (PDUS * OUTLETS)
        # (c) batched at driver level, bypassing PowerService's one-command-per-PDU queue
        from valve_console.drivers.pdu import create_driver

        drivers = [create_driver("apc_masterswitch", {"hostname": f"127.0.0.1:{a.port}"}) for a in agents]
        ids = [str(o) for o in range(1, OUTLETS + 1)]

        async def batch_cycle(drv) -> None:
            for state in (PortState.OFF, PortState.ON):
                await drv.set_many(dict.fromkeys(ids, state))
                assert set((await drv.get_many(ids)).values()) == {state}

        async def single_cycle(drv) -> None:
            for state in (PortState.OFF, PortState.ON):
                await drv.set("5", state)
                assert await drv.get("5") == state

        drv_one, drv_many = [], []
        for _ in range(ROUNDS_B):
            t0 = time.perf_counter()
            await single_cycle(drivers[1])
            drv_one.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            await asyncio.gather(*(batch_cycle(d) for d in drivers))
            drv_many.append(time.perf_counter() - t0)
        for drv in drivers:
            await drv.close()

        for _ in range(2):
            t0 = time.perf_counter()

            def cycle_all() -> None:
                for agent in agents:
                    for o in range(1, OUTLETS + 1):
                        cli_switch(agent.port, o, False)
                        cli_switch(agent.port, o, True)

            await asyncio.to_thread(cycle_all)
            seq.append(time.perf_counter() - t0)
    finally:
        await power.stop()
        await close_engines()
        await store.close()
        for agent in agents:
            agent.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    a_ours, a_cli = statistics.median(ours_a), statistics.median(cli_a)
    b_one, b_many, b_seq = statistics.median(one), statistics.median(many), statistics.median(seq)
    print("(a) one outlet set + read-back, median")
    p95 = sorted(ours_a)[int(0.95 * len(ours_a))]
    print(f"    PowerService + apc_masterswitch (pysnmp)   {ms(a_ours)}   (p95 {ms(p95)})")
    print(f"    snmpset + snmpget CLI                      {ms(a_cli)}")
    print(f"    ratio CLI / ours                           {a_cli / a_ours:.1f}x")
    print(f"(b) power-cycle (off + on, each read back), off-delay 0, median of {ROUNDS_B}")
    print(f"    one outlet through PowerService            {ms(b_one)}")
    print(f"    48 outlets on 3 PDUs, PowerService, all at once   {ms(b_many)}")
    print(f"    48 outlets with the CLI, one after another {ms(b_seq)}")
    print(f"    ratio 48 / one                             {b_many / b_one:.1f}x")
    print(f"    ratio CLI sequential / ours                {b_seq / b_many:.1f}x")
    c_one, c_many = statistics.median(drv_one), statistics.median(drv_many)
    print("(c) the same cycle with per-PDU batching (driver set_many/get_many, 16 var-binds a request)")
    print(f"    one outlet, driver alone                   {ms(c_one)}")
    print(f"    48 outlets on 3 PDUs, batched, PDUs at once {ms(c_many)}")
    print(f"    ratio 48 batched / one (driver)            {c_many / c_one:.1f}x")
    print(f"    ratio 48 batched / one (PowerService)      {c_many / b_one:.1f}x")


if __name__ == "__main__":
    asyncio.run(main())
