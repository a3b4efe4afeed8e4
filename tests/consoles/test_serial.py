"""Serial consoles over real ptys and socat pairs: association, ping/pong, hotplug, restarts, hostile bytes."""

from __future__ import annotations

import asyncio
import os
import termios

from tests.consoles.conftest import device, device_open, need_socat, wait_for

MAC = "52:54:00:11:22:0a"
MAC2 = "52:54:00:11:22:0b"


async def test_marker_on_a_pty_binds_the_device_at_its_baud(serial_farm, ptys):
    pty = ptys()
    farm = await serial_farm.start()
    serial_farm.source.add(device(pty.path, baud=9600))
    await device_open(farm.consoles, "FAKE0001-if00")
    # Adapters emit garbage first; serial lines end in \r\n.
    await pty.write(b"\x00\xfc\x00U-Boot 2024.01\r\nbooting...\r\n\x00\xfcSALAD.machine_id=52-54-00-11-22-0A\r\n")

    info = await wait_for(lambda: connected(serial_farm, MAC), what="bound")
    assert info["source"] == "serial:FAKE0001-if00"
    assert info["device"] == "FAKE0001-if00"
    assert info["baud"] == 9600
    # A pty ignores the baud rate, so check what the port was configured with, and what the tty reads back.
    link = farm.consoles.devices["FAKE0001-if00"].link
    assert link.serial.baudrate == 9600
    assert termios.tcgetattr(pty.slave)[4] == termios.B9600
    log = (await serial_farm.http.get(f"/api/v1/console/{MAC}/log")).text
    assert "U-Boot 2024.01" in log and "booting..." in log  # bytes before the marker belong to the console
    devices = (await serial_farm.consoles())["devices"]
    assert devices["FAKE0001-if00"]["machine"] == MAC and devices["FAKE0001-if00"]["devnode"] == pty.path

    # Input typed through the API reaches the DUT's end of the line.
    r = await serial_farm.http.post(f"/api/v1/console/{MAC}/input", json={"data": "root\r"})
    assert r.status_code == 200, r.text
    await pty.read_until(b"root\r")


async def test_ping_is_answered_on_a_pty_after_garbage(serial_farm, ptys):
    pty = ptys()
    await serial_farm.start([device(pty.path)])
    await device_open(serial_farm.hub, "FAKE0001-if00")
    # As valve-infra's registration script probes each port: "\nSALAD.ping\n", and the line may start with junk.
    await pty.write(b"\x00\x00\xfc\xff\nSALAD.ping\r\n")
    assert (await pty.read_until(b"SALAD.pong\n")).endswith(b"SALAD.pong\n")
    # Split across writes, and unbound: still answered.
    await pty.write(b"\x00\xfcSALAD.pi")
    await asyncio.sleep(0.05)
    await pty.write(b"ng\n")
    await pty.read_until(b"SALAD.pong\n")


@need_socat
async def test_hotplug_keeps_the_machine_console_across_the_gap(serial_farm, socat_pairs):
    pair = socat_pairs("usb")
    await serial_farm.start()
    info = device(pair.a, serial="A1B2C3")
    serial_farm.source.add(info)
    await device_open(serial_farm.hub, "A1B2C3-if00")
    await pair.dut.write(f"SALAD.machine_id={MAC}\r\nbefore the gap\r\n".encode())
    await wait_for(lambda: connected(serial_farm, MAC), what="bound")
    await wait_for(lambda: b"before the gap" in serial_farm.hub.consoles[MAC].contents())

    # Unplug: socat goes away (its ptys hang up), then the source reports the removal.
    pair.stop()
    await wait_for(lambda: disconnected(serial_farm, MAC), what="disconnected")
    serial_farm.source.remove(info)
    assert (await serial_farm.consoles())["consoles"][MAC]["device"] == "A1B2C3-if00"  # the binding stays

    # Plug back in (same adapter, a new pty underneath): no marker needed, the console carries on.
    pair.start()
    serial_farm.source.add(info)
    await wait_for(lambda: connected(serial_farm, MAC), what="reconnected")
    await pair.dut.write(b"after the gap\r\n")
    console = serial_farm.hub.consoles[MAC]
    await wait_for(lambda: b"after the gap" in console.contents())
    ring = console.contents()
    assert ring.index(b"before the gap") < ring.index(b"after the gap")
    await wait_for(lambda: b"after the gap" in console.log.path.read_bytes())
    logged = console.log.path.read_bytes()
    assert b"before the gap" in logged and b"after the gap" in logged
    # Typing still reaches the (new) device.
    r = await serial_farm.http.post(f"/api/v1/console/{MAC}/input", json={"data": "ls\r"})
    assert r.status_code == 200, r.text
    await pair.dut.read_until(b"ls\r")


async def test_a_hung_up_device_is_retried_without_busy_looping(serial_farm, ptys):
    pty = ptys()
    await serial_farm.start([device(pty.path, serial="HUP1")])
    hub = serial_farm.hub
    await device_open(hub, "HUP1-if00")
    pty.close()  # the other end hangs up, but the source does not report a removal
    await wait_for(lambda: hub.devices["HUP1-if00"].stream is None, what="closed on hang-up")
    before = os.times()
    await asyncio.sleep(1.0)
    after = os.times()
    assert (after.user + after.system) - (before.user + before.system) < 0.5  # backing off, not spinning
    assert hub.devices["HUP1-if00"].error  # and it says why


@need_socat
async def test_the_binding_survives_a_farm_restart(serial_farm, socat_pairs, tmp_path):
    pair = socat_pairs("ttyUSB")
    info = device(pair.a, serial="FT4XYZ")
    await serial_farm.start([info])
    await device_open(serial_farm.hub, "FT4XYZ-if00")
    await pair.dut.write(f"SALAD.machine_id={MAC}\n".encode())
    await wait_for(lambda: connected(serial_farm, MAC), what="bound")
    port_before = (await serial_farm.consoles())["consoles"][MAC]["tcp_port"]
    await serial_farm.stop()

    await serial_farm.start([info])
    # Bound at once, before any marker: text without a marker goes to the machine's console.
    await device_open(serial_farm.hub, "FT4XYZ-if00")
    assert serial_farm.hub.consoles[MAC].stream is not None
    info_json = (await serial_farm.consoles())["consoles"][MAC]
    assert info_json["device"] == "FT4XYZ-if00" and info_json["connected"]
    await pair.dut.write(b"no marker this time\r\n")
    await wait_for(lambda: b"no marker this time" in serial_farm.hub.consoles[MAC].contents())
    # Its index (hence its port, with a fixed base) is the one it had.
    assert serial_farm.hub.consoles[MAC].tcp_index == 0
    assert port_before is not None


async def test_the_operator_binds_and_unbinds_a_device(serial_farm, ptys):
    pty = ptys()
    await serial_farm.start([device(pty.path, serial="OPER1")])
    http = serial_farm.http
    await http.post("/api/v1/machine/", json={"base_name": "b", "mac_address": MAC, "ip_address": "10.0.0.5"})
    await device_open(serial_farm.hub, "OPER1-if00")

    r = await http.put(f"/api/v1/console/{MAC}/device", json={"device": "OPER1-if00"})
    assert r.status_code == 200, r.text
    assert r.json()["device"] == "OPER1-if00" and r.json()["connected"] is True
    await pty.write(b"hello operator\r\n")
    await wait_for(lambda: b"hello operator" in serial_farm.hub.consoles[MAC].contents())

    # Unbind: the device is nobody's console any more.
    r = await http.put(f"/api/v1/console/{MAC}/device", json={"device": None})
    assert r.json()["device"] is None and r.json()["connected"] is False
    assert (await serial_farm.consoles())["devices"]["OPER1-if00"]["machine"] is None

    # Moving a device to another machine takes it from the first.
    await http.post("/api/v1/machine/", json={"base_name": "b", "mac_address": MAC2, "ip_address": "10.0.0.6"})
    await http.put(f"/api/v1/console/{MAC}/device", json={"device": "OPER1-if00"})
    await http.put(f"/api/v1/console/{MAC2}/device", json={"device": "OPER1-if00"})
    consoles = (await serial_farm.consoles())["consoles"]
    assert consoles[MAC]["device"] is None and consoles[MAC2]["device"] == "OPER1-if00"
    assert consoles[MAC2]["connected"] is True
    # A marker moves it again, and that is stored like an operator's choice.
    await pty.write(f"SALAD.machine_id={MAC}\r\n".encode())
    await wait_for(lambda: connected(serial_farm, MAC), what="moved back by a marker")
    consoles = (await serial_farm.consoles())["consoles"]
    assert consoles[MAC]["device"] == "OPER1-if00" and consoles[MAC2]["device"] is None
    await serial_farm.stop()
    await serial_farm.start()
    consoles = (await serial_farm.consoles())["consoles"]
    assert consoles[MAC]["device"] == "OPER1-if00" and consoles[MAC2]["device"] is None
    http = serial_farm.http

    # Unknown machines and bad identities are refused in words; the token is required.
    r = await http.put("/api/v1/console/02:00:00:00:00:99/device", json={"device": "x"})
    assert r.status_code == 404 and "no machine or console" in r.json()["error"]
    r = await http.put(f"/api/v1/console/{MAC}/device", json={"device": "bad\nname"})
    assert r.status_code == 400 and "printable" in r.json()["error"]
    r = await http.put(f"/api/v1/console/{MAC}/device", json={"device": "x"}, headers={"Authorization": ""})
    assert r.status_code == 401


async def test_hostile_bytes_through_a_pty(serial_farm, ptys):
    pty = ptys()
    await serial_farm.start([device(pty.path, serial="EVIL")])
    hub = serial_farm.hub
    await device_open(hub, "EVIL-if00")
    await pty.write(f"SALAD.machine_id={MAC}\r\n".encode())
    await wait_for(lambda: MAC in hub.consoles and hub.consoles[MAC].stream, what="bound")
    hostile = (
        bytes(range(256)) * 256  # binary garbage
        + b"A" * (3 * 1024 * 1024)  # megabytes without a newline
        + b"\xff\xfe\xc0\xaf invalid utf-8 \x1b]0;pwned title\x07 \x1b]52;c;Y2xpcGJvYXJk\x07 \x1bP+q\x1b\\ \x1b[2J\r\n"
    )
    await pty.write(hostile)
    await pty.write(b"SALAD.ping\r\n")
    await pty.read_until(b"SALAD.pong\n", timeout=15)
    console = hub.consoles[MAC]
    await wait_for(lambda: console.total >= len(hostile), what="all stored")
    stream = hub.devices["EVIL-if00"].stream
    assert len(stream.line) <= 4096 and len(stream.pending) == 0
    assert console._held <= console.ring_bytes
    raw = (await serial_farm.http.get(f"/api/v1/console/{MAC}/log", params={"raw": "true"})).content
    assert b"\x1b]0;pwned title\x07" in raw and b"\x1bP+q\x1b\\" in raw  # stored raw
    text = (await serial_farm.http.get(f"/api/v1/console/{MAC}/log")).text  # shown as text, never a crash
    assert "invalid utf-8" in text
    assert console.log.path.read_bytes().count(b"A" * 1024) >= 3 * 1024 - 1
    assert (await serial_farm.http.get("/api/v1/health")).json()["services"]["consoles"]["state"] == "ok"


async def test_a_serial_marker_never_takes_a_live_console(serial_farm, ptys):
    """A wire's marker binds as before, except over a live stream: it waits, and binds when that one ends."""
    pty = ptys()
    await serial_farm.start([device(pty.path, serial="WIRE1")])
    hub = serial_farm.hub
    await device_open(hub, "WIRE1-if00")
    reader, writer = await asyncio.open_connection(*serial_farm.farm.netconsole_address)
    writer.write(f"SALAD.machine_id={MAC}\nnetconsole first\n".encode())
    await writer.drain()
    info = await wait_for(lambda: connected(serial_farm, MAC), what="bound to the netconsole")
    assert info["source"].startswith("netconsole@")

    await pty.write(f"SALAD.machine_id={MAC}\r\nfrom the wire\r\nSALAD.ping\r\n".encode())
    await pty.read_until(b"SALAD.pong\n")
    assert hub.consoles[MAC].stream.kind == "netconsole"
    unbound = (await serial_farm.http.get("/api/v1/consoles/unbound")).json()["streams"]
    wire = next(s for s in unbound.values() if s["device"] == "WIRE1-if00")
    assert wire["announced"] == MAC and "live" in wire["waiting"]
    r = await serial_farm.http.post(f"/api/v1/console/{MAC}/input", json={"data": "to the live one\r"})
    assert r.status_code == 200
    assert await asyncio.wait_for(reader.readexactly(16), 5) == b"to the live one\r"

    writer.close()  # the live stream ends: the wire, which asked for the machine, has it now
    await wait_for(lambda: hub.consoles[MAC].stream is not None and hub.consoles[MAC].stream.kind == "serial",
                   what="the wire bound")
    assert b"from the wire" in hub.consoles[MAC].contents()  # what it printed while waiting is kept


async def connected(sf, mac):
    c = (await sf.consoles())["consoles"].get(mac)
    return c if c and c["connected"] else None


async def disconnected(sf, mac):
    c = (await sf.consoles())["consoles"].get(mac)
    return c is not None and not c["connected"]
