"""Reproduction 1 of issue 15: a console binding is earned, never stolen.

Before: any connection printing ``SALAD.machine_id=<victim>`` became the victim's console: its lines
(a job's success pattern) went into the victim's console and the operator's input went to it.
"""

from __future__ import annotations

import asyncio

from tests.conftest import eventually
from tests.security.conftest_consoles import VICTIM, dut, dut_network_farm, register, silent

INJECTED = b"+ echo Execution is over\r\nSALAD.unfit_for_service injected by the attacker\r\n"


async def bound(http, mac: str, source: str | None = None):
    info = (await http.get("/api/v1/consoles")).json()["consoles"].get(mac) or {}
    if not info.get("connected"):
        return None
    return info if source is None or (info.get("source") or "").startswith(f"netconsole@{source}:") else None


async def test_a_second_connection_with_the_victims_mac_takes_nothing(tmp_path):
    # The reproduction as it was run: everything on loopback, which by default is the gateway
    # itself (QEMU DUTs run there), so this is the strictest rule: a live binding is never taken over.
    async with dut_network_farm(tmp_path / "data", console_local_sources=["auto"]) as (farm, http):
        v_reader, v_writer = await dut(farm, "127.0.0.1")
        v_writer.write(f"SALAD.machine_id={VICTIM}\r\nvictim booting\r\n".encode())
        await v_writer.drain()
        await eventually(lambda: bound(http, VICTIM), "the victim's console")

        a_reader, a_writer = await dut(farm, "127.0.0.1")  # printf 'SALAD.machine_id=...' | nc GW 8100
        a_writer.write(f"SALAD.machine_id={VICTIM}\n".encode() + INJECTED + b"SALAD.ping\n")
        await a_writer.drain()
        assert await asyncio.wait_for(a_reader.readline(), 5) == b"SALAD.pong\n"  # all of it was read

        # The operator types: it reaches the victim, never the attacker.
        r = await http.post(f"/api/v1/console/{VICTIM}/input", json={"data": "reboot\r"})
        assert r.status_code == 200, r.text
        assert await asyncio.wait_for(v_reader.readexactly(7), 5) == b"reboot\r"
        assert await silent(a_reader, 0.5) == b""
        # Nothing the attacker printed is in the victim's console (ring, log file, events).
        log = (await http.get(f"/api/v1/console/{VICTIM}/log", params={"raw": "true"})).content
        assert b"victim booting" in log and b"injected by the attacker" not in log
        assert b"injected" not in (farm.settings.data_dir / "consoles" / f"{VICTIM}.log").read_bytes()
        info = await bound(http, VICTIM)
        assert info is not None and info["source"] == farm.consoles.consoles[VICTIM].stream.name
        # The attacker's stream waits, unbound, where the operator sees it and why.
        unbound = await eventually(lambda: _unbound_announcing(http, VICTIM), "the attacker's stream listed")
        assert "live" in unbound["waiting"] and "never taken over" in unbound["waiting"]
        a_writer.close()
        v_writer.close()


async def test_from_the_dut_network_only_the_registered_address_binds(tmp_path):
    async with dut_network_farm(tmp_path / "data") as (farm, http):
        await register(http, VICTIM, "127.0.0.3")
        # The victim is off; an attacker (another DUT) announces its MAC first.
        a_reader, a_writer = await dut(farm, "127.0.0.2")
        a_writer.write(f"SALAD.machine_id={VICTIM}\n".encode() + INJECTED + b"SALAD.ping\n")
        await a_writer.drain()
        assert await asyncio.wait_for(a_reader.readline(), 5) == b"SALAD.pong\n"  # ping works while unbound
        assert VICTIM not in farm.consoles.consoles or farm.consoles.consoles[VICTIM].stream is None
        r = await http.post(f"/api/v1/console/{VICTIM}/input", json={"data": "secret\r"})
        assert r.status_code in (404, 409)  # no console, or not connected: nothing typed goes anywhere
        assert await silent(a_reader, 0.3) == b""
        waiting = await eventually(lambda: _unbound_announcing(http, VICTIM), "the attacker waiting")
        assert "127.0.0.2" in waiting["waiting"] and "127.0.0.3" in waiting["waiting"]

        # The victim boots: its stream comes from its registered address and binds.
        v_reader, v_writer = await dut(farm, "127.0.0.3")
        v_writer.write(f"firmware\r\nSALAD.machine_id={VICTIM}\r\n".encode())
        await v_writer.drain()
        await eventually(lambda: bound(http, VICTIM, "127.0.0.3"), "the victim bound")
        r = await http.post(f"/api/v1/console/{VICTIM}/input", json={"data": "secret\r"})
        assert r.status_code == 200, r.text
        assert await asyncio.wait_for(v_reader.readexactly(7), 5) == b"secret\r"
        assert await silent(a_reader, 0.3) == b""
        log = (await http.get(f"/api/v1/console/{VICTIM}/log", params={"raw": "true"})).content
        assert b"firmware" in log and b"injected" not in log
        a_writer.close()
        v_writer.close()


async def test_an_unregistered_dut_binds_when_it_registers_from_its_address(tmp_path):
    mac = "52:54:00:11:22:09"
    async with dut_network_farm(tmp_path / "data") as (farm, http):
        reader, writer = await dut(farm, "127.0.0.9")
        writer.write(f"iPXE 1.21\r\nSALAD.machine_id={mac}\r\nLinux version 6.1\r\nSALAD.ping\r\n".encode())
        await writer.drain()
        assert await asyncio.wait_for(reader.readline(), 5) == b"SALAD.pong\n"  # machine_registration's probe
        waiting = await eventually(lambda: _unbound_announcing(http, mac), "waiting for registration")
        assert "not registered" in waiting["waiting"]
        await register(http, mac, "127.0.0.9")  # as machine_registration does, with the DUT's own address
        await eventually(lambda: bound(http, mac, "127.0.0.9"), "bound once registered", timeout=5)
        log = (await http.get(f"/api/v1/console/{mac}/log")).text
        assert "iPXE 1.21" in log and "Linux version 6.1" in log  # what came before the binding is kept
        writer.close()


async def test_the_operator_sees_unbound_streams_and_binds_them_by_hand(tmp_path):
    other = "52:54:00:11:22:04"
    async with dut_network_farm(tmp_path / "data") as (farm, http):
        await register(http, VICTIM, "10.42.0.13")  # its console is a QEMU behind NAT, say: never that address
        reader, writer = await dut(farm, "127.0.0.5")
        writer.write(f"SALAD.machine_id={VICTIM}\nhello operator\n".encode())
        await writer.drain()
        stream = await eventually(lambda: _unbound_announcing(http, VICTIM), "listed")
        assert stream["source"] == "127.0.0.5" and "hello operator" in stream["tail"]

        # Listing and binding are the operator's.
        assert (await http.get("/api/v1/consoles/unbound", headers={"Authorization": ""})).status_code == 401
        r = await http.post(f"/api/v1/consoles/unbound/{stream['id']}/bind", json={"mac": VICTIM},
                            headers={"Authorization": ""})
        assert r.status_code == 401
        r = await http.post("/api/v1/consoles/unbound/s999999/bind", json={"mac": VICTIM})
        assert r.status_code == 404 and "no console stream" in r.json()["error"]
        r = await http.post(f"/api/v1/consoles/unbound/{stream['id']}/bind", json={"mac": "not a mac"})
        assert r.status_code == 400 and "error" in r.json()

        r = await http.post(f"/api/v1/consoles/unbound/{stream['id']}/bind", json={"mac": VICTIM})
        assert r.status_code == 200, r.text
        assert r.json()["connected"] is True and r.json()["source"].startswith("netconsole@127.0.0.5:")
        assert "hello operator" in (await http.get(f"/api/v1/console/{VICTIM}/log")).text
        r = await http.post(f"/api/v1/console/{VICTIM}/input", json={"data": "ok\r"})
        assert r.status_code == 200
        assert await asyncio.wait_for(reader.readexactly(3), 5) == b"ok\r"
        # Bound by hand, it stays: its own markers no longer move it.
        writer.write(f"SALAD.machine_id={other}\n".encode())
        await writer.drain()
        await asyncio.sleep(0.3)
        assert farm.consoles.consoles[VICTIM].stream is not None

        # A second stream cannot be given the live console without replace=true.
        r2, w2 = await dut(farm, "127.0.0.6")
        w2.write(b"no marker yet\n")
        await w2.drain()
        second = await eventually(lambda: _unbound_from(http, "127.0.0.6"), "second listed")
        r = await http.post(f"/api/v1/consoles/unbound/{second['id']}/bind", json={"mac": VICTIM})
        assert r.status_code == 409 and "replace" in r.json()["error"]
        r = await http.post(f"/api/v1/consoles/unbound/{second['id']}/bind", json={"mac": VICTIM, "replace": True})
        assert r.status_code == 200 and r.json()["source"].startswith("netconsole@127.0.0.6:")
        # The operator drops a connection.
        first = await eventually(lambda: _unbound_from(http, "127.0.0.5"), "the first one unbound now")
        r = await http.delete(f"/api/v1/consoles/unbound/{first['id']}")
        assert r.status_code == 200
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed
        writer.close()
        w2.close()


async def _unbound_announcing(http, mac: str):
    streams = (await http.get("/api/v1/consoles/unbound")).json()["streams"]
    return next((s for s in streams.values() if s["announced"] == mac and s["waiting"]), None)


async def _unbound_from(http, source: str):
    streams = (await http.get("/api/v1/consoles/unbound")).json()["streams"]
    return next((s for s in streams.values() if s["source"] == source), None)
