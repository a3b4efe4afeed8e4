"""Vivian: the vPDU server, its CLI client, the simulated DUT and the gateway's vpdu driver.

Everything here runs over real sockets and real processes; ports are always picked by the kernel.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Self

import pytest

from tests.conftest import eventually
from valve_console.drivers.pdu import DriverConfigError, DriverError, PortState, create_driver
from valve_console.drivers.pdu.vpdu import VirtualPDU as VpduDriver
from vivian.client import make_word, send_command
from vivian.vpdu import VirtualPDU

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "vivian" / "client.py"
DUT = ROOT / "vivian" / "dut.py"
VPDU = ROOT / "vivian" / "vpdu.py"
MAC3 = "52:54:00:11:22:03"
# DUTs started by tests that do not look at the console: no registration, nothing to wait for.
QUIET_DUT = ("--no-register", "--boot-delay=0")


def free_port() -> int:
    """A TCP port nobody listens on (bound then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def ask(port: int, word: int) -> int:
    """Send one word with the blocking client helper, off the event loop that runs the vPDU."""
    return await asyncio.to_thread(send_command, "127.0.0.1", port, word)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def run_client(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(CLIENT), *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def pdu() -> AsyncIterator[tuple[VirtualPDU, int]]:
    vpdu = VirtualPDU(api=f"http://127.0.0.1:{free_port()}", console=f"127.0.0.1:{free_port()}", dut_args=QUIET_DUT)
    port = await vpdu.start("127.0.0.1", 0)
    try:
        yield vpdu, port
    finally:
        await vpdu.stop()


class FakeNetconsole:
    """The gateway's netconsole: records what DUTs print and answers SALAD.ping if asked to."""

    def __init__(self, answer_pings: bool = True) -> None:
        self.answer_pings = answer_pings
        self.data = bytearray()
        self.writer: asyncio.StreamWriter | None = None
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(self.server.sockets[0].getsockname()[1])
        return self.port

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        pending = b""
        while chunk := await reader.read(4096):
            self.data += chunk
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                if self.answer_pings and line.strip().endswith(b"SALAD.ping"):
                    writer.write(b"SALAD.pong\n")
        writer.close()

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", "replace")

    def send(self, data: bytes) -> None:
        assert self.writer is not None
        self.writer.write(data)

    async def stop(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.server is not None:
            self.server.close()


class FakeApi:
    """The gateway's HTTP API in a thread: records requests and answers POST with ``post_status``."""

    def __init__(self, post_status: int = 201) -> None:
        self.requests: list[tuple[str, str, dict[str, object]]] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _record(self, status: int) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                api.requests.append((self.command, self.path, json.loads(body)))
                reply = b"{}"
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def do_POST(self) -> None:
                self._record(api.post_status)

            def do_PATCH(self) -> None:
                self._record(200)

            def log_message(self, format: str, *args: object) -> None:
                return None

        self.post_status = post_status
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def api() -> Iterator[FakeApi]:
    with FakeApi() as fake:
        yield fake


@pytest.fixture
async def netconsole() -> AsyncIterator[FakeNetconsole]:
    console = FakeNetconsole()
    await console.start()
    try:
        yield console
    finally:
        await console.stop()


# -- the vPDU server ---------------------------------------------------------------------------


async def test_port_count_and_switching(pdu: tuple[VirtualPDU, int]) -> None:
    vpdu, port = pdu
    assert await ask(port, make_word(0)) == 16
    for outlet in (0, 5, 15):
        assert await ask(port, make_word(3, outlet)) == 0x04
        assert await ask(port, make_word(1, outlet)) == 0x01
        assert await ask(port, make_word(1, outlet)) == 0x01  # already ON: still a success
        assert await ask(port, make_word(3, outlet)) == 0x03
        assert vpdu.state(outlet)
    assert sorted(vpdu.running_duts) == [0, 5, 15]
    assert await ask(port, make_word(3, 1)) == 0x04
    for outlet in (0, 5, 15):
        assert await ask(port, make_word(2, outlet)) == 0x01
        assert await ask(port, make_word(2, outlet)) == 0x01
        assert await ask(port, make_word(3, outlet)) == 0x04
        assert not vpdu.state(outlet)
    assert vpdu.running_duts == {}


async def test_bad_words_answer_zero_and_the_server_keeps_going(pdu: tuple[VirtualPDU, int]) -> None:
    vpdu, port = pdu
    assert await ask(port, (1 << 14) | make_word(1, 2)) == 0x00  # reserved bit set
    assert await ask(port, 0xFFFFFFFF) == 0x00
    assert not vpdu.state(2)
    assert await ask(port, make_word(0)) == 16
    assert await ask(port, make_word(3, 16)) == 0x00  # outlet out of range
    assert await ask(port, make_word(1, 2047)) == 0x00
    assert await ask(port, 0x2000) == 0x00  # remote shutdown is refused by default
    assert await ask(port, make_word(3, 4)) == 0x04

    def short_read() -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"\x00\x01")
            sock.shutdown(socket.SHUT_WR)
            return sock.recv(1)

    assert await asyncio.to_thread(short_read) == b"\x00"
    assert await ask(port, make_word(0)) == 16


async def test_remote_shutdown_when_allowed() -> None:
    vpdu = VirtualPDU(num_ports=4, allow_remote_shutdown=True)
    port = await vpdu.start("127.0.0.1", 0)
    try:
        assert await ask(port, 0x2000 | make_word(0)) == 4
        await asyncio.wait_for(vpdu.wait_stopped(), 3)
        with pytest.raises(OSError):
            await ask(port, make_word(0))
    finally:
        await vpdu.stop()


async def test_an_unknown_dut_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown DUT kind 'kvm'"):
        VirtualPDU(dut="kvm")


async def test_a_dut_that_exits_by_itself_leaves_the_outlet_on(caplog: pytest.LogCaptureFixture) -> None:
    vpdu = VirtualPDU(num_ports=2, dut_args=("--not-an-option",))  # dut.py exits at once (usage)
    port = await vpdu.start("127.0.0.1", 0)
    try:
        await vpdu.set_outlet(1, True)
        await eventually(lambda: not vpdu.running_duts, what="the DUT to exit")
        await eventually(lambda: "exited by itself" in caplog.text, what="the log line")
        assert vpdu.state(1)
        assert await ask(port, make_word(3, 1)) == 0x03
        assert await ask(port, make_word(2, 1)) == 0x01
        assert not vpdu.state(1)
    finally:
        await vpdu.stop()


async def test_vpdu_command_line() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(VPDU), "--port", "0", "--num-ports", "3", stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode()  # type: ignore[union-attr]
        assert line.startswith("vPDU listening on 127.0.0.1:") and line.endswith(" with 3 outlets\n")
        port = int(line.split(":")[1].split()[0])
        assert await ask(port, make_word(0)) == 3
        busy = await asyncio.create_subprocess_exec(
            sys.executable, str(VPDU), "--port", str(port), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        _, err = await asyncio.wait_for(busy.communicate(), 10)
        assert busy.returncode == 2
        assert "Address already in use" in err.decode()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0


# -- vivian/client.py ----------------------------------------------------------------------------


async def test_client_switches_and_reports(pdu: tuple[VirtualPDU, int]) -> None:
    vpdu, port = pdu
    assert await run_client("--host", "127.0.0.1", "--port", str(port), "--outlet", "3", "--on") == (0, "", "")
    assert vpdu.state(3)

    rc, out, _ = await run_client("--host", "127.0.0.1", "--port", str(port), "--status")
    assert rc == 0
    lines = out.splitlines()
    assert len(lines) == 16
    assert lines[3] == "Outlet   3: ON"
    assert all(line == f"Outlet {i:3d}: OFF" for i, line in enumerate(lines) if i != 3)

    rc, out, _ = await run_client("--host", "127.0.0.1", "--port", str(port), "--outlet", "3", "--status")
    assert (rc, out) == (0, "Outlet   3: ON\n")

    assert (await run_client("--host", "127.0.0.1", "--port", str(port), "--all", "--off"))[0] == 0
    assert not any(vpdu.state(i) for i in range(16))

    rc, _, err = await run_client("--host", "127.0.0.1", "--port", str(port), "--outlet", "16", "--on")
    assert rc == 1 and "out of range" in err


async def test_client_reports_an_unreachable_vpdu() -> None:
    rc, out, err = await run_client("--host", "127.0.0.1", "--port", str(free_port()), "--status")
    assert rc == 1
    assert out == ""
    assert "unreachable" in err and "Connection refused" in err


# -- the simulated DUT ---------------------------------------------------------------------------


async def test_outlet_on_boots_a_dut_that_registers(netconsole: FakeNetconsole, api: FakeApi) -> None:
    vpdu = VirtualPDU(api=api.url, console=f"127.0.0.1:{netconsole.port}", dut_args=("--boot-delay=0",))
    await vpdu.start("127.0.0.1", 0)
    try:
        await vpdu.set_outlet(3, True)
        pid = vpdu.running_duts[3].pid
        await eventually(lambda: "MaRS: Registration complete" in netconsole.text, what="registration")
        await eventually(lambda: netconsole.text.endswith("/ # "), what="the prompt")
        text = netconsole.text
        assert f"SALAD.machine_id={MAC3}" in text
        assert "\r\nSALAD.ping\r\n" in text
        assert f"console=ttyS1,115200 SALAD.machine_id={MAC3}" in text
        assert "\x1b[0;32mOK\x1b[0m" in text
        assert "[    0.000000] Linux version" in text
        # serial-style line ends, except machine_registration's own line (written raw: valve-infra's
        # "^MaRS: Registration complete$" pattern, see tests/unit/test_jobs.py)
        assert "\n" not in text.replace("\r\n", "").replace("MaRS: Registration complete\n", "")
        assert text.index("SALAD.ping") < text.rindex(f"SALAD.machine_id={MAC3}") < text.index("MaRS:")

        assert len(api.requests) == 1
        method, path, body = api.requests[0]
        assert (method, path) == ("POST", "/api/v1/machine/")
        assert body == {
            "base_name": "virtio",
            "tags": ["virtio:pciid:0x1af4:0x1050", "virtio:family:VIRTIO"],
            "mac_address": MAC3,
            "ip_address": "10.42.0.13",
            "local_tty_device": "ttyS1",
        }

        mark = len(netconsole.data)
        netconsole.send(b"echo hello\r")
        await eventually(lambda: netconsole.text[mark:].endswith("/ # "), what="the echo answer")
        assert netconsole.text[mark:] == "echo hello\r\nhello\r\n/ # "

        mark = len(netconsole.data)
        netconsole.send(b"SALAD.pong\nfrobnicate\r\n")
        await eventually(lambda: netconsole.text[mark:].endswith("/ # "), what="the shell answer")
        assert netconsole.text[mark:] == "frobnicate\r\nsh: frobnicate: not found\r\n/ # "

        await vpdu.set_outlet(3, False)
        assert 3 not in vpdu.running_duts
        assert not pid_alive(pid)
    finally:
        await vpdu.stop()


async def test_dut_without_pong_still_registers_and_falls_back_to_patch() -> None:
    console = FakeNetconsole(answer_pings=False)
    console_port = await console.start()
    with FakeApi(post_status=400) as api:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(DUT),
            "--mac",
            "52:54:00:11:22:0a",
            "--api",
            api.url,
            "--console",
            f"127.0.0.1:{console_port}",
            "--boot-delay=0",
            "--ip",
            "10.0.0.7",
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            await eventually(lambda: "MaRS:" in console.text, what="the registration result")
            assert "The configured console is not connected to SALAD" in console.text
            assert "MaRS: Registration complete" in console.text
            assert [(m, p) for m, p, _ in api.requests] == [
                ("POST", "/api/v1/machine/"),
                ("PATCH", "/api/v1/machine/52:54:00:11:22:0a/"),
            ]
            assert api.requests[1][2]["ip_address"] == "10.0.0.7"
            assert api.requests[1][2]["local_tty_device"] == "ttyS1"
            assert proc.returncode is None
        finally:
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 5) == 0
            await console.stop()
        assert proc.stderr is not None
        assert b"Traceback" not in await proc.stderr.read()


async def test_chatty_dut_streams_at_about_the_requested_rate() -> None:
    console = FakeNetconsole()
    console_port = await console.start()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(DUT),
        "--mac",
        MAC3,
        "--api",
        "http://127.0.0.1:9",
        "--console",
        f"127.0.0.1:{console_port}",
        "--boot-delay=0",
        "--no-register",
        "--chatty",
        "20000",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        await eventually(lambda: "/ # " in console.text, what="the prompt")
        start = len(console.data)
        await asyncio.sleep(1.0)
        streamed = len(console.data) - start
        assert 5000 < streamed < 40000  # loose: this is a behaviour check, not a benchmark
        assert "vivian: periodic status" in console.text
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 5) == 0
        await console.stop()


# -- the gateway's vpdu driver -----------------------------------------------------------------


async def test_driver_against_the_real_vpdu(pdu: tuple[VirtualPDU, int]) -> None:
    vpdu, port = pdu
    driver = create_driver("vpdu", {"hostname": f"127.0.0.1:{port}"})
    try:
        outlets = await driver.ports()
        assert [o.port_id for o in outlets] == [str(i) for i in range(16)]
        assert outlets[4].label == "outlet 4"
        assert await driver.get("4") == PortState.OFF
        await driver.set("4", PortState.ON)
        assert await driver.get("4") == PortState.ON
        assert vpdu.state(4)
        await driver.set("4", PortState.OFF)
        assert await driver.get("4") == PortState.OFF
        await driver.set("7", PortState.REBOOT)
        assert await driver.get("7") == PortState.ON
        for bad in ("16", "abc", "-1", ""):
            with pytest.raises(DriverError):
                await driver.get(bad)
    finally:
        await driver.close()


async def test_driver_errors_are_quick_and_readable() -> None:
    port = free_port()
    driver = create_driver("vpdu", {"hostname": f"127.0.0.1:{port}", "timeout": 0.5})
    started = time.monotonic()
    with pytest.raises(DriverError, match=f"vPDU at 127.0.0.1:{port} is unreachable: Connection refused"):
        await driver.ports()
    assert time.monotonic() - started < 2

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(4)
        await asyncio.sleep(2)
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    try:
        mute = create_driver("vpdu", {"hostname": f"127.0.0.1:{server.sockets[0].getsockname()[1]}", "timeout": 0.3})
        with pytest.raises(DriverError, match="did not answer"):
            await mute.get("0")
    finally:
        server.close()


@pytest.mark.parametrize(
    "config",
    [
        {"hostname": "localhost"},
        {"hostname": "localhost:0"},
        {"hostname": "localhost:70000"},
        {"hostname": ":9191"},
        {"hostname": "localhost:9191", "timeout": 0},
        {"hostname": "localhost:9191", "timeout": 61},
        {"hostname": "localhost:9191", "port": 3},
    ],
)
def test_driver_config_is_validated(config: dict[str, object]) -> None:
    with pytest.raises(DriverConfigError, match="invalid config for driver 'vpdu'"):
        create_driver("vpdu", config)


def test_driver_config_defaults() -> None:
    driver = create_driver("vpdu", {})
    assert driver.name == "vpdu"
    assert isinstance(driver, VpduDriver)
    assert driver.hostname == "localhost:9191"
