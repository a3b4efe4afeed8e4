"""Power metering (issue 18): the backend's samplers vs an snmpget loop, and their effect on switching.

Agents: one Debian net-snmp ``snmpd`` per PDU on loopback, serving from its own memory (``override``
lines, as bench_snmp.py's ``memory`` agent) an APC MasterSwitch outlet table (``sPDUOutletCtl``,
writable, reads back what was written) and APC's rPDU2 metering objects as a Metered-by-Outlet unit
serves them (``rPDU2OutletMeteredStatusTable`` rows: module 1, outlet number, current, power, energy;
``rPDU2DeviceStatusPower``/``Energy``), with the values of the metering tests' APC fixture
(tests/drivers/test_power_metering_snmp.py: 1.2 A, 3 512.8 kWh; 130 + n W for outlet n, the device total
their sum). Driver
``apc_masterswitch``, which meters from the rPDU2 tree. SNMP v1 by default, community private.
``--pdus`` x ``--outlets`` metered outlets (default 5 x 20 = 100).

(1) Sampler CPU. A child process runs PowerService + PowerMeter as the backend composes them (the
    settings' defaults: samples every ``power_sample_interval`` = 1 s, state polls every 10 s; each
    outlet has a machine, so the meter judges its flags too; the store on disk in /var/tmp) and
    reports its own CPU (all threads) over ``--window`` seconds after a warm-up; the same child with
    metering off (no PowerMeter: no samplers, the polls alone) gives the samplers' share. Peer: a
    child process that, every second, spawns one ``snmpget`` per PDU with all that PDU's metering
    OIDs (the same OIDs the driver GETs) in one command, as an operator's cron or Nagios check would;
    its CPU is its own plus its reaped children's (``os.times()`` in the loop: utime+stime+cutime+cstime),
    the snmpget processes' share reported apart. The agents' CPU over each window (``/proc`` of the
    snmpd processes) is reported separately: it is not either side's.
(2) Verified-switch latency: ``PowerService.set_outlet`` (SET, then GET until it reads back) of one
    outlet of pdu0, ``--switches`` times with a random pause of 0-40 ms between switches (so they fall
    at every phase of the samplers' 1 s period), with the samplers running on every PDU vs metering
    off; the two alternate ``--runs`` times in this process, each with a fresh PowerService and store.

Run: ``.venv/bin/python bench/bench_power.py [--pdus 5] [--outlets 20] [--window 30] [--switches 300]
[--runs 2] [--version 1|2c]`` (needs snmpd and snmp: ``apt-get install snmpd snmp``).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import (  # noqa: E402
    ROOT, SNMP_CLI_ENV, cpu_seconds, free_udp_port, percentile, start_snmpd, stop_process)

SPDU = "1.3.6.1.4.1.318.1.1.4"  # APC PowerNet sPDU (MasterSwitch)
CTL = SPDU + ".4.2.1.3"  # sPDUOutletCtl: on 1, off 2
RPDU2 = "1.3.6.1.4.1.318.1.1.26"
METERED = RPDU2 + ".9.4.3.1"  # rPDU2OutletMeteredStatusEntry
TOTALS = (RPDU2 + ".4.3.1.5.1", RPDU2 + ".4.3.1.9.1")  # rPDU2DeviceStatusPower, rPDU2DeviceStatusEnergy
# The metered columns the driver reads, in its order (apc.RPDU2_METERING): power, current, energy.
COLUMNS = (METERED + ".7", METERED + ".6", METERED + ".11")
SHM = Path("/dev/shm")
DB_DIR = "/var/tmp" if Path("/var/tmp").is_dir() else None  # on disk, as on a gateway
CLI_ENV = SNMP_CLI_ENV


def metering_oids(outlets: int) -> list[str]:
    """The OIDs one read_power GETs on this agent (metered row n is outlet n), the totals last."""
    return [f"{column}.{n}" for n in range(1, outlets + 1) for column in COLUMNS] + list(TOTALS)


class Agent:
    """snmpd answering the MasterSwitch outlet table and the rPDU2 metering objects from memory."""

    def __init__(self, workdir: Path, outlets: int) -> None:
        workdir.mkdir()
        self.port = free_udp_port()
        lines = [f"override {SPDU}.4.1.0 integer {outlets}",  # sPDUOutletControlTableSize
                 # the outlets' sum, in 0.01 kW; 0.1 kWh (the AP8853 recording)
                 f"override {TOTALS[0]} integer {round(sum(130 + n for n in range(1, outlets + 1)) / 10)}",
                 f"override {TOTALS[1]} integer 35128"]
        for n in range(1, outlets + 1):
            lines += [f"override -rw {CTL}.{n} integer 1",  # on
                      f'override {SPDU}.4.2.1.4.{n} octet_str "o{n}"',  # sPDUOutletCtlName
                      f"override {METERED}.2.{n} integer 1",  # module: the host unit
                      f"override {METERED}.4.{n} integer {n}",  # outlet number
                      f"override {METERED}.6.{n} integer 12",  # 0.1 A
                      f"override {METERED}.7.{n} integer {130 + n}",  # W
                      f"override {METERED}.11.{n} integer {35128 + n}"]  # 0.1 kWh
        self.process, self.log = start_snmpd(workdir, self.port, lines)

    def cpu(self) -> float:
        return cpu_seconds(self.process.pid)

    def stop(self) -> None:
        stop_process(self.process)


# ---------------------------------------------------------------------------- our side (a child process)
async def power_service(ports: list[int], outlets: int, version: str, metered: bool, db_dir: Path):
    """PowerService (+ PowerMeter when ``metered``) composed as farm.py does, with the settings' defaults;
    the PDUs added and their outlets known. Returns (service, meter, store)."""
    from valve_console.backend.events import EventBus
    from valve_console.backend.metering import PowerMeter
    from valve_console.backend.power import PowerService
    from valve_console.backend.store import Store
    from valve_console.config import Settings

    settings = Settings(data_dir=db_dir)
    store = Store.for_path(db_dir / "db.sqlite")
    await store.open()
    meter = None
    if metered:
        meter = PowerMeter(
            store, recent_seconds=settings.power_recent_seconds, event_interval=settings.power_event_interval,
            history_days=settings.power_history_days, no_draw_watts=settings.power_no_draw_watts,
            no_draw_seconds=settings.power_no_draw_seconds, silent_seconds=settings.power_silent_seconds,
            machine_at=lambda pdu, port: f"{pdu}-{port}",  # a machine on every outlet: its flags are judged
        )
        await meter.start()
    power = PowerService(store, EventBus(), default_off_delay=0, poll_interval=settings.outlet_poll_interval,
                         timeout=settings.pdu_timeout, meter=meter, sample_interval=settings.power_sample_interval)
    await power.start()
    for i, port in enumerate(ports):
        await power.add_pdu(f"pdu{i}", "apc_masterswitch", {"hostname": f"127.0.0.1:{port}", "version": version})
        for _ in range(100):  # the first answer may take longer than add_pdu waits on a busy machine
            if power.outlet_ids(f"pdu{i}"):
                break
            await asyncio.sleep(0.1)
        assert len(power.outlet_ids(f"pdu{i}") or []) == outlets, power.pdu_json(f"pdu{i}")
    return power, meter, store


async def close_service(power, meter, store) -> None:
    from valve_console.drivers.pdu.snmp import close_engines

    await power.stop()
    if meter is not None:
        await meter.stop()
    await close_engines()
    await store.close()


async def serve(ports: list[int], outlets: int, version: str, metered: bool, window: float, warmup: float) -> None:
    """The child of (1): run the service, print its CPU over ``window`` s as JSON."""
    db_dir = Path(tempfile.mkdtemp(prefix="bench-power-db-", dir=DB_DIR))
    power, meter, store = await power_service(ports, outlets, version, metered, db_dir)
    try:
        await asyncio.sleep(warmup)
        reads0 = sum(pm.reads for pm in meter.pdus.values()) if meter else 0
        c0, t0 = time.process_time(), time.monotonic()
        print(json.dumps({"event": "start"}), flush=True)
        await asyncio.sleep(window)
        cpu, wall = time.process_time() - c0, time.monotonic() - t0
        reads = sum(pm.reads for pm in meter.pdus.values()) - reads0 if meter else 0
        out = {"cpu": cpu, "wall": wall, "reads": reads}
        if meter is not None:
            out["metered_outlets"] = len(meter.outlets)
            out["watts"] = sum((m.latest.watts or 0) for m in meter.outlets.values() if m.latest)
            out["failures"] = sum(pm.failures for pm in meter.pdus.values())
            out["problems"] = sum(meter.problems.values())
        print(json.dumps(out), flush=True)
    finally:
        await close_service(power, meter, store)
        shutil.rmtree(db_dir, ignore_errors=True)


# ---------------------------------------------------------------------------- the peer (a child process)
def snmpget_loop(ports: list[int], outlets: int, version: str, window: float, warmup: float) -> None:
    """The child of (1)'s peer: every second, one snmpget per PDU with all its metering OIDs. Prints, as
    JSON, its own and its children's CPU over ``window`` s (rounds started in the window)."""
    oids = metering_oids(outlets)
    snmpget = shutil.which("snmpget") or "/usr/bin/snmpget"

    def round_() -> None:
        for port in ports:
            out = subprocess.run([snmpget, f"-v{version}", "-c", "private", "-Oqv", f"127.0.0.1:{port}", *oids],
                                 env=CLI_ENV, capture_output=True, text=True, check=True)
            assert len(out.stdout.split()) == len(oids), out.stdout

    start = time.monotonic()
    k = 0
    stats: dict[str, float] = {}
    while True:
        now = time.monotonic()
        if not stats and now - start >= warmup:
            usage = os.times()
            stats = {"own": usage.user + usage.system, "children": usage.children_user + usage.children_system,
                     "t0": now, "k0": k}
            print(json.dumps({"event": "start"}), flush=True)
        if stats and now - stats["t0"] >= window:
            break
        round_()
        k += 1
        time.sleep(max(0.0, start + k - time.monotonic()))  # 1 Hz, on schedule
    usage = os.times()
    print(json.dumps({"own": usage.user + usage.system - stats["own"],
                      "children": usage.children_user + usage.children_system - stats["children"],
                      "wall": time.monotonic() - stats["t0"], "rounds": k - stats["k0"]}), flush=True)


def run_child(args: list[str], agents: list[Agent]) -> tuple[dict, float]:
    """Run this script as a child with ``args``; its JSON result and the agents' CPU over its window."""
    proc = subprocess.Popen([sys.executable, __file__, *args], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    try:
        first = json.loads(proc.stdout.readline() or "{}")
        assert first.get("event") == "start", first
        a0 = sum(agent.cpu() for agent in agents)
        result = json.loads(proc.stdout.readline())
        agents_cpu = sum(agent.cpu() for agent in agents) - a0
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return result, agents_cpu / result["wall"] * 100


# ---------------------------------------------------------------------------- (2) latency
async def latencies(ports: list[int], outlets: int, version: str, metered: bool, switches: int) -> dict:
    from valve_console.drivers.pdu import PortState

    db_dir = Path(tempfile.mkdtemp(prefix="bench-power-db-", dir=DB_DIR))
    power, meter, store = await power_service(ports, outlets, version, metered, db_dir)
    try:
        await asyncio.sleep(1.5)  # the samplers are running
        for _ in range(10):  # warm-up
            await power.set_outlet("pdu0", "1", "off")
            await power.set_outlet("pdu0", "1", "on")
        rng = random.Random(18)
        times = []
        pm0 = meter.pdu("pdu0") if meter else None
        pre0, reads0 = (pm0.preempted, sum(pm.reads for pm in meter.pdus.values())) if meter and pm0 else (0, 0)
        t_start = time.monotonic()
        for k in range(switches):
            await asyncio.sleep(rng.uniform(0, 0.04))
            target = "off" if k % 2 == 0 else "on"
            t0 = time.perf_counter()
            got = await power.set_outlet("pdu0", "1", target)
            times.append(time.perf_counter() - t0)
            assert got == (PortState.OFF if k % 2 == 0 else PortState.ON), got
        span = time.monotonic() - t_start
        r = {"times": times, "span": span, "preempted": 0, "reads": 0}
        if meter is not None and pm0 is not None:
            r["preempted"] = pm0.preempted - pre0
            r["reads"] = sum(pm.reads for pm in meter.pdus.values()) - reads0
        return r
    finally:
        await close_service(power, meter, store)
        shutil.rmtree(db_dir, ignore_errors=True)


async def parts(ports: list[int], outlets: int, version: str, rounds: int = 60) -> dict:
    """Where a sample's CPU goes: the driver's read_power alone, and PowerMeter.take of its reading
    (median CPU per PDU read, this process)."""
    from valve_console.backend.metering import PowerMeter
    from valve_console.backend.store import Store
    from valve_console.drivers.pdu import PortState, create_driver
    from valve_console.drivers.pdu.snmp import close_engines

    drivers = [create_driver("apc_masterswitch", {"hostname": f"127.0.0.1:{p}", "version": version}) for p in ports]
    ids = [str(n) for n in range(1, outlets + 1)]
    meter = PowerMeter(Store.for_path(Path("/nonexistent/unused.sqlite")), machine_at=lambda pdu, port: f"{pdu}-{port}")
    states = dict.fromkeys(ids, PortState.ON)
    read, take = [], []
    try:
        for k in range(rounds + 5):
            for i, drv in enumerate(drivers):
                c0 = time.process_time()
                reading = await drv.read_power(ids)  # type: ignore[attr-defined]
                c1 = time.process_time()
                meter.take(f"pdu{i}", reading, time.time(), states, 1.0)
                c2 = time.process_time()
                if k >= 5:  # the first reads walk the outlet numbers
                    read.append(c1 - c0)
                    take.append(c2 - c1)
            await asyncio.sleep(0.02)
    finally:
        for drv in drivers:
            await drv.close()
        await close_engines()
    return {"read": statistics.median(read), "take": statistics.median(take)}


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def main(pdus: int, outlets: int, version: str, window: float, warmup: float, switches: int, runs: int) -> None:
    if shutil.which("snmpget") is None or (shutil.which("snmpd") is None and not Path("/usr/sbin/snmpd").exists()):
        sys.exit("needs snmpd and the snmp CLI: apt-get install snmpd snmp")
    tmp = Path(tempfile.mkdtemp(prefix="bench-power-", dir=SHM if SHM.is_dir() else None))
    agents: list[Agent] = []
    cpu: dict[str, list[dict]] = {"on": [], "off": [], "peer": []}
    lat: dict[bool, list[dict]] = {True: [], False: []}
    try:
        agents += [Agent(tmp / f"agent{i}", outlets) for i in range(pdus)]
        ports = [agent.port for agent in agents]
        common = ["--ports", ",".join(map(str, ports)), "--outlets", str(outlets), "--version", version,
                  "--window", str(window), "--warmup", str(warmup)]
        print(f"== {pdus} PDUs x {outlets} outlets = {pdus * outlets} metered outlets, snmpd agents (memory), "
              f"SNMP v{version}; {len(metering_oids(outlets))} OIDs per PDU read")
        for i in range(runs):  # alternating, so a busy spell of the machine hits each side alike
            print(f"-- run {i + 1}/{runs}")
            for name, args in (("on", ["--child", "serve", "--metered"]), ("peer", ["--child", "snmpget"]),
                               ("off", ["--child", "serve"])):
                result, agents_pct = run_child([*args, *common], agents)
                result["agents_pct"] = agents_pct
                cpu[name].append(result)
                if name == "peer":
                    print(f"   snmpget loop: {result['rounds']} rounds in {result['wall']:.1f} s; CPU "
                          f"{pct(result['own'] + result['children'], result['wall'])} (snmpget processes "
                          f"{pct(result['children'], result['wall'])}, the loop {pct(result['own'], result['wall'])}); "
                          f"agents {agents_pct:.2f} %")
                else:
                    extra = (f"; {result['reads']} reads, {result['metered_outlets']} outlets metered, "
                             f"{result['watts']:.0f} W, {result['failures']} failures, {result['problems']} problems"
                             if name == "on" else "")
                    print(f"   PowerService, metering {name}: CPU {pct(result['cpu'], result['wall'])} over "
                          f"{result['wall']:.1f} s{extra}; agents {agents_pct:.2f} %")
            for metered in (True, False):
                r = asyncio.run(latencies(ports, outlets, version, metered, switches))
                lat[metered].append(r)
                t = r["times"]
                reads = f"; {r['reads']} power reads meanwhile, {r['preempted']} preempted on pdu0" if metered else ""
                print(f"   set + read-back, metering {'on ' if metered else 'off'}: p50 {ms(percentile(t, 50))} "
                      f"p95 {ms(percentile(t, 95))} max {ms(max(t))} over {len(t)} in {r['span']:.1f} s{reads}")
        where = asyncio.run(parts(ports, outlets, version))
    finally:
        for agent in agents:
            agent.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    def med(values: list[float]) -> float:
        return statistics.median(values)

    on = [r["cpu"] / r["wall"] * 100 for r in cpu["on"]]
    off = [r["cpu"] / r["wall"] * 100 for r in cpu["off"]]
    peer = [(r["own"] + r["children"]) / r["wall"] * 100 for r in cpu["peer"]]
    peer_cli = [r["children"] / r["wall"] * 100 for r in cpu["peer"]]
    samplers = [a - b for a, b in zip(on, off, strict=True)]
    print(f"== summary: median [min-max] of {runs} run(s), CPU in % of one core over {window:g} s windows")
    print(f"  (1) PowerService + samplers              {span(on)}")
    print(f"      PowerService, metering off (polls)   {span(off)}")
    print(f"      the samplers' share (on - off)       {span(samplers)}")
    print(f"      snmpget loop, all                    {span(peer)}")
    print(f"      ... its snmpget processes alone      {span(peer_cli)}")
    print(f"      ratio peer / ours (whole service)    {med(peer) / med(on):.1f}x; peer's snmpget alone / samplers' "
          f"share {med(peer_cli) / max(med(samplers), 1e-9):.1f}x")
    print(f"      agents (snmpd x {pdus}) during ours / peer  {span([r['agents_pct'] for r in cpu['on']])} / "
          f"{span([r['agents_pct'] for r in cpu['peer']])}")
    print(f"      CPU per PDU read ({outlets} outlets): driver's read_power {ms(where['read'])}, "
          f"PowerMeter.take {ms(where['take'])}")
    for metered in (True, False):
        p50 = [percentile(r["times"], 50) * 1000 for r in lat[metered]]
        p95 = [percentile(r["times"], 95) * 1000 for r in lat[metered]]
        print(f"  (2) set + read-back, metering {'on ' if metered else 'off'}: p50 {span(p50, 'ms')}  "
              f"p95 {span(p95, 'ms')}")
    all_on = [t for r in lat[True] for t in r["times"]]
    all_off = [t for r in lat[False] for t in r["times"]]
    for p in (50, 95, 99):
        d = (percentile(all_on, p) - percentile(all_off, p)) * 1000
        print(f"      pooled p{p}: on {ms(percentile(all_on, p))}, off {ms(percentile(all_off, p))}, "
              f"difference {d:+.3f} ms")
    print(f"      mean: on {ms(statistics.mean(all_on))}, off {ms(statistics.mean(all_off))}")


def pct(seconds: float, wall: float) -> str:
    return f"{seconds / wall * 100:.2f} %"


def span(values: list[float], unit: str = "%") -> str:
    return f"{statistics.median(values):.2f} {unit} [{min(values):.2f}-{max(values):.2f}]"


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pdus", type=int, default=5, help="PDUs (one snmpd each)")
    parser.add_argument("--outlets", type=int, default=20, help="metered outlets per PDU")
    parser.add_argument("--version", choices=["1", "2c"], default="1", help="SNMP version of driver and CLI")
    parser.add_argument("--window", type=float, default=30.0, help="seconds of each CPU measurement")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before each CPU window")
    parser.add_argument("--switches", type=int, default=300, help="set + read-back per latency measurement")
    parser.add_argument("--runs", type=int, default=1, help="full runs (the sides alternate)")
    parser.add_argument("--child", choices=["serve", "snmpget"], help=argparse.SUPPRESS)
    parser.add_argument("--ports", help=argparse.SUPPRESS)
    parser.add_argument("--metered", action="store_true", help=argparse.SUPPRESS)
    o = parser.parse_args()
    if o.child == "serve":
        asyncio.run(serve([int(p) for p in o.ports.split(",")], o.outlets, o.version, o.metered, o.window, o.warmup))
    elif o.child == "snmpget":
        snmpget_loop([int(p) for p in o.ports.split(",")], o.outlets, o.version, o.window, o.warmup)
    else:
        main(o.pdus, o.outlets, o.version, o.window, o.warmup, o.switches, o.runs)
