"""The fleet console over 20 gateways x 100 machines: its CPU and keypress-to-repaint latency.

Two real farms (``--backend-only`` + a vPDU, 100 machines each as in bench_tui: 16 DUTs behind the
outlets and 84 more registered; ``LIVE_OUTLETS`` of the DUTs switched on, their consoles streaming at
115200 baud) and 18 recorded gateways: the first real farm's answers to every GET the console makes,
and its event stream recorded for ``RECORD`` s while outlets are switched (so the load is what a real
farm sends: outlet events with power readings, machine events, console batches), served by a local
HTTP server (aiohttp, a process of its own) that replays the recording in a loop on 18 ports, each
with its own farm name and a random start offset, honouring ``types`` as the API does (the console
asks the gateways it does not show for the event types their rows need only). Two real backends x 100
machines cost about a core here already; 20 would need ten.

The console under test: ``valve-console fleet FILE`` (the 20 gateways) in a pty (160x50, bench_tui's
PtyTui). Measured: the time until the Fleet screen says "20 of 20 gateways up"; CPU over ``CPU_WINDOW``
s on the Fleet screen (process time / wall time, all its threads); keypress -> repaint p50/p95 of
(a) the Fleet screen's cursor (down/up: the line under the table names the selected gateway),
(b) screen switches 0 (Fleet) / 4 (the shown gateway's DUT table, 100 rows), (c) enter on a gateway
(the whole console switched: every farm screen made anew) until its Overview is drawn, then 0.
Every process is stopped on exit, also on errors and on SIGTERM/SIGINT/SIGHUP.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.bench_tui import BenchFarm, PtyTui, key_series  # noqa: E402
from bench.common import ROOT, cpu_seconds, free_port, percentile  # noqa: E402

GATEWAYS = 20
REAL = 2
LIVE_OUTLETS = 4
RECORD = 20.0
CPU_WINDOW = 20.0
CURSOR_KEYS = 40
SCREEN_KEYS = 20
GATEWAY_SWITCHES = 10
DOWN, UP, ENTER = b"\x1b[B", b"\x1b[A", b"\r"
GETS = {
    "health": "/api/v1/health", "gateway": "/api/v1/gateway", "machines": "/api/v1/machines",
    "pdus": "/api/v1/pdus", "consoles": "/api/v1/consoles", "log": "/api/v1/log",
    "discover": "/api/v1/machine/discover", "jobs": "/api/v1/jobs", "settings": "/api/v1/settings",
    "gitlab": "/api/v1/gitlab",
}


# ------------------------------------------------------------------------------ recording
def record(farm: BenchFarm, out: Path) -> dict[str, int]:
    """The farm's GET answers and its event stream for RECORD s, while outlets are switched on and off."""
    answers = {name: farm.http.get(path, params={"lines": 500} if name == "log" else None).json()
               for name, path in GETS.items()}
    events: list[tuple[float, str]] = []
    start = time.monotonic()

    def switcher() -> None:
        port = LIVE_OUTLETS
        while time.monotonic() - start < RECORD - 1:
            for state in ("on", "off"):
                farm.http.post(f"/api/v1/pdu/vpdu1/port/{port}/state", json={"state": state})
                time.sleep(1.0)
            port = LIVE_OUTLETS + (port + 1 - LIVE_OUTLETS) % 8

    import threading

    thread = threading.Thread(target=switcher, daemon=True)
    with httpx.Client(base_url=farm.url, headers={"Authorization": f"Bearer {farm.token}"}, timeout=None) as http:
        with http.stream("GET", "/api/v1/events") as stream:
            thread.start()
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    events.append((time.monotonic() - start, line[5:].strip()))
                if time.monotonic() - start > RECORD:
                    break
    thread.join(5)
    out.write_text(json.dumps({"answers": answers, "events": events, "length": RECORD}))
    kinds: dict[str, int] = {}
    for _, data in events:
        kind = json.loads(data)["type"]
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


# ------------------------------------------------------------------------------ replaying (a process)
async def serve_recordings(recording: Path, ports: list[int]) -> None:
    from aiohttp import web

    rec = json.loads(recording.read_text())
    answers, events, length = rec["answers"], rec["events"], rec["length"]

    def make_app(name: str) -> web.Application:
        mine = json.loads(json.dumps(answers))
        mine["health"]["farm_name"] = name
        paths = {GETS[key]: value for key, value in mine.items()}

        async def get(request: web.Request) -> web.StreamResponse:
            path = request.path.rstrip("/")
            if path == "/api/v1/events":
                return await stream(request)
            if path in paths:
                return web.json_response(paths[path])
            return web.json_response({"error": "not found"}, status=404)

        async def stream(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
            await response.prepare(request)
            seq = 0
            shift = random.uniform(0, length)  # the gateways do not march in step
            wanted = set(request.query["types"].split(",")) | {"dropped"} if request.query.get("types") else None
            mine = sorted(((at - shift) % length, data) for at, data in events
                          if wanted is None or json.loads(data)["type"] in wanted)
            if not mine:  # nothing of those types in the recording: an open, quiet stream
                mine = [(length, None)]
            began = time.monotonic()
            try:
                lap = 0.0
                while True:
                    for at, data in mine:
                        wait = began + lap + at - time.monotonic()
                        if wait > 0:
                            await asyncio.sleep(wait)
                        if data is None:
                            continue
                        event = json.loads(data)
                        seq += 1
                        event["seq"], event["ts"] = seq, time.time()
                        await response.write(f"id: {seq}\nevent: {event['type']}\ndata: "
                                             f"{json.dumps(event, separators=(',', ':'))}\n\n".encode())
                    lap += length
            except (ConnectionResetError, asyncio.CancelledError):
                pass
            return response

        app = web.Application()
        app.router.add_get("/{tail:.*}", get)
        return app

    runners = []
    for i, port in enumerate(ports):
        runner = web.AppRunner(make_app(f"recorded-{i + 1:02d}"), access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
    print("ready", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for runner in runners:
        await runner.cleanup()


# ------------------------------------------------------------------------------ measuring
def ms(values: list[float], p: float) -> str:
    return f"{percentile(values, p):.0f} ms" if values else "-"


def measure(fleet_file: Path, names: list[str]) -> dict[str, object]:
    res: dict[str, object] = {}
    tui = PtyTui([sys.executable, "-m", "valve_console.cli", "fleet", str(fleet_file)])
    try:
        up = tui.wait_for(f"{GATEWAYS} of {GATEWAYS} gateways up".encode(), 60)
        if up is None:
            raise RuntimeError("the Fleet screen never said every gateway is up")
        res["all_up"] = up - tui.started
        time.sleep(3)
        c0, t0 = cpu_seconds(tui.proc.pid), time.monotonic()
        time.sleep(CPU_WINDOW)
        res["cpu"] = (cpu_seconds(tui.proc.pid) - c0) / (time.monotonic() - t0) * 100
        # (a) the cursor: the line under the table names the selected gateway (" NAME: up")
        res["cursor"] = key_series(tui, [(DOWN, f" {names[1]}: ".encode()), (UP, f" {names[0]}: ".encode())],
                                   CURSOR_KEYS)
        # (c) enter on a gateway: the whole console switched; 0 back. Real and recorded gateways in turn.
        switch: list[float] = []
        misses = 0
        for i in range(GATEWAY_SWITCHES):
            target = (i + 1) % 3  # rows 1 (real), 2 (recorded), 0 (real)
            for _ in range(target):
                tui.press(DOWN, f" {names[_ + 1]}: ".encode())
                time.sleep(0.2)
            dt = tui.press(ENTER, b"Backend services", 5)  # the gateway's Overview, made anew
            if dt is None:
                misses += 1
            else:
                switch.append(dt * 1000)
            time.sleep(1.0)
            if i == 0:  # (b) screen switches on the shown gateway: 4 (its DUT table), 0 (Fleet)
                res["screens"] = key_series(tui, [(b"4", b"sorted by"), (b"0", b"gateways up")], SCREEN_KEYS)
            tui.press(b"0", b"gateways up", 5)
            time.sleep(0.5)
            for _ in range(target):
                tui.press(UP, f" {names[target - _ - 1]}: ".encode())
                time.sleep(0.2)
        res["switch"] = (switch, misses)
        c1 = cpu_seconds(tui.proc.pid)
        if tui.proc.poll() is not None:
            raise RuntimeError(f"the console exited with code {tui.proc.returncode}")
        res["cpu_total"] = c1
    finally:
        tui.close()
    return res


def report(res: dict[str, object], kinds: dict[str, int], record_s: float) -> None:
    rate = sum(kinds.values()) / record_s
    print(f"fleet: {GATEWAYS} gateways x 100 machines ({REAL} real farms, {GATEWAYS - REAL} replaying a recording "
          f"of {sum(kinds.values())} events in {record_s:.0f} s = {rate:.0f} events/s each: "
          + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())) + ")")
    print(f"  all {GATEWAYS} rows up after        {float(res['all_up']):.1f} s")  # type: ignore[arg-type]
    print(f"  CPU on the Fleet screen          {float(res['cpu']):.1f} % of a core over {CPU_WINDOW:.0f} s")  # type: ignore[arg-type]
    for key, label in (("cursor", "Fleet cursor (down/up)"), ("screens", "screens 4 (DUTs) / 0 (Fleet)"),
                       ("switch", "enter: switch gateway")):
        lat, misses = res[key]  # type: ignore[misc]
        print(f"  {label:32} p50 {ms(lat, 50)}  p95 {ms(lat, 95)}  max {ms(lat, 100)}  ({len(lat)} keys, "
              f"{misses} missed)")


_children: list[subprocess.Popen] = []
_farms: list[BenchFarm] = []


def _stop(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--serve-recordings", nargs="+", metavar="ARG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_recordings:
        recording, *ports = args.serve_recordings
        asyncio.run(serve_recordings(Path(recording), [int(p) for p in ports]))
        return 0
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _stop)
    # Sgt. Hartman would take every DUT given an outlet (and its outlet): the bench switches them itself
    os.environ["VALVE_CONSOLE_TRAINING"] = "false"
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        work = Path(tmp)
        try:
            for i in range(REAL):
                farm = BenchFarm(work / f"real-{i + 1}")
                _farms.append(farm)
                farm.populate()
                for outlet in range(LIVE_OUTLETS):
                    farm.http.post(f"/api/v1/pdu/vpdu1/port/{outlet}/state", json={"state": "on"}).raise_for_status()
            time.sleep(5)  # the DUTs boot and stream
            recording = work / "recording.json"
            kinds = record(_farms[0], recording)
            ports = [free_port() for _ in range(GATEWAYS - REAL)]
            fakes = subprocess.Popen([sys.executable, __file__, "--serve-recordings", str(recording),
                                      *map(str, ports)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
            _children.append(fakes)
            if fakes.stdout is None or fakes.stdout.readline().strip() != "ready":
                raise RuntimeError("the recorded gateways did not start")
            names = [f"real-{i + 1}" for i in range(REAL)] + [f"rec-{i + 1:02d}" for i in range(len(ports))]
            lines = ['name = "bench"']
            for i, farm in enumerate(_farms):
                lines += ["[[gateway]]", f'name = "{names[i]}"', f'url = "{farm.url}"', f'token = "{farm.token}"']
            for name, port in zip(names[REAL:], ports, strict=True):
                lines += ["[[gateway]]", f'name = "{name}"', f'url = "http://127.0.0.1:{port}"', 'token = "x"']
            fleet_file = work / "fleet.toml"
            fleet_file.write_text("\n".join(lines) + "\n")
            res = measure(fleet_file, names)
            report(res, kinds, RECORD)
        finally:
            for child in _children:
                if child.poll() is None:
                    child.terminate()
                    try:
                        child.wait(10)
                    except subprocess.TimeoutExpired:
                        child.kill()
            for farm in _farms:
                farm.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
