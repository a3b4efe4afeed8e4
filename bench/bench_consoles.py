"""Console hub vs ser2net, measured in the same run on the same machine.

1. Aggregate ingest throughput: 16 ptys, a writer process pushing N MiB of 1 KiB text lines into
   each pty's master, one TCP viewer per console reading everything. The hub is the real
   ``valve-console --backend-only --serial ...`` process (console logs on, 4 MiB rings); ser2net
   is Debian's, tuned (``chardelay: false``, ``dev-to-net-bufsize: 65536``), one connection per pty.
2. Keystroke round trip: a TCP client sends one byte, it goes to the pty, an echo process on the
   pty's other end sends it back, and the client waits for it on TCP. p50/p99 over many keystrokes.

Run: ``.venv/bin/python bench/bench_consoles.py [--mib 8] [--runs 3] [--keys 2000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tty
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import ROOT, cpu_seconds, free_port, percentile  # noqa: E402

N_PTYS = 16
LINE = (b"[    1.234567] bench: the quick brown fox jumps over the lazy dog " * 16)[:1023] + b"\n"


class Pty:
    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)

    def close(self) -> None:
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass


def _writer(masters: list[int], nbytes: int, go, done) -> None:
    """In a child process: one thread per pty writing ``nbytes`` into its master (blocking writes)."""
    block = LINE * 64

    def push(fd: int) -> None:
        left = nbytes
        while left > 0:
            n = os.write(fd, block[: min(len(block), left)])
            left -= n

    go.wait()
    threads = [threading.Thread(target=push, args=(fd,)) for fd in masters]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()


def throughput(ports: list[int], ptys: list[Pty], mib: int, connect_wait: float = 0.3) -> float:
    """Write ``mib`` MiB into each pty; return MiB/s moved to the TCP readers (all bytes received)."""
    nbytes = mib * 1024 * 1024
    ctx = multiprocessing.get_context("fork")
    go, done = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_writer, args=([p.master for p in ptys], nbytes, go, done))
    proc.start()

    async def run() -> float:
        conns = [await asyncio.open_connection("127.0.0.1", port) for port in ports]
        await asyncio.sleep(connect_wait)  # ser2net opens the tty when a client connects

        async def drain(reader: asyncio.StreamReader) -> None:
            got = 0
            while got < nbytes:
                chunk = await reader.read(1 << 20)
                if not chunk:
                    raise RuntimeError(f"a connection closed after {got} of {nbytes} bytes")
                got += len(chunk)
            if got != nbytes:
                raise RuntimeError(f"received {got} bytes, expected {nbytes}")

        t0 = time.perf_counter()
        go.set()
        await asyncio.wait_for(asyncio.gather(*(drain(r) for r, _ in conns)), 300)
        elapsed = time.perf_counter() - t0
        for _, w in conns:
            w.close()
        return elapsed

    try:
        elapsed = asyncio.run(run())
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    return N_PTYS * mib / elapsed


def round_trips(port: int, pty: Pty, keys: int, warmup: int = 200) -> list[float]:
    """Send one byte at a time over TCP; an echo process on the pty's master sends it back."""
    echo = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os,sys\nfd=int(sys.argv[1])\nwhile True:\n d=os.read(fd,4096)\n if not d: break\n os.write(fd,d)",
            str(pty.master),
        ],
        pass_fds=[pty.master],
    )
    try:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        time.sleep(0.3)
        samples = []
        for i in range(warmup + keys):
            key = bytes((97 + i % 26,))
            t0 = time.perf_counter_ns()
            sock.sendall(key)
            got = b""
            while key not in got:
                chunk = sock.recv(4096)
                if not chunk:
                    raise RuntimeError("connection closed during the round trips")
                got += chunk
            if i >= warmup:
                samples.append((time.perf_counter_ns() - t0) / 1000.0)
        sock.close()
        return samples
    finally:
        echo.kill()
        echo.wait()


# --------------------------------------------------------------------------- the two contenders
class Hub:
    """``valve-console --backend-only`` with the 16 ptys as ``--serial`` devices."""

    def __init__(self, ptys: list[Pty], workdir: Path) -> None:
        self.ptys = ptys
        self.dir = workdir / f"hub-{time.monotonic_ns()}"
        self.proc: subprocess.Popen | None = None
        self.api = ""
        self.token = ""

    def _get(self, path: str) -> dict:
        req = urllib.request.Request(self.api + path, headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def start(self) -> list[int]:
        args = [sys.executable, "-m", "valve_console.cli", "--backend-only", "--data-dir", str(self.dir)]
        args += ["--listen", "127.0.0.1:0", "--netconsole", "127.0.0.1:0"]
        for p in self.ptys:
            args += ["--serial", p.path]
        env = {
            **os.environ,
            "VALVE_CONSOLE_CONSOLE_TCP_BASE": "0",
            "VALVE_CONSOLE_CONSOLE_DISCOVERY": "off",
            "VALVE_CONSOLE_LOG_LEVEL": "WARNING",
        }
        self.proc = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        line = self.proc.stdout.readline()
        if "API http://" not in line:
            raise RuntimeError(f"the backend did not start: {line!r}")
        self.api = line.split("API ")[1].split()[0]
        self.token = (self.dir / "token").read_text().strip()
        deadline = time.monotonic() + 20
        while True:
            devices = self._get("/api/v1/consoles")["devices"]
            if sum(1 for p in self.ptys if devices.get(p.path, {}).get("open")) == len(self.ptys):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the hub did not open every pty")
            time.sleep(0.05)
        macs = [f"02:00:00:00:10:{i:02x}" for i in range(len(self.ptys))]
        for p, mac in zip(self.ptys, macs, strict=True):
            os.write(p.master, f"SALAD.machine_id={mac}\r\n".encode())
        while True:
            consoles = self._get("/api/v1/consoles")["consoles"]
            if all(consoles.get(m, {}).get("connected") and consoles[m].get("tcp_port") for m in macs):
                return [consoles[m]["tcp_port"] for m in macs]
            if time.monotonic() > deadline:
                raise RuntimeError("the hub did not bind every pty")
            time.sleep(0.05)

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid) if self.proc is not None else float("nan")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class Ser2net:
    def __init__(self, ptys: list[Pty], workdir: Path) -> None:
        self.ptys = ptys
        self.dir = workdir
        self.ports = [free_port() for _ in ptys]
        self.proc: subprocess.Popen | None = None

    def start(self) -> list[int]:
        conf = self.dir / f"ser2net-{self.ports[0]}.yaml"
        text = "%YAML 1.1\n---\n"
        for i, (p, port) in enumerate(zip(self.ptys, self.ports, strict=True)):
            text += (
                f"connection: &c{i}\n    accepter: tcp,127.0.0.1,{port}\n"
                "    options: {kickolduser: true, max-connections: 4, chardelay: false, dev-to-net-bufsize: 65536}\n"
                f"    connector: serialdev,{p.path},115200n81,local\n"
            )
        conf.write_text(text)
        ser2net = shutil.which("ser2net") or "/usr/sbin/ser2net"
        self.proc = subprocess.Popen(
            [ser2net, "-d", "-c", str(conf), "-P", str(self.dir / "ser2net.pid")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        for port in self.ports:
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError("ser2net did not listen") from None
                    time.sleep(0.02)
        time.sleep(0.2)
        return self.ports

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid) if self.proc is not None else float("nan")

    def stop(self) -> None:
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def measure(workdir: Path, mib: int, runs: int, keys: int, blocks: int = 8) -> dict:
    """Both servers up at once on their own ptys; runs and keystroke blocks alternate between them,
    so a noisy neighbour on the machine hurts both alike."""
    servers: dict[str, Hub | Ser2net] = {}
    ptys: dict[str, list[Pty]] = {}
    ports: dict[str, list[int]] = {}
    results = {kind: {"rates": [], "cpu_per_gib": [], "rtt": []} for kind in ("ser2net", "hub")}
    try:
        for kind in ("ser2net", "hub"):
            ptys[kind] = [Pty() for _ in range(N_PTYS)]
            servers[kind] = (Hub if kind == "hub" else Ser2net)(ptys[kind], workdir)
            ports[kind] = servers[kind].start()
        for _ in range(runs):
            for kind, server in servers.items():
                before = server.cpu()
                results[kind]["rates"].append(throughput(ports[kind], ptys[kind], mib))
                results[kind]["cpu_per_gib"].append((server.cpu() - before) / (N_PTYS * mib / 1024))
        for _ in range(blocks):
            for kind in servers:
                results[kind]["rtt"] += round_trips(ports[kind][1], ptys[kind][1], keys // blocks, warmup=50)
        return results
    finally:
        for server in servers.values():
            server.stop()
        for group in ptys.values():
            for p in group:
                p.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=8, help="MiB written into each of the 16 ptys per run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keys", type=int, default=2000, help="keystrokes for the round-trip test")
    args = parser.parse_args()
    if not (shutil.which("ser2net") or os.path.exists("/usr/sbin/ser2net")):
        print("ser2net is not installed (apt-get install ser2net)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-consoles-") as tmp:
        work = Path(tmp)
        results = measure(work, args.mib, args.runs, args.keys)

    s2n, hub = results["ser2net"], results["hub"]
    s2n_rate, hub_rate = statistics.median(s2n["rates"]), statistics.median(hub["rates"])
    print(f"ingest: {N_PTYS} ptys x {args.mib} MiB, 1 KiB lines, one TCP viewer each, median of {args.runs} runs")
    print(
        f"  ser2net (tuned)            {s2n_rate:7.1f} MiB/s   runs {', '.join(f'{r:.1f}' for r in s2n['rates'])}"
        f"   CPU {statistics.median(s2n['cpu_per_gib']):.2f} s/GiB"
    )
    print(
        f"  valve-console hub (+logs)  {hub_rate:7.1f} MiB/s   runs {', '.join(f'{r:.1f}' for r in hub['rates'])}"
        f"   CPU {statistics.median(hub['cpu_per_gib']):.2f} s/GiB"
    )
    print(f"  ratio hub/ser2net          {hub_rate / s2n_rate:7.2f}x   (target >= 1.0x)")
    print(f"keystroke round trip TCP -> pty -> echo -> TCP, {args.keys} keys (microseconds)")
    for name, r in (("ser2net (tuned)", s2n["rtt"]), ("valve-console hub", hub["rtt"])):
        p50, p90, p99 = (percentile(r, p) for p in (50, 90, 99))
        print(f"  {name:26s} p50 {p50:7.1f}   p90 {p90:7.1f}   p99 {p99:7.1f}   max {max(r):8.1f}")
    ratio = percentile(hub["rtt"], 99) / percentile(s2n["rtt"], 99)
    print(f"  ratio p99 hub/ser2net      {ratio:7.2f}x   (target <= 1.5x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
