"""Remote consoles: a pty served by a real ser2net, over raw TCP and Telnet/RFC 2217, both directions."""

from __future__ import annotations

import asyncio
import termios

import pytest

from tests.consoles.conftest import need_ser2net, wait_for

MAC = "52:54:00:11:22:0e"
pytestmark = need_ser2net


async def register(sf, mac=MAC):
    r = await sf.http.post("/api/v1/machine/", json={"base_name": "r", "mac_address": mac, "ip_address": "10.0.2.1"})
    assert r.status_code in (200, 201), r.text


async def connected_via(sf, url):
    c = (await sf.consoles())["consoles"].get(MAC)
    return c if c and c["connected"] and c["source"] == url else None


async def test_raw_tcp_from_ser2net_both_ways_and_back_after_it_restarts(serial_farm, ptys, ser2nets):
    pty = ptys()
    server = ser2nets(raw_device=pty.path)
    await serial_farm.start()
    await register(serial_farm)
    url = f"tcp://127.0.0.1:{server.raw_port}"
    r = await serial_farm.http.put(f"/api/v1/console/{MAC}/source", json={"url": url})
    assert r.status_code == 200 and r.json()["remote"] == url, r.text
    await wait_for(lambda: connected_via(serial_farm, url), what="connected to ser2net")
    await wait_for(lambda: pty_opened(pty), what="ser2net opened the tty")

    await pty.write(b"\x00\xfcU-Boot via ser2net\r\n\xff\xfe binary\r\n")
    console = serial_farm.hub.consoles[MAC]
    await wait_for(lambda: b"binary" in console.contents())
    assert b"U-Boot via ser2net\r\n\xff\xfe binary" in console.contents()
    r = await serial_farm.http.post(f"/api/v1/console/{MAC}/input", json={"data": "help\r"})
    assert r.status_code == 200, r.text
    await pty.read_until(b"help\r")
    await pty.write(b"SALAD.ping\r\n")  # answered on TCP streams too
    await pty.read_until(b"SALAD.pong\n")

    # ser2net goes away: the console says so; it comes back: the hub reconnects by itself.
    server.stop()
    await wait_for(lambda: not serial_farm.hub.consoles[MAC].stream, what="disconnected")
    server.start()
    await wait_for(lambda: connected_via(serial_farm, url), timeout=10, what="reconnected")
    await wait_for(lambda: pty_opened(pty), what="ser2net reopened the tty")
    await pty.write(b"after ser2net restart\r\n")
    await wait_for(lambda: b"after ser2net restart" in console.contents())

    r = await serial_farm.http.put(f"/api/v1/console/{MAC}/source", json={"url": None})
    assert r.json()["remote"] is None and r.json()["connected"] is False


async def test_rfc2217_sets_the_baud_rate_and_keeps_0xff_intact(serial_farm, ptys, ser2nets):
    pty = ptys()
    server = ser2nets(rfc2217_device=pty.path)
    await serial_farm.start()
    await register(serial_farm)
    url = f"rfc2217://127.0.0.1:{server.rfc2217_port}?baud=9600"
    r = await serial_farm.http.put(f"/api/v1/console/{MAC}/source", json={"url": url})
    assert r.status_code == 200, r.text
    await wait_for(lambda: connected_via(serial_farm, url), what="connected over RFC 2217")
    # The COM-PORT option reached ser2net, which set the tty to 9600 baud.
    await wait_for(lambda: termios.tcgetattr(pty.slave)[4] == termios.B9600, what="9600 baud on the tty")

    await pty.write(b"IAC in data: \xff\xff\xfb\x01 end\r\n")
    console = serial_farm.hub.consoles[MAC]
    await wait_for(lambda: b" end\r\n" in console.contents())
    assert b"IAC in data: \xff\xff\xfb\x01 end\r\n" in console.contents()  # exactly the device's bytes
    # Raw 0xFF typed on the machine's TCP port reaches the device once (doubled on the Telnet wire only).
    reader, writer = await asyncio.open_connection("127.0.0.1", console.tcp_port)
    writer.write(b"x\xff\xffy\r")
    await writer.drain()
    await pty.read_until(b"x\xff\xffy\r")
    writer.close()

    # The source is stored: after a restart the machine's console reconnects on its own.
    await serial_farm.stop()
    await serial_farm.start()
    await wait_for(lambda: connected_via(serial_farm, url), what="reconnected after restart")
    await wait_for(lambda: pty_opened(pty), what="ser2net reopened the tty")
    await pty.write(b"still here\r\n")
    await wait_for(lambda: b"still here" in serial_farm.hub.consoles[MAC].contents())


@pytest.mark.parametrize(
    "url, words",
    [
        ("ftp://127.0.0.1:21", "use tcp://HOST:PORT or rfc2217://HOST:PORT"),
        ("tcp://127.0.0.1", "the port is missing"),
        ("tcp://:2000", "the host is missing"),
        ("tcp://127.0.0.1:99999", "Port out of range"),
        ("rfc2217://127.0.0.1:2000?speed=9600", "unknown option 'speed'"),
        ("rfc2217://127.0.0.1:2000?baud=fast", "is not a number"),
        ("tcp://127.0.0.1:2000/path", "has no path"),
        ("tcp://user:pw@127.0.0.1:2000", "no user or password"),
        ("tcp://127.0.0.1:2000 x", "printable characters"),
    ],
)
async def test_bad_source_urls_are_refused_in_words(serial_farm, url, words):
    await serial_farm.start()
    await register(serial_farm)
    r = await serial_farm.http.put(f"/api/v1/console/{MAC}/source", json={"url": url})
    assert r.status_code == 400 and words in r.json()["error"], r.text
    assert (await serial_farm.consoles())["consoles"][MAC]["remote"] is None


def pty_opened(pty) -> bool:
    """ser2net opens the tty when a client connects; bytes written before that are flushed by it."""
    import os
    import subprocess

    out = subprocess.run(["fuser", pty.path], capture_output=True, text=True) if _has_fuser() else None
    if out is None:
        return True
    pids = {int(p) for p in out.stdout.split()}
    return any(pid != os.getpid() for pid in pids)


def _has_fuser() -> bool:
    import shutil

    return shutil.which("fuser") is not None
