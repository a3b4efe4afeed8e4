"""Shared pieces of the console security tests: a farm whose loopback plays the hostile DUT network.

Every test runs on loopback. Linux routes all of 127.0.0.0/8 there, so a "DUT" is a connection bound
to its own 127.0.0.x source address; with ``console_local_sources=[]`` loopback is not the gateway
itself but the DUT network, and the binding rules apply as they do to real DUTs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import AsyncIterator

import httpx
import psutil

from tests.conftest import api_url, make_settings
from valve_console.backend.farm import Farm

VICTIM = "52:54:00:11:22:03"


@contextlib.asynccontextmanager
async def dut_network_farm(data_dir: Path, **overrides) -> AsyncIterator[tuple[Farm, httpx.AsyncClient]]:
    """A running Farm where loopback is the DUT network, and an operator's HTTP client (with the token)."""
    values = {"console_local_sources": [], **overrides}
    farm = Farm(make_settings(data_dir, **values))
    await farm.start()
    http = httpx.AsyncClient(base_url=api_url(farm), headers={"Authorization": f"Bearer {farm.token}"}, timeout=10)
    try:
        yield farm, http
    finally:
        await http.aclose()
        await farm.stop()


async def dut(farm: Farm, source: str = "127.0.0.1") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A DUT's console connection to the netconsole, from ``source``."""
    return await asyncio.open_connection(*farm.netconsole_address, local_addr=(source, 0))


async def register(http: httpx.AsyncClient, mac: str, ip: str, name: str = "dut") -> None:
    r = await http.post("/api/v1/machine/", json={"base_name": name, "mac_address": mac, "ip_address": ip})
    assert r.status_code in (200, 201), r.text


async def silent(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """What ``reader`` receives within ``seconds`` (b"" if nothing)."""
    try:
        return await asyncio.wait_for(reader.read(65536), seconds)
    except asyncio.TimeoutError:
        return b""


def rss() -> int:
    return psutil.Process().memory_info().rss


HEALTH_BOUND = 2.0
"""Seconds the API may take to answer ``GET /api/v1/health`` during a flood. A loop starved by the flood takes
far longer (tens of seconds); 1 s failed once on a machine shared with other test runs."""


class HealthWatch:
    """Asks ``GET /api/v1/health`` every 0.2 s while a flood runs; keeps the slowest answer."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.slowest = 0.0
        self.answers = 0
        self.failures: list[str] = []
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=5) as http:
            while True:
                t0 = time.monotonic()
                try:
                    r = await http.get("/api/v1/health")
                    if r.status_code != 200:
                        self.failures.append(f"HTTP {r.status_code}")
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                self.slowest = max(self.slowest, time.monotonic() - t0)
                self.answers += 1
                await asyncio.sleep(0.2)

    async def __aenter__(self) -> "HealthWatch":
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
