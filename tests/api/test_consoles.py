"""The netconsole: association by SALAD markers, ping/pong, buffer, log, input, streams."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from tests.conftest import api_url

MAC = "52:54:00:11:22:07"


@pytest.fixture
async def http(farm):
    async with httpx.AsyncClient(base_url=api_url(farm), headers={"Authorization": f"Bearer {farm.token}"}) as c:
        yield c


async def dut_console(farm):
    return await asyncio.open_connection(*farm.netconsole_address)


async def wait_for(predicate, timeout=5.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        result = await predicate()
        if result:
            return result
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


async def test_marker_binds_stream_and_ping_is_answered(farm, http):
    reader, writer = await dut_console(farm)
    writer.write(b"SeaBIOS (version 1.16)\r\niPXE booting\r\nSALAD.machine_id=52-54-00-11-22-07\r\n")
    writer.write(b"\x00\xfcjunk SALAD.ping\r\n")
    await writer.drain()
    assert await asyncio.wait_for(reader.readline(), 5) == b"SALAD.pong\n"

    async def bound():
        consoles = (await http.get("/api/v1/consoles")).json()["consoles"]
        return consoles.get(MAC, {}).get("connected") and consoles[MAC]

    info = await wait_for(bound)
    assert info["source"].startswith("netconsole@127.0.0.1:")
    log = (await http.get(f"/api/v1/console/{MAC}/log")).text
    # Lines before the marker are kept too: the console starts at the stream's beginning.
    assert "SeaBIOS (version 1.16)" in log and "SALAD.machine_id=" in log
    assert (farm.settings.data_dir / "consoles" / f"{MAC}.log").read_bytes().startswith(b"SeaBIOS")

    # Input typed by the operator reaches the DUT.
    r = await http.post(f"/api/v1/console/{MAC}/input", json={"data": "uname -a\r"})
    assert r.json() == {"written": 9}
    assert await asyncio.wait_for(reader.readexactly(9), 5) == b"uname -a\r"

    writer.close()
    await wait_for(lambda: _not_connected(http))
    r = await http.post(f"/api/v1/console/{MAC}/input", json={"data": "x"})
    assert r.status_code == 409 and "not connected" in r.json()["error"]


async def _not_connected(http):
    return not (await http.get("/api/v1/consoles")).json()["consoles"][MAC]["connected"]


async def test_console_events_and_stream(farm, http):
    sub = farm.bus.subscribe(["console"])
    reader, writer = await dut_console(farm)
    writer.write(f"SALAD.machine_id={MAC}\n".encode())
    await writer.drain()
    await wait_for(lambda: _connected(http))

    # a console stream carries secrets (share keys, what the operator types): the operator's token
    async with httpx.AsyncClient(base_url=api_url(farm), headers={"Authorization": f"Bearer {farm.token}"}) as viewer:
        async with viewer.stream("GET", f"/api/v1/console/{MAC}/stream") as stream:
            writer.write(b"\x1b[0;32mOK\x1b[0m hello from the DUT\r\n")
            await writer.drain()
            text = ""
            async for line in stream.aiter_lines():
                if line.startswith("data:"):
                    text += json.loads(line[5:])["text"]
                    if "hello from the DUT" in text:
                        break
    assert "\x1b[0;32mOK" in text  # stored and streamed raw; sanitising is the viewer's job
    events = []
    for _ in range(40):
        events += [e for e in await sub.get_batch(timeout=0.1) if e.data.get("text")]
        if any("hello from the DUT" in e.data["text"] for e in events):
            break
    assert any("hello from the DUT" in e.data["text"] for e in events)
    sub.close()
    writer.close()


async def _connected(http):
    return (await http.get("/api/v1/consoles")).json()["consoles"].get(MAC, {}).get("connected")


async def test_hostile_bytes_are_contained(farm, http):
    reader, writer = await dut_console(farm)
    writer.write(f"SALAD.machine_id={MAC}\n".encode())
    writer.write(bytes(range(256)) * 64)  # binary garbage
    writer.write(b"A" * (1024 * 1024))  # 1 MiB without a newline
    writer.write(b"\xff\xfe invalid utf-8 \x1b]0;pwned title\x07 and \x1bP dcs \x1b\\ end\n")
    writer.write(b"SALAD.ping\n")
    await writer.drain()
    assert await asyncio.wait_for(reader.readline(), 10) == b"SALAD.pong\n"
    console = farm.consoles.consoles[MAC]
    assert console.total > 1024 * 1024
    raw = (await http.get(f"/api/v1/console/{MAC}/log", params={"raw": "true"})).content
    assert b"\x1b]0;pwned title\x07" in raw  # stored raw
    assert (await http.get("/api/v1/health")).json()["status"] == "ok"
    writer.close()


async def test_ring_buffer_is_bounded(farm):
    from valve_console.backend.consoles import Console, RotatingLog

    log = RotatingLog(farm.settings.data_dir / "x.log", max_bytes=10_000, backups=2)
    console = Console("02:00:00:00:00:09", ring_bytes=4096, logfile=log)
    for i in range(3000):
        console.feed(f"line {i}\n".encode())
    assert len(console.contents()) <= 4096
    assert console.contents().endswith(b"line 2999\n")
    console.feed(b"x" * 100_000)
    assert len(console.contents()) == 4096
    log.close()
    sizes = sorted(p.name for p in log.path.parent.glob("x.log*"))
    assert sizes == ["x.log", "x.log.1", "x.log.2"]
    assert all(p.stat().st_size <= 100_000 for p in log.path.parent.glob("x.log*"))


async def test_an_idle_api_writer_is_let_go_with_an_event(farm, http):
    reader, writer = await dut_console(farm)
    writer.write(f"SALAD.machine_id={MAC}\n".encode())
    await writer.drain()
    await wait_for(lambda: _connected(http))
    farm.consoles.consoles[MAC].api_writer_timeout = 0.3
    sub = farm.bus.subscribe(["console"])
    r = await http.post(f"/api/v1/console/{MAC}/input", json={"data": "x", "writer": "alice"})
    assert r.status_code == 200
    seen = []
    for _ in range(40):
        seen += [e.data["console"]["writer"] for e in await sub.get_batch(timeout=0.1) if "console" in e.data]
        if seen and seen[-1] is None and "api:alice" in seen:
            break
    sub.close()
    assert "api:alice" in seen and seen[-1] is None  # taken, then released by the idle timeout
    writer.close()
