"""Helpers shared by the benchmarks: real processes on loopback, CPU accounting from /proc."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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

    def __init__(self, data_dir: Path, outlets: int = 16) -> None:
        self.port, self.nc_port, self.vport = free_port(), free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        env = {**os.environ, "VALVE_CONSOLE_DEFAULT_PDU_OFF_DELAY": "0"}
        self.backend = subprocess.Popen(
            [sys.executable, "-m", "valve_console.cli", "--backend-only", "--data-dir", str(data_dir),
             "--listen", f"127.0.0.1:{self.port}", "--netconsole", f"127.0.0.1:{self.nc_port}"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.vpdu = subprocess.Popen(
            [sys.executable, "vivian/vpdu.py", "--port", str(self.vport), "--num-ports", str(outlets),
             "--api", self.url, "--console", f"127.0.0.1:{self.nc_port}", "--log-dir", str(data_dir / "vivian")],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(self.url + "/api/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.1)
        self.token = (data_dir / "token").read_text().strip()
        self.http = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=30)
        r = self.http.post("/api/v1/pdu/", json={"name": "vpdu1", "driver": "vpdu",
                                                 "config": {"hostname": f"127.0.0.1:{self.vport}"}})
        r.raise_for_status()

    def close(self) -> None:
        self.http.close()
        for proc in (self.vpdu, self.backend):
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
