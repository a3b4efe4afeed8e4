"""Running the real ``valve-console`` program in a subprocess for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
VALVE = [sys.executable, "-m", "valve_console.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Backend:
    """``valve-console --backend-only`` as a child process on free loopback ports."""

    def __init__(self, data_dir: Path, *extra: str, env: dict[str, str] | None = None, log: Path | None = None,
                 prefix: tuple[str, ...] = ()) -> None:
        """``log``: where its stdout and stderr go (default: ``<data_dir>.log``; a pipe nobody reads fills up
        under a long run and stops the backend in its next write). ``prefix`` runs it under a command
        (``prlimit --nofile=1024:1024 --``)."""
        self.data_dir = data_dir
        self.log = log or data_dir.with_name(data_dir.name + ".log")
        self.port = free_port()
        self.netconsole_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [
            *prefix,
            *VALVE,
            "--backend-only",
            "--data-dir",
            str(data_dir),
            "--listen",
            f"127.0.0.1:{self.port}",
            "--netconsole",
            f"127.0.0.1:{self.netconsole_port}",
            *extra,
        ]
        self.env = {
            **os.environ,
            "VALVE_CONSOLE_DEFAULT_PDU_OFF_DELAY": "0.2",
            "VALVE_CONSOLE_BOOT_CACHE": "false",
            "VALVE_CONSOLE_OUTLET_POLL_INTERVAL": "0.5",
            # Sgt. Hartman would train every machine given an outlet; a test that wants it passes
            # env={"VALVE_CONSOLE_TRAINING": "true", "VALVE_CONSOLE_TRAINING_LOOPS": "2", ...}
            "VALVE_CONSOLE_TRAINING": "false",
            # loopback is trusted by default ("auto"): the tests send the token, as a remote operator does
            "VALVE_CONSOLE_TRUSTED_NETWORKS": "none",
            **(env or {}),
        }
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 15.0) -> "Backend":
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(self.args, cwd=ROOT, env=self.env, stdout=out, stderr=out)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"backend exited {self.proc.returncode}: {self.log_text()}")
            try:
                if httpx.get(self.url + "/api/v1/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"backend did not come up: {self.log_text()[-2000:]}")

    def log_text(self) -> str:
        """What it printed (stdout and stderr) so far."""
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    @property
    def token(self) -> str:
        return (self.data_dir / "token").read_text().strip()

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=10)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


class Vpdu:
    """``vivian/vpdu.py`` as a child process for a Backend: 16 outlets whose DUTs report to it.
    ``snmp=True`` also answers SNMP (as an APC MasterSwitch) on ``snmp_port``."""

    def __init__(self, backend: Backend, log_dir: Path, outlets: int = 16, snmp: bool = False) -> None:
        self.backend = backend
        self.port = free_port()
        self.snmp_port = free_port() if snmp else None
        self.args = [
            sys.executable, "vivian/vpdu.py", "--port", str(self.port), "--num-ports", str(outlets),
            "--api", backend.url, "--console", f"127.0.0.1:{backend.netconsole_port}", "--log-dir", str(log_dir),
            *(["--snmp-port", str(self.snmp_port)] if snmp else []),
        ]
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Vpdu":
        self.proc = subprocess.Popen(self.args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert "vPDU listening" in line, line
        return self

    def add_to(self, http: httpx.Client, name: str = "vpdu1") -> dict:
        """Register it with the backend (its own driver), and wait until its outlets are listed."""
        r = http.post("/api/v1/pdu/", json={"name": name, "pdu_model": "vpdu",
                                            "config": {"hostname": f"127.0.0.1:{self.port}"}})
        assert r.status_code == 201, r.text
        deadline = time.monotonic() + 30
        while not (pdu := http.get(f"/api/v1/pdu/{name}").json())["ports"]:
            assert time.monotonic() < deadline, f"PDU {name} lists no outlets: {pdu}"
            time.sleep(0.1)
        return pdu

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
