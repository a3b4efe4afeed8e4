"""Reproduction 2 of issue 15, and the netconsole half of 10: floods of markers and connections.

Before: 1,100 ``SALAD.machine_id`` lines with new MACs made 1,024 consoles (each stored, each with a
listening socket) that nothing could remove, and a real DUT then got "no console"; the netconsole
accepted any number of connections and kept idle ones for ever.

Figures (2-core build machine, in-process farm, RSS of the whole test process): the 1,100-marker floods
(one connection; 200 connections from 50 addresses) added 1-5 MiB of RSS and /api/v1/health answered
in 0.02-0.14 s at worst; 1,100 connection attempts added under 5 MiB. Asserted: under 64 MiB and 1 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import sqlite3

import pytest

from tests.conftest import api_url, eventually
from tests.security.conftest_consoles import HEALTH_BOUND, HealthWatch, dut, dut_network_farm, register, rss, silent

REAL_DUT = "52:54:00:11:22:07"
UNKNOWN_MAX = 64  # console_unknown_max (the default)
RSS_BOUND = 64 * 1024 * 1024
FLOOD = 1100


def flood_macs(count: int, prefix: str = "02:aa") -> list[str]:
    return [f"{prefix}:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}" for i in range(count)]


def markers(macs: list[str]) -> bytes:
    return b"".join(f"SALAD.machine_id={mac}\n".encode() for mac in macs)


def stored_consoles(farm) -> set[str]:
    with sqlite3.connect(farm.settings.db_path) as db:
        return {row[0] for row in db.execute("SELECT mac_address FROM machineconsole")}


async def real_dut_gets_its_console(farm, http, source: str) -> None:
    await register(http, REAL_DUT, source)
    reader, writer = await dut(farm, source)
    writer.write(f"SeaBIOS\r\nSALAD.machine_id={REAL_DUT}\r\n".encode())
    await writer.drain()

    async def bound():
        info = (await http.get("/api/v1/consoles")).json()["consoles"].get(REAL_DUT) or {}
        return info.get("connected")

    await eventually(bound, "the real DUT's console", timeout=5)
    r = await http.post(f"/api/v1/console/{REAL_DUT}/input", json={"data": "root\r"})
    assert r.status_code == 200, r.text
    assert await asyncio.wait_for(reader.readexactly(5), 5) == b"root\r"
    writer.close()


async def test_1100_new_macs_on_one_connection_leave_room_for_a_real_dut(tmp_path):
    # As the issue ran it: one nc from loopback (the gateway itself by default: exempt from per-source caps).
    async with dut_network_farm(
        tmp_path / "data", console_local_sources=["auto"], console_unknown_ttl=3.0, console_unknown_max=UNKNOWN_MAX
    ) as (farm, http):
        before = rss()
        async with HealthWatch(api_url(farm)) as health:
            reader, writer = await dut(farm)
            writer.write(markers(flood_macs(FLOOD)) + b"SALAD.ping\n")
            await writer.drain()
            assert await asyncio.wait_for(reader.readline(), 10) == b"SALAD.pong\n"
            await asyncio.sleep(0.5)
        grown = rss() - before
        print(f"one connection: RSS +{grown / 2**20:.1f} MiB, slowest health {health.slowest:.3f} s")
        await real_dut_gets_its_console(farm, http, "127.0.0.1")
        # A connection is one DUT's console: its first marker binds it, the others do not carry it away.
        assert len(farm.consoles.consoles) == 2, "markers filled the consoles"
        assert len(stored_consoles(farm)) == 2
        assert health.answers >= 3 and not health.failures, (health.answers, health.failures)
        assert health.slowest < HEALTH_BOUND, health.slowest
        assert grown < RSS_BOUND, f"RSS grew {grown / 2**20:.1f} MiB"

        # Unused consoles of machines that never registered go, with their logs and stored rows.
        writer.close()
        await eventually(lambda: list(farm.consoles.consoles) == [REAL_DUT], "flood consoles expired", timeout=10)
        assert {p.name.split(".log")[0] for p in (farm.settings.data_dir / "consoles").glob("*.log*")} <= {REAL_DUT}
        await eventually(lambda: stored_consoles(farm) == {REAL_DUT}, "rows removed")


async def test_1100_new_macs_from_many_dut_addresses_leave_room_for_a_real_dut(tmp_path):
    async with dut_network_farm(
        tmp_path / "data",
        console_bind_policy="free",
        console_unknown_max=UNKNOWN_MAX,
        console_unknown_per_source=2,
    ) as (farm, http):
        # "free": any DUT may bind a console nobody streams to, so only the caps stand in the way.
        # 50 addresses, 4 connections each (netconsole_max_per_source), 5-6 new MACs per connection.
        before = rss()
        conns = []
        macs = flood_macs(FLOOD)
        async with HealthWatch(api_url(farm)) as health:
            for i in range(200):
                reader, writer = await dut(farm, f"127.0.3.{i // 4 + 1}")
                writer.write(markers(macs[i::200]) + b"SALAD.ping\n")
                conns.append((reader, writer))
            for reader, writer in conns:
                await writer.drain()
                assert await asyncio.wait_for(reader.readline(), 10) == b"SALAD.pong\n"
        grown = rss() - before
        print(f"200 connections from 50 sources: RSS +{grown / 2**20:.1f} MiB, slowest health {health.slowest:.3f} s")
        await real_dut_gets_its_console(farm, http, "127.0.4.1")
        assert len(farm.consoles.consoles) <= UNKNOWN_MAX + 1, "markers filled the consoles"
        by_origin: dict[str, int] = {}
        for c in farm.consoles.consoles.values():
            if c.provisional:
                by_origin[c.origin] = by_origin.get(c.origin, 0) + 1
        assert max(by_origin.values()) <= 2
        assert not health.failures and health.slowest < HEALTH_BOUND, (health.slowest, health.failures)
        assert grown < RSS_BOUND, f"RSS grew {grown / 2**20:.1f} MiB"
        for _, writer in conns:
            writer.close()


async def test_a_flooded_data_dir_starts_with_its_consoles_bounded(tmp_path):
    """1,100 consoles stored by the old code (one listening socket each) no longer come back."""
    data = tmp_path / "data"
    async with dut_network_farm(data) as (farm, http):
        await register(http, REAL_DUT, "10.42.0.17")
        await http.put(f"/api/v1/console/{REAL_DUT}/device", json={"device": None})  # a registered machine's console
        from valve_console.backend.models import MachineConsole

        def insert(session):
            for i, mac in enumerate(flood_macs(FLOOD)):
                session.add(MachineConsole(mac_address=mac, tcp_index=100 + i, updated_at=1000.0 + i))

        await farm.store.run(insert)
    async with dut_network_farm(data, console_unknown_max=UNKNOWN_MAX) as (farm, http):
        assert len(farm.consoles.consoles) == UNKNOWN_MAX + 1
        assert len(stored_consoles(farm)) == UNKNOWN_MAX + 1
        assert REAL_DUT in farm.consoles.consoles and not farm.consoles.consoles[REAL_DUT].provisional
        provisional = [c for c in farm.consoles.consoles.values() if c.provisional]
        assert min(c.tcp_index for c in provisional) == 100 + FLOOD - UNKNOWN_MAX  # the most recent are kept


@contextlib.contextmanager
def open_files(n: int):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        if hard != resource.RLIM_INFINITY and hard < n:
            pytest.skip(f"needs {n} open files (the hard limit is {hard})")
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, hard))
    try:
        yield
    finally:
        if soft < n:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_1100_idle_connections_are_capped_and_time_out(tmp_path):
    with open_files(4096):
        async with dut_network_farm(
            tmp_path / "data", netconsole_max_connections=100, netconsole_marker_timeout=1.0
        ) as (farm, http):
            before = rss()
            conns = []
            async with HealthWatch(api_url(farm)) as health:
                for i in range(FLOOD):  # 4 per address (the per-source cap), 275 addresses
                    source = f"127.0.{5 + i // 1000}.{(i // 4) % 250 + 1}"
                    with contextlib.suppress(OSError):
                        conns.append(await dut(farm, source))
                await asyncio.sleep(0.3)
                refused = [r for r, _ in conns if r.at_eof() or r._buffer]  # noqa: SLF001 - told and closed
                grown = rss() - before
                # Beyond the cap, each connection is told why and closed at once (its descriptor freed).
                assert len(farm.consoles._conn_tasks) <= 100
                assert len(conns) - len(refused) <= 100
                sample = next(r for r, _ in conns[200:] if r.at_eof() or r._buffer)
                assert b"too many console connections" in await sample.read()
                # Connections that never announce a machine are closed after netconsole_marker_timeout.
                await eventually(lambda: not farm.consoles._conn_tasks, "idle connections closed", timeout=10)
            print(f"{FLOOD} connections: RSS +{grown / 2**20:.1f} MiB, slowest health {health.slowest:.3f} s")
            assert not health.failures and health.slowest < HEALTH_BOUND, (health.slowest, health.failures)
            assert grown < RSS_BOUND, f"RSS grew {grown / 2**20:.1f} MiB"
            for _, writer in conns:
                writer.close()
            await real_dut_gets_its_console(farm, http, "127.0.6.1")


async def test_connections_per_source_are_capped(tmp_path):
    async with dut_network_farm(tmp_path / "data", netconsole_max_per_source=3) as (farm, http):
        conns = [await dut(farm, "127.0.7.1") for _ in range(5)]
        answers = [await silent(r, 0.5) for r, _ in conns]
        assert answers[:3] == [b"", b"", b""]
        assert all(b"too many console connections from 127.0.7.1" in a for a in answers[3:])
        other_reader, other = await dut(farm, "127.0.7.2")  # another DUT still connects
        assert await silent(other_reader, 0.3) == b""
        for _, writer in conns + [(other_reader, other)]:
            writer.close()


async def test_unbound_streams_expire_and_bound_ones_stay(tmp_path):
    async with dut_network_farm(
        tmp_path / "data", netconsole_marker_timeout=0.6, console_unbound_ttl=1.5
    ) as (farm, http):
        await register(http, REAL_DUT, "127.0.8.3")
        silent_reader, silent_writer = await dut(farm, "127.0.8.1")  # never announces anything
        silent_writer.write(b"garbage without a marker\n")
        unbound_reader, unbound_writer = await dut(farm, "127.0.8.2")  # announces a machine it is not
        unbound_writer.write(f"SALAD.machine_id={REAL_DUT}\n".encode())
        bound_reader, bound_writer = await dut(farm, "127.0.8.3")
        bound_writer.write(f"SALAD.machine_id={REAL_DUT}\n".encode())
        assert await asyncio.wait_for(silent_reader.read(), 3) == b""  # closed after ~0.6 s of silence
        assert not unbound_reader.at_eof()
        assert await asyncio.wait_for(unbound_reader.read(), 4) == b""  # closed after 1.5 s unbound
        await asyncio.sleep(0.5)
        assert farm.consoles.consoles[REAL_DUT].stream is not None  # the bound one stays
        assert await silent(bound_reader, 0.2) == b""
        for w in (silent_writer, unbound_writer, bound_writer):
            w.close()
