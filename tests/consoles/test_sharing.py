"""Sharing a console: a fixed TCP port per machine, any number of viewers, one writer at a time."""

from __future__ import annotations

import asyncio
import socket

import pytest

from tests.consoles.conftest import SerialFarm, device, device_open, free_port, wait_for

MAC = "52:54:00:11:22:0c"
REFUSAL = (
    b"valve-console: 52:54:00:11:22:0c already has a writer (tcp:127.0.0.1:%d); send Ctrl-] then t to take over\r\n"
)


async def bound_pty_farm(serial_farm, ptys, **overrides):
    serial_farm.overrides.update(overrides)
    pty = ptys()
    await serial_farm.start([device(pty.path, serial="SHARE")])
    await device_open(serial_farm.hub, "SHARE-if00")
    await pty.write(f"SALAD.machine_id={MAC}\r\n".encode())
    await wait_for(lambda: MAC in serial_farm.hub.consoles and serial_farm.hub.consoles[MAC].stream, what="bound")
    port = await wait_for(lambda: serial_farm.hub.consoles[MAC].tcp_port, what="tcp port")
    return pty, port


async def connect(port):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    return reader, writer, writer.get_extra_info("sockname")[1]


async def info(sf):
    return (await sf.consoles())["consoles"][MAC]


async def test_many_viewers_one_writer_and_takeover(serial_farm, ptys):
    pty, port = await bound_pty_farm(serial_farm, ptys)
    viewers = [await connect(port) for _ in range(5)]
    await wait_for(lambda: len(serial_farm.hub.consoles[MAC].viewers) == 5, what="5 viewers")
    await pty.write(b"Debian GNU/Linux 12 dut ttyS0\r\ndut login: ")
    for reader, _, _ in viewers:
        assert (await asyncio.wait_for(reader.readuntil(b"login: "), 5)).endswith(b"dut login: ")
    listed = await info(serial_farm)
    assert listed["viewers"] == 5 and listed["writer"] is None and listed["tcp_port"] == port

    (ra, wa, pa), (rb, wb, pb) = viewers[0], viewers[1]
    wa.write(b"root\r")  # A types first: A is the writer
    await pty.read_until(b"root\r")
    assert (await info(serial_farm))["writer"] == f"tcp:127.0.0.1:{pa}"

    wb.write(b"reboot\r")  # B is refused, in one line, and its bytes never reach the DUT
    assert await asyncio.wait_for(rb.readline(), 5) == REFUSAL % pa
    wa.write(b"id\r")
    got = await pty.read_until(b"id\r")
    assert b"reboot" not in got

    wb.write(b"\x1d")  # Ctrl-] then t, even split across packets, takes write over
    await wb.drain()
    await asyncio.sleep(0.05)
    wb.write(b"tuptime\r")
    await pty.read_until(b"uptime\r")
    assert b"took over write access" in await asyncio.wait_for(ra.readuntil(b"read-only now\r\n"), 5)
    assert b"you now hold write access to" in await asyncio.wait_for(rb.readuntil(MAC.encode() + b"\r\n"), 5)
    assert (await info(serial_farm))["writer"] == f"tcp:127.0.0.1:{pb}"
    wa.write(b"x")
    assert b"already has a writer (tcp:127.0.0.1:%d)" % pb in await asyncio.wait_for(ra.readuntil(b"take over\r\n"), 5)

    # The API follows the same rules: 409 while B writes, unless it takes over (then B is told).
    http = serial_farm.http
    r = await http.post(f"/api/v1/console/{MAC}/input", json={"data": "ls\r", "writer": "tui-1"})
    assert r.status_code == 409 and f"already has a writer (tcp:127.0.0.1:{pb})" in r.json()["error"]
    r = await http.post(f"/api/v1/console/{MAC}/input", json={"data": "ls\r", "writer": "tui-1", "takeover": True})
    assert r.status_code == 200 and r.json() == {"written": 3}
    await pty.read_until(b"ls\r")
    assert b"api:tui-1 took over" in await asyncio.wait_for(rb.readuntil(b"read-only now\r\n"), 5)
    wb.write(b"y")
    assert b"already has a writer (api:tui-1)" in await asyncio.wait_for(rb.readuntil(b"take over\r\n"), 5)
    # Another API client (or the anonymous one) is refused too; the holder releases it with DELETE.
    r = await http.post(f"/api/v1/console/{MAC}/input", json={"data": "ls\r"})
    assert r.status_code == 409 and "(api:tui-1)" in r.json()["error"]
    r = await http.delete(f"/api/v1/console/{MAC}/writer", params={"writer": "someone-else"})
    assert r.json() == {"released": False, "writer": "api:tui-1"}
    r = await http.delete(f"/api/v1/console/{MAC}/writer", params={"writer": "tui-1"})
    assert r.json() == {"released": True, "writer": None}
    wb.write(b"w\r")
    await pty.read_until(b"w\r")
    assert (await info(serial_farm))["writer"] == f"tcp:127.0.0.1:{pb}"

    # A writer's connection closing lets write go.
    wb.close()
    await wait_for(lambda: serial_farm.hub.consoles[MAC].writer is None, what="writer released")
    r = await http.post(f"/api/v1/console/{MAC}/input", json={"data": "free\r"})
    assert r.status_code == 200
    for _, w, _ in viewers:
        w.close()
    await wait_for(lambda: not serial_farm.hub.consoles[MAC].viewers, what="viewers gone")
    assert (await info(serial_farm))["viewers"] == 0


async def test_an_idle_api_writer_is_let_go(serial_farm, ptys):
    pty, port = await bound_pty_farm(serial_farm, ptys, console_api_writer_timeout=0.3)
    http = serial_farm.http
    assert (await http.post(f"/api/v1/console/{MAC}/input", json={"data": "a", "writer": "w1"})).status_code == 200
    assert (await http.post(f"/api/v1/console/{MAC}/input", json={"data": "b", "writer": "w2"})).status_code == 409
    await asyncio.sleep(0.4)
    assert (await info(serial_farm))["writer"] is None
    reader, writer, _ = await connect(port)
    writer.write(b"c")
    await pty.read_until(b"c")  # nobody holds write any more: a TCP client may type
    writer.close()


async def test_fixed_ports_per_machine_survive_restarts_and_are_never_reused(tmp_path):
    base = None
    for _ in range(50):  # find 3 consecutive free ports
        candidate = free_port()
        if candidate + 3 > 65535:
            continue
        try:
            for p in range(candidate, candidate + 3):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
            base = candidate
            break
        except OSError:
            continue
    if base is None:
        pytest.skip("no 3 consecutive free loopback ports")
    sf = SerialFarm(tmp_path / "data", console_tcp_base=base)
    try:
        await sf.start()
        for mac in ("02:00:00:00:01:01", "02:00:00:00:01:02"):
            await announce(sf, mac)  # a machine's console (and its port) appears with its first words
        consoles = await wait_for(lambda: _ports(sf, 2), what="two ports")
        assert consoles == {"02:00:00:00:01:01": base, "02:00:00:00:01:02": base + 1}
        reader, writer = await asyncio.open_connection("127.0.0.1", base + 1)  # nc/telnet works
        writer.close()
        await sf.stop()

        await sf.start()
        assert await wait_for(lambda: _ports(sf, 2)) == {"02:00:00:00:01:01": base, "02:00:00:00:01:02": base + 1}
        # A registered machine gets its console as soon as the operator (or the TUI) asks for it.
        await sf.http.post(
            "/api/v1/machine/", json={"base_name": "b", "mac_address": "02:00:00:00:01:03", "ip_address": "10.0.1.3"}
        )
        r = await sf.http.put("/api/v1/console/02:00:00:00:01:03/device", json={"device": None})
        assert r.status_code == 200, r.text
        assert (await wait_for(lambda: _ports(sf, 3)))["02:00:00:00:01:03"] == base + 2
        listed = (await sf.consoles())["consoles"]["02:00:00:00:01:03"]
        assert listed["tcp_host"] == "127.0.0.1" and listed["tcp_error"] is None
    finally:
        await sf.stop()


async def announce(sf, mac):
    reader, writer = await asyncio.open_connection(*sf.farm.netconsole_address)
    writer.write(f"SALAD.machine_id={mac}\n".encode())
    await writer.drain()
    await wait_for(lambda: mac in sf.hub.consoles, what=f"console of {mac}")
    writer.close()


async def _ports(sf, n):
    consoles = (await sf.consoles())["consoles"]
    ports = {mac: c["tcp_port"] for mac, c in consoles.items() if c["tcp_port"]}
    return ports if len(ports) >= n else None


async def test_a_slow_tcp_viewer_does_not_block_the_others(serial_farm, ptys):
    pty, port = await bound_pty_farm(serial_farm, ptys)
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(("127.0.0.1", port))
    fast_reader, fast_writer, _ = await connect(port)
    await wait_for(lambda: len(serial_farm.hub.consoles[MAC].viewers) == 2, what="2 viewers")

    total = 16 * 1024 * 1024
    line = b"x" * 1023 + b"\n"
    received = 0

    async def read_fast():
        nonlocal received
        while received < total:
            chunk = await fast_reader.read(1 << 20)
            if not chunk:
                break
            received += len(chunk)

    reading = asyncio.create_task(read_fast())
    for _ in range(total // len(line) // 256):
        await pty.write(line * 256)
    await asyncio.wait_for(reading, 20)
    assert received == total  # the fast viewer got every byte although the slow one read nothing

    viewer = next(
        v
        for v in serial_farm.hub.consoles[MAC].viewers
        if v.transport.get_extra_info("peername")[1] == slow.getsockname()[1]
    )
    assert viewer.dropped > 0 or viewer.paused
    assert viewer.transport.get_write_buffer_size() <= 256 * 1024 + 65536  # bounded
    # When the slow viewer catches up it is told how much it lost.
    slow.setblocking(False)
    seen = b""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    await pty.write(b"tail\n")
    while b"bytes dropped]" not in seen and loop.time() < deadline:
        try:
            seen = (seen + slow.recv(1 << 20))[-4096:]
        except BlockingIOError:
            await asyncio.sleep(0.01)
            if viewer.dropped and not viewer.paused:
                await pty.write(b".")
    assert b"[valve-console: " in seen and b"bytes dropped]" in seen
    slow.close()
    fast_writer.close()
