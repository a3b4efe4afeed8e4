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

    def __init__(self, data_dir: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.netconsole_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [
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
            **(env or {}),
        }
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 15.0) -> "Backend":
        self.proc = subprocess.Popen(
            self.args, cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"backend exited {self.proc.returncode}: {self.proc.stderr.read()}")
            try:
                if httpx.get(self.url + "/api/v1/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("backend did not come up")

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
