"""Shared fixtures: a real Farm (backend + API on loopback ports) and a Vivian farm around it."""

from __future__ import annotations

import os

# Before valve_console is imported (contract.py reads it at import): every answer and event must carry
# exactly the keys the contract declares, so an undeclared or renamed key fails a test.
os.environ["VALVE_CONSOLE_STRICT_CONTRACT"] = "1"

import asyncio  # noqa: E402
import contextlib
import inspect
import sys
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from valve_console.backend.farm import Farm  # noqa: E402
from valve_console.client import FarmClient  # noqa: E402
from valve_console.config import Settings  # noqa: E402


def poll_until(check: Callable[[], Any], what: str = "condition", timeout: float = 10.0, every: float = 0.1) -> Any:
    """``eventually`` for tests that drive processes from plain (sync) code: poll ``check`` until it
    gives something truthy and return it; fail with ``what`` and the last value after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {value!r})")
        time.sleep(every)


async def eventually(check: Callable[[], Any], what: str = "condition", timeout: float = 10.0,
                     every: float = 0.05) -> Any:
    """Poll ``check`` (sync, or returning an awaitable) until it gives something truthy; return it.

    Fails with ``what`` after ``timeout`` seconds. The one polling helper of the async tests
    (``poll_until`` is its twin for sync ones).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(every)


def make_settings(data_dir: Path, **overrides) -> Settings:
    values = dict(
        data_dir=data_dir,
        listen="127.0.0.1:0",
        netconsole="127.0.0.1:0",
        farm_name="test",
        default_pdu_off_delay=0.2,
        outlet_poll_interval=0.5,
        pdu_timeout=2.0,
        console_tcp_base=0,  # any free port: fixed console ports clash between parallel runs
        boot_cache=False,  # test jobs name kernels that nothing serves; tests/jobs/test_boot_files.py turns it on
        training=False,  # Sgt. Hartman would power and boot every configured machine; tests/training turns it on
        # Every test runs on loopback, which "auto" trusts: the token checks would test nothing.
        # tests/compat/test_trusted.py turns it on.
        trusted_networks=[],
    )
    values.update(overrides)
    return Settings(**values)


@contextlib.asynccontextmanager
async def running_farm(settings: Settings) -> AsyncIterator[Farm]:
    """A Farm started with ``settings``, stopped on the way out."""
    f = Farm(settings)
    await f.start()
    try:
        yield f
    finally:
        await f.stop()


@pytest.fixture
async def farm(tmp_path: Path) -> AsyncIterator[Farm]:
    """A running Farm with its API on a free loopback port and no PDUs."""
    async with running_farm(make_settings(tmp_path / "data")) as f:
        yield f


def api_url(farm: Farm) -> str:
    return "http://{}:{}".format(*farm.api_address)


def netconsole_address(farm: Farm) -> str:
    return "{}:{}".format(*farm.netconsole_address)


@pytest.fixture
async def client(farm: Farm) -> AsyncIterator[FarmClient]:
    """A FarmClient over TCP with the operator token."""
    c = FarmClient(api_url(farm), token=farm.token)
    try:
        yield c
    finally:
        await c.close()


@contextlib.asynccontextmanager
async def running_vpdu(farm: Farm, log_dir: Path, name: str = "vpdu1") -> AsyncIterator[Any]:
    """A real vPDU (16 outlets, all OFF) on a free loopback port, registered in ``farm`` as PDU ``name``;
    stopped on the way out (``stop()`` may be called before: it is idempotent)."""
    from vivian.vpdu import VirtualPDU

    vpdu = VirtualPDU(num_ports=16, api=api_url(farm), console=netconsole_address(farm), log_dir=log_dir)
    port = await vpdu.start("127.0.0.1", 0)
    try:
        await farm.power.add_pdu(name, "vpdu", {"hostname": f"127.0.0.1:{port}"})
        vpdu.port = port
        yield vpdu
    finally:
        await vpdu.stop()


@pytest.fixture
async def vivian(farm: Farm, tmp_path: Path):
    """The farm plus a real vPDU (16 outlets, all OFF) registered as PDU ``vpdu1``."""
    async with running_vpdu(farm, tmp_path / "vivian") as vpdu:
        yield vpdu
