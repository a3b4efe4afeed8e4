"""The vpdu driver's ``read_power`` against a real vPDU (Vivian's power report), metering off, malformed
answers from a crafted vPDU, and the same meters over the vPDU's SNMP face (net-snmp snmpd, APC rPDU2 OIDs)."""

from __future__ import annotations

import asyncio
import shutil
import struct
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from tests.conftest import eventually
from tests.drivers.conftest import free_udp_port
from tests.unit.test_vpdu_power import BootServer, Sink
from valve_console.drivers.pdu import create_driver
from valve_console.drivers.pdu.base import PowerReading, meters
from valve_console.drivers.pdu.vpdu import VirtualPDU as VpduDriver
from valve_console.drivers.pdu.vpdu import VpduConfig
from vivian.power import HUNG_WATTS
from vivian.vpdu import SnmpFace, VirtualPDU

PORTS = ["0", "1", "2", "3"]
RPDU2 = ".1.3.6.1.4.1.318.1.1.26"
OUTLET_COL = RPDU2 + ".9.4.3.1"


@pytest.fixture
async def peers() -> AsyncIterator[tuple[BootServer, Sink]]:
    boot, sink = BootServer("vivian.script=hang"), Sink()
    yield boot, sink
    boot.close()
    sink.close()


@pytest.fixture
async def farm(peers: tuple[BootServer, Sink]) -> AsyncIterator[tuple[VirtualPDU, VpduDriver]]:
    """A metering vPDU (4 outlets, outlet 3 empty) whose DUTs hang after booting, and a driver on it."""
    boot, sink = peers
    vpdu = VirtualPDU(num_ports=4, api=boot.url, console=sink.address, dut_args=("--boot-delay=0",),
                      empty_outlets=[3])
    port = await vpdu.start("127.0.0.1", 0)
    try:
        yield vpdu, VpduDriver(VpduConfig(hostname=f"127.0.0.1:{port}"))
    finally:
        await vpdu.stop()


async def test_the_vpdu_driver_meters_by_default() -> None:
    driver = create_driver("vpdu", {"hostname": "127.0.0.1:9191"})
    assert meters(driver)


async def test_read_power_follows_the_outlets(farm: tuple[VirtualPDU, VpduDriver]) -> None:
    vpdu, driver = farm
    reading = await driver.read_power(PORTS)
    assert reading.problems == ()
    assert sorted(reading.outlets) == PORTS
    assert all(o.watts == 0.0 and o.amps == 0.0 for o in reading.outlets.values())
    assert all(o.volts is not None and 225 < o.volts < 235 for o in reading.outlets.values())
    assert reading.total_watts == 0.0

    await vpdu.set_outlet(1, True)
    await vpdu.set_outlet(3, True)  # nothing plugged in: ON, 0 W, still metered
    reading = await driver.read_power(PORTS)
    one = reading.outlets["1"]
    assert one.watts is not None and one.watts > 0
    assert one.amps == pytest.approx(one.watts / one.volts, abs=0.002)
    assert reading.outlets["3"].watts == 0.0 and reading.outlets["3"].energy_wh == 0.0
    assert reading.total_watts == pytest.approx(sum(o.watts or 0 for o in reading.outlets.values()), abs=0.1)

    # only the outlets asked; an outlet the vPDU does not have is a problem, not a crash
    partial = await driver.read_power(["1", "9", "x"])
    assert sorted(partial.outlets) == ["1", "9", "x"]
    assert partial.outlets["9"].watts is None and partial.outlets["x"].watts is None
    assert len(partial.problems) == 2


async def test_a_hung_dut_is_flat_and_its_counter_grows_as_w_times_t(farm: tuple[VirtualPDU, VpduDriver]) -> None:
    vpdu, driver = farm
    await vpdu.set_outlet(2, True)
    await eventually(lambda: vpdu.phase_of(2) == "hung", what="the DUT to hang", timeout=15)
    await asyncio.sleep(0.6)  # a tick at the hung level
    first = await driver.read_power(["2"])
    start = time.monotonic()
    counters = [first.outlets["2"].energy_wh]
    for _ in range(6):
        await asyncio.sleep(0.4)
        reading = await driver.read_power(["2"])
        assert reading.outlets["2"].watts == HUNG_WATTS
        counters.append(reading.outlets["2"].energy_wh)
    elapsed = time.monotonic() - start
    assert counters == sorted(counters)
    assert counters[0] is not None and counters[-1] is not None
    assert counters[-1] - counters[0] == pytest.approx(HUNG_WATTS * elapsed / 3600, rel=0.1)

    await vpdu.set_outlet(2, False)
    off = await driver.read_power(["2"])
    await asyncio.sleep(0.6)
    later = await driver.read_power(["2"])
    assert later.outlets["2"].watts == 0.0
    assert later.outlets["2"].energy_wh == off.outlets["2"].energy_wh  # kept, not reset, not growing


async def test_metering_off_gives_empty_outlets() -> None:
    vpdu = VirtualPDU(num_ports=2, metering=False)
    port = await vpdu.start("127.0.0.1", 0)
    try:
        reading = await VpduDriver(VpduConfig(hostname=f"127.0.0.1:{port}")).read_power(["0", "1"])
        assert reading == PowerReading(outlets={})
    finally:
        await vpdu.stop()
    driver = create_driver("vpdu", {"hostname": "127.0.0.1:9", "metering": False})
    assert await driver.read_power(["0"]) == PowerReading(outlets={})  # not even asked


# -- a crafted vPDU answering the power report badly ---------------------------------------------


async def crafted(answer: bytes | Callable[[], bytes], close_early: bool = False) -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(4)
        writer.write(answer() if callable(answer) else answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def report(text: str, length: int | None = None) -> bytes:
    body = text.encode("latin-1")
    return b"\x06" + struct.pack(">I", len(body) if length is None else length) + body


GOOD = "vpdu-power 1\n0 10.0 0.043 230.0 1.5000\n1 20.0 0.087 230.0 2.5000\ntotal 30.0 4.0000\n"
MALFORMED = [
    (b"\x42", "unexpected answer 0x42"),
    (report(GOOD, length=5000), "cut short"),
    (report(GOOD, length=(1 << 20) + 1), "longer than"),
    (b"\x06\x00\x00", "cut short"),
    (report("hello\n0 1 1 1 1\n"), "starts with"),
    (report("vpdu-power 1\n0 nan 0.1 230 1\n1 -5 0.1 230 1\ntotal 1e30 2\n"), "not a finite number"),
    (report("vpdu-power 1\n0 10 0.04 230\n1 abc 0.1 230 2\n\xff\xfe garbage\ntotal 1\n"), "values instead of 4"),
    (report("vpdu-power 1\n" + "junk line\n" * 500 + "0 1 0.1 230 1\n1 1 0.1 230 1\n"), "more lines"),
    (report("vpdu-power 1\n0 99999 0.1 230 1\n1 10 500 230 1\ntotal 10 1\n"), "beyond any plausible"),
]


@pytest.mark.parametrize(("answer", "problem"), MALFORMED, ids=[p for _, p in MALFORMED])
async def test_a_malformed_power_report_is_contained(answer: bytes, problem: str) -> None:
    server, port = await crafted(answer)
    try:
        reading = await VpduDriver(VpduConfig(hostname=f"127.0.0.1:{port}", timeout=1.0)).read_power(["0", "1"])
    finally:
        server.close()
    assert reading.problems, reading
    assert any(problem in p for p in reading.problems), reading.problems
    assert sorted(reading.outlets) == ["0", "1"]
    assert len(reading.problems) <= 21
    for outlet in reading.outlets.values():
        for value in (outlet.watts, outlet.amps, outlet.volts, outlet.energy_wh):
            assert value is None or (0 <= value < 1e12)


async def test_a_good_crafted_report_and_a_partly_bad_one() -> None:
    server, port = await crafted(report(GOOD))
    try:
        reading = await VpduDriver(VpduConfig(hostname=f"127.0.0.1:{port}")).read_power(["0", "1"])
    finally:
        server.close()
    assert reading.problems == ()
    assert reading.outlets["1"].watts == 20.0 and reading.outlets["1"].energy_wh == 2.5
    assert (reading.total_watts, reading.total_energy_wh) == (30.0, 4.0)

    server, port = await crafted(report("vpdu-power 1\n0 10 0.04 230 1\n1 abc 0.1 230 2\ntotal 10 3\n"))
    try:
        reading = await VpduDriver(VpduConfig(hostname=f"127.0.0.1:{port}")).read_power(["0", "1"])
    finally:
        server.close()
    assert reading.outlets["0"].watts == 10.0  # the good outlet kept
    assert reading.outlets["1"].watts is None and reading.outlets["1"].volts == 230.0
    assert any("'abc' is not a number" in p for p in reading.problems)


async def test_an_older_vpdu_that_refuses_the_report_is_not_metered() -> None:
    server, port = await crafted(b"\x00")
    try:
        reading = await VpduDriver(VpduConfig(hostname=f"127.0.0.1:{port}")).read_power(["0"])
    finally:
        server.close()
    assert reading == PowerReading(outlets={})


# -- the SNMP face ---------------------------------------------------------------------------------


def snmpd_missing() -> bool:
    return shutil.which("snmpd") is None and not Path("/usr/sbin/snmpd").exists() or shutil.which("snmpget") is None


async def snmp(tool: str, udp: int, *oids: str) -> list[tuple[str, str]]:
    proc = await asyncio.create_subprocess_exec(
        tool, "-v2c", "-c", "public", "-On", "-Oe", "-t", "3", "-r", "1", f"127.0.0.1:{udp}", *oids,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    rows = []
    for line in out.decode().splitlines():
        oid, _, value = line.partition(" = ")
        rows.append((oid, value))
    return rows


def integer(value: str) -> int:
    kind, _, number = value.partition(": ")
    assert kind == "INTEGER", value
    return int(number)


@pytest.mark.skipif(snmpd_missing(), reason="net-snmp snmpd/snmpget are not installed")
async def test_the_snmp_face_serves_the_same_meters_in_apc_units(farm: tuple[VirtualPDU, VpduDriver]) -> None:
    vpdu, driver = farm
    await vpdu.set_outlet(1, True)
    await vpdu.set_outlet(3, True)
    await eventually(lambda: vpdu.phase_of(1) == "hung", what="the DUT to hang", timeout=15)
    port = (await driver.ports(), driver._port)[1]
    face = SnmpFace("127.0.0.1", free_udp_port(), port)
    await face.start()
    try:
        reading = await driver.read_power(PORTS)
        walk = dict(await snmp("snmpwalk", face.port, RPDU2))
        after = await driver.read_power(PORTS)
        assert integer(walk[RPDU2 + ".9.3.0"]) == 4
        assert integer(walk[RPDU2 + ".4.3.1.5.1"]) == round(HUNG_WATTS / 10)  # 0.01 kW
        assert integer(walk[RPDU2 + ".4.3.1.9.1"]) == int((reading.total_energy_wh or 0) // 100)  # 0.1 kWh
        for n in range(1, 5):
            outlet, later = reading.outlets[str(n - 1)], after.outlets[str(n - 1)]
            assert outlet.watts is not None and outlet.amps is not None and outlet.energy_wh is not None
            assert integer(walk[f"{OUTLET_COL}.1.{n}"]) == n and integer(walk[f"{OUTLET_COL}.4.{n}"]) == n
            assert integer(walk[f"{OUTLET_COL}.2.{n}"]) == 1
            assert walk[f"{OUTLET_COL}.3.{n}"] == f'STRING: "vPDU outlet {n - 1}"'
            assert integer(walk[f"{OUTLET_COL}.7.{n}"]) == round(outlet.watts)  # W (flat or 0: exact)
            assert integer(walk[f"{OUTLET_COL}.5.{n}"]) == (2 if outlet.watts >= 1 else 1)
            assert abs(integer(walk[f"{OUTLET_COL}.6.{n}"]) / 10 - outlet.amps) <= 0.051  # 0.1 A
            assert later.energy_wh is not None
            assert int(outlet.energy_wh // 100) <= integer(walk[f"{OUTLET_COL}.11.{n}"]) <= int(later.energy_wh // 100)
        assert integer(walk[f"{OUTLET_COL}.7.2"]) == HUNG_WATTS
        got = await snmp("snmpget", face.port, f"{OUTLET_COL}.7.2", f"{OUTLET_COL}.7.4", ".1.3.6.1.4.1.318.1.1.4.4.1.0")
        assert [integer(v) for _, v in got] == [HUNG_WATTS, 0, 4]
    finally:
        await face.stop()


@pytest.mark.skipif(snmpd_missing(), reason="net-snmp snmpd/snmpget are not installed")
async def test_an_snmp_face_without_metering_has_no_rpdu2_objects() -> None:
    vpdu = VirtualPDU(num_ports=2, metering=False)
    port = await vpdu.start("127.0.0.1", 0)
    face = SnmpFace("127.0.0.1", free_udp_port(), port)
    await face.start()
    try:
        got = await snmp("snmpget", face.port, f"{OUTLET_COL}.7.1", ".1.3.6.1.4.1.318.1.1.4.4.1.0")
        assert "No Such" in got[0][1]
        assert integer(got[1][1]) == 2
        walk = await snmp("snmpwalk", face.port, RPDU2)
        assert all(RPDU2 not in oid or "No Such" in value for oid, value in walk)
    finally:
        await face.stop()
        await vpdu.stop()
