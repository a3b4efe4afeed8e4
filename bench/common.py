"""Helpers shared by the benchmarks: real processes on loopback, CPU accounting from /proc."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SNMP_CLI_ENV = {**os.environ, "MIBS": ""}  # net-snmp's programs without loading MIB files


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_snmpd(workdir: Path, port: int, conf_lines: Sequence[str]) -> tuple["subprocess.Popen[bytes]", Path]:
    """net-snmp snmpd on 127.0.0.1:``port`` with ``conf_lines`` (after the private rwcommunity), in the
    foreground, logging to ``workdir/snmpd.log``; returns once it said it is up (RuntimeError if not in 10 s)."""
    conf = workdir / "snmpd.conf"
    conf.write_text("\n".join(["rwcommunity private 127.0.0.1", "dontLogTCPWrappersConnects yes", *conf_lines])
                    + "\n")
    log = workdir / "snmpd.log"
    process = subprocess.Popen(
        [shutil.which("snmpd") or "/usr/sbin/snmpd", "-f", "-Lf", str(log), "-C", "-c", str(conf),
         "-p", str(workdir / "pid"), f"udp:127.0.0.1:{port}"],
        env={**SNMP_CLI_ENV, "SNMP_PERSISTENT_DIR": str(workdir / "persist")},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while "NET-SNMP version" not in (log.read_text() if log.exists() else ""):
        if time.monotonic() > deadline or process.poll() is not None:
            raise RuntimeError(f"snmpd did not start: {log.read_text() if log.exists() else ''}")
        time.sleep(0.05)
    return process, log


def stop_process(process: "subprocess.Popen[bytes]") -> None:
    process.terminate()
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def cpu_seconds(pid: int) -> float:
    """User+system CPU of a process and its reaped children, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLK_TCK


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


class Farm:
    """valve-console --backend-only + vivian/vpdu.py as processes, with vpdu1 registered."""

    def __init__(self, data_dir: Path, outlets: int = 16, dut_args: Sequence[str] = ()) -> None:
        self.port, self.nc_port, self.vport = free_port(), free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        # The benchmark jobs name kernels nothing serves: do not try to cache them.
        env = {**os.environ, "VALVE_CONSOLE_DEFAULT_PDU_OFF_DELAY": "0", "VALVE_CONSOLE_BOOT_CACHE": "false"}
        self.backend = subprocess.Popen(
            [sys.executable, "-m", "valve_console.cli", "--backend-only", "--data-dir", str(data_dir),
             "--listen", f"127.0.0.1:{self.port}", "--netconsole", f"127.0.0.1:{self.nc_port}"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.vpdu = subprocess.Popen(
            [sys.executable, "vivian/vpdu.py", "--port", str(self.vport), "--num-ports", str(outlets),
             "--api", self.url, "--console", f"127.0.0.1:{self.nc_port}", "--log-dir", str(data_dir / "vivian"),
             *(f"--dut-arg={arg}" for arg in dut_args)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(self.url + "/api/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or self.backend.poll() is not None:
                self.close()
                raise RuntimeError("the backend did not come up within 20 s")
            time.sleep(0.1)
        self.token = (data_dir / "token").read_text().strip()
        self.http = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=30)
        r = self.http.post("/api/v1/pdu/", json={"name": "vpdu1", "driver": "vpdu",
                                                 "config": {"hostname": f"127.0.0.1:{self.vport}"}})
        r.raise_for_status()

    def close(self) -> None:
        if getattr(self, "http", None) is not None:
            self.http.close()
        for proc in (self.vpdu, self.backend):
            if proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


PEER = r"""
import threading, time, select, socket
stop = threading.Event()
def dut_thread():
    while not stop.is_set():
        time.sleep(0.1)          # executor: poll the job/console state every 0.1 s
def salad():
    a, b = socket.socketpair()
    while not stop.is_set():
        select.select([a], [], [], 1.0)
def mars_sync():
    while not stop.is_set():
        time.sleep(5)
threads = [threading.Thread(target=dut_thread, daemon=True) for _ in range(16)]
threads += [threading.Thread(target=salad, daemon=True), threading.Thread(target=mars_sync, daemon=True)]
for t in threads: t.start()
time.sleep(3600)
"""


def peer_idle_cpu(window: float) -> float:
    """CPU % of one core of a process shaped like valve-infra's executor at rest (reference §13):
    a thread per DUT polling every 0.1 s, a 1 s select loop, a 5 s registry sync; no I/O."""
    peer = subprocess.Popen([sys.executable, "-c", PEER])
    try:
        time.sleep(1)
        c0, t0 = cpu_seconds(peer.pid), time.monotonic()
        time.sleep(window)
        return (cpu_seconds(peer.pid) - c0) / (time.monotonic() - t0) * 100
    finally:
        peer.kill()
        peer.wait()
