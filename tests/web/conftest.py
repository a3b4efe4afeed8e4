"""``valve-console serve`` as a real process in front of a real Farm with a Vivian vPDU."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator

import pytest

from valve_console.serve import store_password

ROOT = Path(__file__).resolve().parents[2]
VALVE = [sys.executable, "-m", "valve_console.cli"]
PASSWORD = "correct horse battery"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@dataclass
class Web:
    url: str  # http://127.0.0.1:PORT
    token: str
    data_dir: Path
    log: Path  # the serve process's stderr

    @property
    def origin(self) -> str:
        return self.url


def set_password(data_dir: Path, password: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*VALVE, "serve", "--data-dir", str(data_dir), "--set-password"],
        input=password + "\n",
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


@contextlib.asynccontextmanager
async def serving(farm, tmp_path: Path, *serve_args: str) -> AsyncIterator[Web]:
    """``valve-console serve SERVE_ARGS`` (with the farm's data dir, a web password, a free loopback port)."""
    data_dir = farm.settings.data_dir
    store_password(data_dir, PASSWORD)
    log = tmp_path / "serve.log"
    with log.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            *VALVE, "serve", "--data-dir", str(data_dir), *serve_args, "--host", "127.0.0.1", "--port", "0",
            cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=err, env={**os.environ, "TEXTUAL_ANIMATIONS": "none"},
        )
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        match = re.search(r"(http://127\.0\.0\.1:\d+)/", line)
        assert match, f"serve did not start: {line!r} {log.read_text()}"
        yield Web(url=match.group(1), token=farm.token, data_dir=data_dir, log=log)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()


@pytest.fixture
async def web(vivian, farm, tmp_path: Path) -> AsyncIterator[Web]:
    """The farm (vpdu1 with 16 outlets), a web password, and ``valve-console serve`` on a free loopback port."""
    async with serving(farm, tmp_path, "--api", "http://{}:{}".format(*farm.api_address)) as web:
        yield web


def chromium_or_skip() -> None:
    """Skip (with the reason) only when the browser cannot be had; CI installs it (Makefile DEB_TEST_PACKAGES)."""
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; make test installs it)")
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        pytest.skip("python playwright is not installed (pip install -e '.[test]')")
