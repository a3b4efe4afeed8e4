"""SNMP power control: PowerService + its SNMP drivers vs the net-snmp CLI, same agents, same run.

Three kinds of agent, three of each (one per PDU, 16 outlets each), on loopback, SNMPv1 by default,
community private, measured one kind after the other in the same run:

* ``memory``: Debian net-snmp ``snmpd`` serving an APC MasterSwitch outlet table from its own
  memory (``override -rw`` lines in snmpd.conf: sPDUOutletCtl reads back what was written), driver
  ``apc_masterswitch``. snmpd's C code answers a var-bind in microseconds, as PDU firmware that
  keeps outlet states in RAM does, so this agent measures the client, not a helper process.
* ``snmpd``: Debian net-snmp ``snmpd`` with the tests' pass_persist helper
  (``tests/drivers/pp_pdu.py``) playing an APC MasterSwitch (driver ``apc_masterswitch``). snmpd
  hands the helper each var-bind in turn (a SET var-bind is four pipe round trips: PING, GET,
  PING, SET), so its cost grows with the var-binds of a request. The helper's state file lives on
  /dev/shm and is written when the helper is idle, not per var-bind.
* ``snmpsim``: snmpsim (pysnmp) with the tests' ``outletsim`` variation playing a Raritan PX2
  (driver ``raritan_px2``): one process decodes, answers and encodes a request's var-binds together,
  as PDU firmware does (pysnmp's own cost per var-bind remains).

(a) One outlet set + read-back: ``PowerService.set_outlet`` (driver SET, then GET until the state
    reads back) vs ``snmpset`` + ``snmpget`` processes (MIBS= so the CLI loads no MIB files).
(b) Power-cycle (off, then on, each read back) of 48 outlets on 3 PDUs: PowerService with all 48
    cycles submitted at once (it batches each PDU's queued commands into one SET and one GET per
    step) vs the same steps done one after another with the CLI, and vs PowerService cycling one
    outlet. Off-delay 0. snmpd's own counters give the SNMP requests it received (three untimed cycles).
(c) Where the time of (b) goes: the same 48-outlet cycle with the drivers' ``set_many``/``get_many``
    alone (no PowerService), and the CPU time of this process during (b) (the SNMP client and the
    store thread run here; the agents run in their own processes).
(d) What the agent costs: a GET and a SET of 1 and of 16 outlets on one agent, drivers alone. The
    agent's time for one PDU's share of (b) (two 16-outlet SETs and GETs) over one (b) outlet is
    the floor this agent puts under the (b) ratio, however fast the client.

Run: ``.venv/bin/python bench/bench_snmp.py [--version 1|2c] [--engine ber|pysnmp]
[--agents memory,snmpd,snmpsim] [--runs N] [--db-dir DIR] [--profile]`` (needs snmpd and snmp:
``apt-get install snmpd snmp``; snmpsim and pysmi from the dev dependencies). The agents' files live on /dev/shm;
PowerService's SQLite store is on disk in /var/tmp, as on a gateway (``--db-dir /dev/shm`` makes a
commit cost no fsync: the harsh case for the 48-outlet ratio, whose one-outlet reference waits for
its commit while the 48-outlet cycle overlaps most of its commits with the PDUs' work).
``--engine`` picks the drivers' SNMP codec for GET/SET: the built-in BER codec (default) or
pysnmp. ``--runs`` repeats the whole measurement, the kinds alternating, and prints the median and
range of the ratios. ``--profile`` prints cProfile's top functions for ten (b) cycles of the first
run (by own time; PROFILE_SORT=cumulative to change).
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
from bench.common import ROOT, SNMP_CLI_ENV, free_udp_port, start_snmpd, stop_process  # noqa: E402
from valve_console.backend.events import EventBus  # noqa: E402
from valve_console.backend.power import PowerService  # noqa: E402
from valve_console.backend.store import Store  # noqa: E402
from valve_console.drivers.pdu import PortState  # noqa: E402
from valve_console.drivers.pdu.snmp import close_engines  # noqa: E402

HELPER = ROOT / "tests" / "drivers" / "pp_pdu.py"
VARIATIONS = ROOT / "tests" / "drivers" / "snmpsim_variation"
SPDU = "1.3.6.1.4.1.318.1.1.4"  # APC PowerNet sPDU
CTL = SPDU + ".4.2.1.3"  # sPDUOutletCtl
OUTLETS = 16
PDUS = 3
ROUNDS_A = 200
ROUNDS_A_CLI = 60
ROUNDS_B = 31
CLI_ENV = SNMP_CLI_ENV


SHM = Path("/dev/shm")
SNMP_IN_GETS, SNMP_IN_SETS = "1.3.6.1.2.1.11.15.0", "1.3.6.1.2.1.11.17.0"  # snmpd's own request counters


class Agent:
    """snmpd + the tests' pass_persist helper: one var-bind at a time through the helper."""

    kind = "snmpd"
    driver = "apc_masterswitch"
    ctl, status, values = CTL, CTL, {True: ("1", "1"), False: ("2", "2")}  # set OID, read OID, (set, read)

    def __init__(self, workdir: Path) -> None:
        workdir.mkdir()
        self.port = free_udp_port()
        self.counter_reads = 0
        self.process, self.log = start_snmpd(workdir, self.port, self.outlets(workdir))

    def outlets(self, workdir: Path) -> list[str]:
        """snmpd.conf lines that serve the outlet table."""
        state = workdir / "apc.json"
        state.write_text(json.dumps({"names": [f"o{i}" for i in range(1, OUTLETS + 1)], "on": [False] * OUTLETS}))
        return [f"pass_persist .1.3.6.1.4.1.318 {sys.executable} {HELPER} apc {state}"]

    def requests(self) -> tuple[int, int] | None:
        """(GET, SET) requests this agent has processed, from its own SNMP MIB counters."""
        gets, sets = cli("snmpget", self.port, SNMP_IN_GETS, SNMP_IN_SETS, version="2c").split()
        self.counter_reads += 1
        return int(gets) - self.counter_reads, int(sets)  # minus the GETs that read the counters

    def stop(self) -> None:
        stop_process(self.process)


class MemoryAgent(Agent):
    """snmpd answering the MasterSwitch outlet table from its own memory (``override -rw``): each
    outlet's sPDUOutletCtl is a writable integer that reads back what was written, as a PDU that
    keeps its outlet states in RAM does; no helper process, so a var-bind costs snmpd's own C code."""

    kind = "memory"

    def outlets(self, workdir: Path) -> list[str]:
        lines = [f"override {SPDU}.4.1.0 integer {OUTLETS}"]  # sPDUOutletControlTableSize
        for n in range(1, OUTLETS + 1):
            lines += [f"override -rw {CTL}.{n} integer 2",  # off
                      f'override {SPDU}.4.2.1.4.{n} octet_str "o{n}"']  # sPDUOutletCtlName
        return lines


RARITAN = "1.3.6.1.4.1.13742.6"


class SimAgent(Agent):
    """snmpsim (pysnmp) with the tests' outletsim variation, playing a Raritan PX2: a request's
    var-binds are decoded, answered and encoded by one process in one go, as PDU firmware does."""

    kind = "snmpsim"
    driver = "raritan_px2"
    ctl, status = RARITAN + ".4.1.2.1.2.1", RARITAN + ".4.1.2.1.3.1"  # switchingOperation, switchingState
    values = {True: ("1", "7"), False: ("0", "8")}

    def __init__(self, workdir: Path) -> None:  # noqa: B027 - not the snmpd start-up
        command = shutil.which("snmpsim-command-responder") or str(
            Path(sys.executable).with_name("snmpsim-command-responder"))
        data = workdir / "data"
        data.mkdir(parents=True)
        (workdir / "cache").mkdir()
        self.port = free_udp_port()
        rec = [("1.3.6.1.2.1.1.5.0", "4", "bench"), (f"{RARITAN}.3.2.2.1.4.1", "2", str(OUTLETS))]
        for n in range(1, OUTLETS + 1):
            rec += [(f"{RARITAN}.3.5.3.1.3.1.{n}", "4", f"o{n}"),
                    (f"{self.ctl}.{n}", "2:outletsim", "raritan:ctl"),
                    (f"{self.status}.{n}", "2:outletsim", "raritan:state")]
        rec.sort(key=lambda r: tuple(int(p) for p in r[0].split(".")))
        (data / "private.snmprec").write_text("".join(f"{o}|{t}|{v}\n" for o, t, v in rec))
        self.log = workdir / "snmpsim.log"
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                [command, f"--data-dir={data}", f"--agent-udpv4-endpoint=127.0.0.1:{self.port}",
                 f"--cache-dir={workdir / 'cache'}", f"--variation-modules-dir={VARIATIONS}"],
                env={**os.environ, "SNMPSIM_ALLOW_ROOT": "true"},
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                cli("snmpget", self.port, "1.3.6.1.2.1.1.5.0", version="2c", opts=("-t", "0.5", "-r", "0"))
                return
            except subprocess.CalledProcessError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"snmpsim did not start: {self.log.read_text()}") from None

    def requests(self) -> None:
        return None  # snmpsim keeps no SNMP counters of its own


AGENTS = {"memory": MemoryAgent, "snmpd": Agent, "snmpsim": SimAgent}


VERSION = "1"
ENGINE = "ber"
DB_DIR = "/var/tmp" if Path("/var/tmp").is_dir() else None  # the store's directory: on disk, as on a gateway


def cli(tool: str, port: int, *args: str, version: str | None = None, opts: tuple[str, ...] = ()) -> str:
    out = subprocess.run([tool, f"-v{version or VERSION}", "-c", "private", "-Oqv", *opts, f"127.0.0.1:{port}", *args],
                         env=CLI_ENV, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def cli_switch(agent: Agent, outlet: int, on: bool) -> None:
    """One set + read-back with the CLI, as PowerService does it."""
    value, reads = agent.values[on]
    cli("snmpset", agent.port, f"{agent.ctl}.{outlet}", "i", value)
    got = cli("snmpget", agent.port, f"{agent.status}.{outlet}")
    assert got == reads, got


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


async def run(kind: type[Agent], profile: bool) -> dict:
    """One full measurement on three agents of one kind; returns the figures."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-snmp-", dir=SHM if SHM.is_dir() else None))
    agents: list[Agent] = []
    db_dir = Path(tempfile.mkdtemp(prefix="bench-snmp-db-", dir=DB_DIR))
    store = Store.for_path(db_dir / "db.sqlite")
    await store.open()
    power = PowerService(store, EventBus(), default_off_delay=0, poll_interval=3600, timeout=2.0)
    await power.start()
    config = {"version": VERSION, "engine": ENGINE}
    r: dict = {"kind": kind.kind, "driver": kind.driver}
    try:
        agents += [kind(tmp / f"agent{i}") for i in range(PDUS)]
        for i, agent in enumerate(agents):
            await power.add_pdu(f"pdu{i}", kind.driver, {"hostname": f"127.0.0.1:{agent.port}", **config})
            for _ in range(100):  # the first answer may take longer than add_pdu waits on a busy machine
                if power.outlet_ids(f"pdu{i}"):
                    break
                await asyncio.sleep(0.1)
            assert len(power.outlet_ids(f"pdu{i}") or []) == OUTLETS, power.pdu_json(f"pdu{i}")

        # (a) one outlet: set + read-back --------------------------------------------------
        for _ in range(20):  # warm-up
            await power.set_outlet("pdu0", "1", "on")
            await power.set_outlet("pdu0", "1", "off")
        ours_a = []
        for k in range(ROUNDS_A):
            t0 = time.perf_counter()
            got = await power.set_outlet("pdu0", "1", "on" if k % 2 == 0 else "off")
            ours_a.append(time.perf_counter() - t0)
            assert got == (PortState.ON if k % 2 == 0 else PortState.OFF)
        cli_a = []
        for k in range(ROUNDS_A_CLI):
            t0 = time.perf_counter()
            await asyncio.to_thread(cli_switch, agents[0], 1, k % 2 == 0)
            cli_a.append(time.perf_counter() - t0)
        await power.set_outlet("pdu0", "1", "off")
        r["a_ours"], r["a_cli"] = statistics.median(ours_a), statistics.median(cli_a)
        r["a_p95"] = sorted(ours_a)[int(0.95 * len(ours_a))]

        # (b) power-cycle 48 outlets on 3 PDUs ---------------------------------------------
        async def cycle_all() -> None:
            results = await asyncio.gather(*(power.set_outlet(f"pdu{p}", str(o), "reboot")
                                             for p in range(PDUS) for o in range(1, OUTLETS + 1)))
            assert results == [PortState.ON] * (PDUS * OUTLETS)

        one, many, many_cpu = [], [], []
        await cycle_all()  # warm-up
        for _ in range(ROUNDS_B):  # interleaved, so a busy moment of the machine hits both alike
            t0 = time.perf_counter()
            await power.set_outlet("pdu1", "5", "reboot")  # off, read back, on, read back
            one.append(time.perf_counter() - t0)
            t0, c0 = time.perf_counter(), time.process_time()
            await cycle_all()
            many.append(time.perf_counter() - t0)
            many_cpu.append(time.process_time() - c0)
        # The requests the agents saw, in untimed cycles (reading snmpd's counters runs the CLI).
        r["requests"] = None
        if agents[0].requests() is not None:
            before = [agent.requests() for agent in agents]
            for _ in range(3):
                await cycle_all()
            after = [agent.requests() for agent in agents]
            r["requests"] = tuple(sum(a[k] - b[k] for a, b in zip(after, before, strict=True)) / 3 for k in (0, 1))
        r["b_one"], r["b_many"] = statistics.median(one), statistics.median(many)
        r["b_cpu"] = statistics.median(many_cpu)
        if profile:
            import cProfile
            import pstats

            prof = cProfile.Profile()
            prof.enable()
            for _ in range(10):
                await cycle_all()
            prof.disable()
            stats = pstats.Stats(prof).sort_stats(os.environ.get("PROFILE_SORT", "tottime"))
            stats.print_stats(os.environ.get("PROFILE_FILTER", ""), 45)

        # (c) the drivers' batch calls alone, no PowerService ------------------------------
        from valve_console.drivers.pdu import create_driver

        drivers = [create_driver(kind.driver, {"hostname": f"127.0.0.1:{a.port}", **config}) for a in agents]
        ids = [str(o) for o in range(1, OUTLETS + 1)]

        async def batch_cycle(drv) -> None:
            for state in (PortState.OFF, PortState.ON):
                await drv.set_many(dict.fromkeys(ids, state))
                assert set((await drv.get_many(ids)).values()) == {state}

        drv_many, drv_cpu = [], []
        for _ in range(ROUNDS_B):
            t0, c0 = time.perf_counter(), time.process_time()
            await asyncio.gather(*(batch_cycle(d) for d in drivers))
            drv_many.append(time.perf_counter() - t0)
            drv_cpu.append(time.process_time() - c0)
        r["c_many"], r["c_cpu"] = statistics.median(drv_many), statistics.median(drv_cpu)
        # (d) the agent's own cost: 1 vs 16 var-binds -----------------------------------
        drv = drivers[0]
        agent_ms: dict[str, float] = {}
        for name, call in (("GET 1", lambda: drv.get_many(["1"])), ("GET 16", lambda: drv.get_many(ids)),
                           ("SET 1", lambda: drv.set_many({"1": PortState.OFF})),
                           ("SET 16", lambda: drv.set_many(dict.fromkeys(ids, PortState.OFF)))):
            times = []
            for _ in range(60):
                t0 = time.perf_counter()
                await call()
                times.append(time.perf_counter() - t0)
            agent_ms[name] = statistics.median(times)
        r["d"] = agent_ms
        for drv in drivers:
            await drv.close()

        seq = []
        for _ in range(2):
            t0 = time.perf_counter()

            def cli_cycle_all() -> None:
                for agent in agents:
                    for o in range(1, OUTLETS + 1):
                        cli_switch(agent, o, False)
                        cli_switch(agent, o, True)

            await asyncio.to_thread(cli_cycle_all)
            seq.append(time.perf_counter() - t0)
        r["b_seq"] = statistics.median(seq)
    finally:
        await power.stop()
        await close_engines()
        await store.close()
        for agent in agents:
            agent.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(db_dir, ignore_errors=True)
    return r


def report(r: dict) -> None:
    print(f"== agent {r['kind']} (driver {r['driver']}), SNMP v{VERSION}, engine {ENGINE}")
    print("(a) one outlet set + read-back, median")
    print(f"    PowerService + {r['driver']:17s}        {ms(r['a_ours'])}   (p95 {ms(r['a_p95'])})")
    print(f"    snmpset + snmpget CLI                      {ms(r['a_cli'])}")
    print(f"    ratio CLI / ours                           {r['a_cli'] / r['a_ours']:.1f}x")
    print(f"(b) power-cycle (off + on, each read back), off-delay 0, median of {ROUNDS_B}")
    print(f"    one outlet through PowerService            {ms(r['b_one'])}")
    print(f"    48 outlets on 3 PDUs, PowerService, all at once   {ms(r['b_many'])}")
    if r["requests"] is not None:
        print(f"      SNMP requests the agents saw per cycle   {r['requests'][0]:.0f} GET + {r['requests'][1]:.0f} SET")
    print(f"      CPU time of this process per cycle       {ms(r['b_cpu'])}")
    print(f"    48 outlets with the CLI, one after another {ms(r['b_seq'])}")
    print(f"    ratio 48 / one                             {r['b_many'] / r['b_one']:.1f}x")
    print(f"    ratio CLI sequential / ours                {r['b_seq'] / r['b_many']:.1f}x")
    print("(c) the 48-outlet cycle with the drivers' set_many/get_many alone (no PowerService)")
    print(f"    48 outlets on 3 PDUs, PDUs at once         {ms(r['c_many'])} = {r['c_many'] / r['b_one']:.1f}x one (b)")
    print(f"      CPU time of this process per cycle       {ms(r['c_cpu'])}")
    d = r["d"]
    print("(d) one agent, drivers alone, median of 60: " + ", ".join(f"{k} {ms(v)}" for k, v in d.items()))
    floor = 2 * (d["GET 16"] + d["SET 16"])
    print(f"    one PDU's share of (b): 2 x (SET 16 + GET 16) = {ms(floor)} = {floor / r['b_one']:.1f}x one (b)")


async def main(kinds: list[str], runs: int, profile: bool) -> None:
    if shutil.which("snmpset") is None or (shutil.which("snmpd") is None and not Path("/usr/sbin/snmpd").exists()):
        sys.exit("needs snmpd and the snmp CLI: apt-get install snmpd snmp")
    unknown = [k for k in kinds if k not in AGENTS]
    if unknown:
        sys.exit(f"unknown agent kind {', '.join(unknown)}: use {', '.join(AGENTS)}")
    if "snmpsim" in kinds and not (shutil.which("snmpsim-command-responder")
                                   or Path(sys.executable).with_name("snmpsim-command-responder").exists()):
        sys.exit("needs snmpsim for --agents snmpsim: pip install snmpsim pysmi (or leave it out: --agents snmpd)")
    results: dict[str, list[dict]] = {k: [] for k in kinds}
    for i in range(runs):  # the kinds alternate, so a busy spell of the shared machine hits both
        for k in kinds:
            r = await run(AGENTS[k], profile and i == 0)
            report(r)
            results[k].append(r)
    where = f"store in {DB_DIR or tempfile.gettempdir()}"
    print(f"== summary, SNMP v{VERSION}, engine {ENGINE}, {where}: median [min-max] of {runs} run(s)")
    for k, rs in results.items():
        a = [r["a_cli"] / r["a_ours"] for r in rs]
        b = [r["b_many"] / r["b_one"] for r in rs]
        c = [r["c_many"] / r["b_one"] for r in rs]
        print(f"  {k:8s} (a) CLI/ours {statistics.median(a):.1f}x [{min(a):.1f}-{max(a):.1f}] (target >= 2x)"
              f"   (b) 48/one {statistics.median(b):.1f}x [{min(b):.1f}-{max(b):.1f}] (target < 3x)"
              f"   (c) drivers alone {statistics.median(c):.1f}x [{min(c):.1f}-{max(c):.1f}]"
              f"   one cycle {ms(statistics.median(r['b_one'] for r in rs))},"
              f" 48 {ms(statistics.median(r['b_many'] for r in rs))},"
              f" CPU {ms(statistics.median(r['b_cpu'] for r in rs))}"
              f" vs drivers {ms(statistics.median(r['c_cpu'] for r in rs))}")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--version", choices=["1", "2c"], default="1", help="SNMP version of driver and CLI")
    parser.add_argument("--engine", choices=["ber", "pysnmp"], default="ber", help="the drivers' SNMP GET/SET codec")
    parser.add_argument("--agents", default=",".join(AGENTS), help=f"agent kinds, comma-separated: {', '.join(AGENTS)}")
    parser.add_argument("--runs", type=int, default=1, help="full runs of each agent kind (alternating)")
    parser.add_argument("--profile", action="store_true", help="print cProfile's top functions for (b)")
    parser.add_argument("--db-dir", default=DB_DIR, help="the directory of PowerService's SQLite store (default "
                        "/var/tmp: on disk, as on a gateway; /dev/shm makes a commit cost no fsync)")
    options = parser.parse_args()
    DB_DIR = options.db_dir
    VERSION = options.version
    ENGINE = options.engine
    asyncio.run(main([k for k in options.agents.split(",") if k], options.runs, options.profile))
