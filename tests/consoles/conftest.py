"""Real ptys, socat pairs, ser2net and a Farm whose serial devices come from a FakeDeviceSource."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import signal
import socket
import subprocess
import time
import tty
from pathlib import Path
from typing import AsyncIterator

import httpx
import pytest

from tests.conftest import api_url, eventually, make_settings
from valve_console.backend.farm import Farm
from valve_console.drivers.serial import FakeDeviceSource, SerialDeviceInfo

SOCAT = shutil.which("socat")
SER2NET = shutil.which("ser2net") or ("/usr/sbin/ser2net" if os.path.exists("/usr/sbin/ser2net") else None)
need_socat = pytest.mark.skipif(SOCAT is None, reason="socat is not installed (apt-get install socat)")
need_ser2net = pytest.mark.skipif(SER2NET is None, reason="ser2net is not installed (apt-get install ser2net)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_for(predicate, timeout: float = 5.0, what: str = "condition"):
    """Poll ``predicate`` (sync or async) until it returns something truthy."""
    return await eventually(predicate, what, timeout, every=0.02)


async def device_open(hub, identity: str, timeout: float = 5.0):
    """Wait until the hub has the device open (pyserial flushes input on open: write after this)."""
    return await wait_for(
        lambda: hub.devices.get(identity) is not None and hub.devices[identity].stream is not None,
        timeout,
        f"{identity} open",
    )


class FdEnd:
    """The DUT's side of a serial line: a file descriptor read and written without blocking the loop."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        os.set_blocking(fd, False)
        self.received = bytearray()

    def write_nowait(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.fd, view)
            except BlockingIOError:
                time.sleep(0.001)
                continue
            view = view[n:]

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.fd, view[:65536])
                view = view[n:]
            except BlockingIOError:
                await asyncio.sleep(0.002)

    def _drain(self) -> None:
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.EIO:  # nobody has the other side open (yet)
                    return
                raise
            if not chunk:
                return
            self.received += chunk

    async def read_until(self, needle: bytes, timeout: float = 5.0) -> bytes:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while needle not in self.received:
            self._drain()
            if needle in self.received:
                break
            if loop.time() > deadline:
                raise AssertionError(f"{needle!r} not received; got {bytes(self.received[-300:])!r}")
            await asyncio.sleep(0.01)
        idx = self.received.index(needle) + len(needle)
        out = bytes(self.received[:idx])
        del self.received[:idx]
        return out

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


class Pty(FdEnd):
    """``os.openpty()``: the hub opens the slave path, the test plays the DUT on the master."""

    def __init__(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no CR/LF translation: a serial line, not a terminal
        self.slave = slave  # held so the master never reads EIO before the hub opens the slave
        self.path = os.ttyname(slave)
        super().__init__(master)

    def close(self) -> None:
        super().close()
        if self.slave >= 0:
            with contextlib.suppress(OSError):
                os.close(self.slave)
            self.slave = -1


class SocatPair:
    """``socat pty,link=A pty,link=B``: the hub opens A (a stable name), the DUT side is B."""

    def __init__(self, directory: Path, name: str = "tty") -> None:
        self.a = str(directory / f"{name}A")
        self.b = str(directory / f"{name}B")
        self.proc: subprocess.Popen | None = None
        self.dut: FdEnd | None = None

    def start(self) -> "SocatPair":
        assert SOCAT is not None
        for link in (self.a, self.b):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(link)
        self.proc = subprocess.Popen(
            [SOCAT, "-d", "-d", f"pty,raw,echo=0,link={self.a}", f"pty,raw,echo=0,link={self.b}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 5
        while not (os.path.exists(self.a) and os.path.exists(self.b)):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("socat did not create its ptys")
            time.sleep(0.01)
        self.dut = FdEnd(os.open(self.b, os.O_RDWR | os.O_NOCTTY))
        return self

    def stop(self) -> None:
        if self.dut is not None:
            self.dut.close()
            self.dut = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class Ser2net:
    """A real ser2net serving ttys on raw TCP and on Telnet/RFC 2217 (free loopback ports)."""

    def __init__(
        self, directory: Path, raw_device: str | None = None, rfc2217_device: str | None = None, **options
    ) -> None:
        self.dir = directory
        self.raw_device = raw_device
        self.rfc2217_device = rfc2217_device
        self.raw_port = free_port()
        self.rfc2217_port = free_port()
        self.options = {"kickolduser": "true", "max-connections": 4, "chardelay": "false", **options}
        self.proc: subprocess.Popen | None = None

    def ports(self) -> list[int]:
        return [p for p, d in ((self.raw_port, self.raw_device), (self.rfc2217_port, self.rfc2217_device)) if d]

    def start(self) -> "Ser2net":
        assert SER2NET is not None
        opts = ", ".join(f"{k}: {v}" for k, v in self.options.items())
        conf = self.dir / f"ser2net-{self.raw_port}.yaml"
        text = "%YAML 1.1\n---\n"
        if self.raw_device:
            text += (
                f"connection: &raw\n    accepter: tcp,127.0.0.1,{self.raw_port}\n"
                f"    options: {{{opts}}}\n    connector: serialdev,{self.raw_device},115200n81,local\n"
            )
        if self.rfc2217_device:
            text += (
                f"connection: &rfc\n    accepter: telnet(rfc2217),tcp,127.0.0.1,{self.rfc2217_port}\n"
                f"    options: {{{opts}}}\n    connector: serialdev,{self.rfc2217_device},115200n81,local\n"
            )
        conf.write_text(text)
        self.proc = subprocess.Popen(
            [SER2NET, "-d", "-c", str(conf), "-P", str(self.dir / f"ser2net-{self.raw_port}.pid")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 5
        for port in self.ports():
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or self.proc.poll() is not None:
                        self.stop()
                        raise RuntimeError("ser2net did not start listening") from None
                    time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None


def device(path: str, serial: str | None = "FAKE0001", baud: int = 115200, **extra) -> SerialDeviceInfo:
    """A device as a USB adapter would be described, pointing at a real pty or socat link."""
    interface = "00" if serial else None
    return SerialDeviceInfo(devnode=path, id_serial_short=serial, interface=interface, baud=baud, **extra)


@pytest.fixture
def ptys():
    made: list[Pty] = []

    def make() -> Pty:
        p = Pty()
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


@pytest.fixture
def ser2nets(tmp_path):
    made: list[Ser2net] = []

    def make(**kwargs) -> Ser2net:
        server = Ser2net(tmp_path, **kwargs).start()
        made.append(server)
        return server

    yield make
    for server in made:
        server.stop()


@pytest.fixture
def socat_pairs(tmp_path):
    made: list[SocatPair] = []

    def make(name: str = "tty") -> SocatPair:
        pair = SocatPair(tmp_path, name).start()
        made.append(pair)
        return pair

    yield make
    for pair in made:
        pair.stop()


class SerialFarm:
    """Farms on one data directory, each with a FakeDeviceSource; restartable."""

    def __init__(self, data_dir: Path, **overrides) -> None:
        self.data_dir = data_dir
        self.overrides = {"console_tcp_base": 0, "console_discovery": "off", **overrides}
        self.farm: Farm | None = None
        self.source: FakeDeviceSource | None = None
        self.http: httpx.AsyncClient | None = None

    async def start(self, devices=()) -> Farm:
        self.source = FakeDeviceSource(devices)
        self.farm = Farm(make_settings(self.data_dir, **self.overrides))
        self.farm.console_device_sources = [self.source]
        await self.farm.start()
        self.http = httpx.AsyncClient(
            base_url=api_url(self.farm), headers={"Authorization": f"Bearer {self.farm.token}"}, timeout=10
        )
        return self.farm

    async def stop(self) -> None:
        if self.http is not None:
            await self.http.aclose()
            self.http = None
        if self.farm is not None:
            await self.farm.stop()
            self.farm = None

    @property
    def hub(self):
        assert self.farm is not None
        return self.farm.consoles

    async def consoles(self) -> dict:
        return (await self.http.get("/api/v1/consoles")).json()


@pytest.fixture
async def serial_farm(tmp_path) -> AsyncIterator[SerialFarm]:
    sf = SerialFarm(tmp_path / "data")
    try:
        yield sf
    finally:
        await sf.stop()
