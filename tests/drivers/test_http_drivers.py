"""Tasmota and Shelly drivers against local HTTP servers that answer like the devices."""

from __future__ import annotations

import time

import pytest

from tests.drivers.conftest import free_tcp_port
from tests.drivers.fake_devices import FakeDevice
from valve_console.drivers.pdu import DriverError, PortState, create_driver


@pytest.fixture
def devices():
    made: list[FakeDevice] = []

    def make(*args, **kwargs) -> FakeDevice:
        made.append(FakeDevice(*args, **kwargs))
        return made[-1]

    yield make
    for device in made:
        device.close()


async def test_tasmota_single_relay_answers_with_power(devices):
    plug = devices("tasmota", 1, ["Bench plug"])
    drv = create_driver("tasmota", {"hostname": plug.hostname})
    try:
        assert [(o.port_id, o.label) for o in await drv.ports()] == [("1", "Bench plug")]
        assert await drv.get("1") == PortState.OFF
        await drv.set("1", PortState.ON)
        assert plug.on == [True] and await drv.get("1") == PortState.ON
        assert "/cm?cmnd=Power1+On" in plug.requests
        await drv.set("1", PortState.OFF)
        assert plug.on == [False]
        with pytest.raises(DriverError, match="no outlet '2' .outlets 1..1"):
            await drv.get("2")
    finally:
        await drv.close()


async def test_tasmota_multi_relay_with_credentials(devices):
    board = devices("tasmota", 4, user="admin", password="s3cret")
    drv = create_driver("tasmota", {"hostname": f"http://{board.hostname}", "outlets": 4, "user": "admin",
                                    "password": "s3cret"})
    wrong = create_driver("tasmota", {"hostname": board.hostname, "outlets": 4, "password": "nope"})
    too_many = create_driver("tasmota", {"hostname": board.hostname, "outlets": 5, "password": "s3cret"})
    try:
        assert [o.label for o in await drv.ports()] == ["Tasmota1", "Tasmota2", "Tasmota3", "Tasmota4"]
        await drv.set("3", PortState.ON)
        assert board.on == [False, False, True, False] and await drv.get("3") == PortState.ON
        with pytest.raises(DriverError, match="refused the credentials .HTTP 401"):
            await wrong.get("1")
        with pytest.raises(DriverError, match="does not know 'Power5'"):
            await too_many.get("5")
    finally:
        for d in (drv, wrong, too_many):
            await d.close()


async def test_shelly_gen1_with_basic_auth(devices):
    shelly = devices("gen1", 2, ["dut-a", None], user="admin", password="pw")
    drv = create_driver("shelly_gen1", {"hostname": shelly.hostname, "user": "admin", "password": "pw"})
    wrong = create_driver("shelly_gen1", {"hostname": shelly.hostname, "user": "admin", "password": "bad"})
    try:
        assert [(o.port_id, o.label) for o in await drv.ports()] == [("0", "dut-a"), ("1", "")]
        await drv.set("1", PortState.ON)
        assert shelly.on == [False, True] and await drv.get("1") == PortState.ON
        await drv.set("1", PortState.REBOOT)  # off now, the device flips it back on by itself
        assert shelly.on[1] is False and "timer=5" in shelly.requests[-1]
        with pytest.raises(DriverError, match="refused the credentials"):
            await wrong.set("0", PortState.ON)
        with pytest.raises(DriverError, match="answered HTTP 404"):
            await drv.get("7")
    finally:
        await drv.close()
        await wrong.close()


async def test_shelly_gen2_with_digest_auth(devices):
    shelly = devices("gen2", 3, ["rack-1", None, "rack-3"], password="digest-pw")
    drv = create_driver("shelly_gen2", {"hostname": shelly.hostname, "password": "digest-pw"})
    wrong = create_driver("shelly_gen2", {"hostname": shelly.hostname, "password": "guess"})
    try:
        assert [(o.port_id, o.label) for o in await drv.ports()] == [("0", "rack-1"), ("1", ""), ("2", "rack-3")]
        await drv.set("2", PortState.ON)
        assert shelly.on == [False, False, True] and await drv.get("2") == PortState.ON
        await drv.set("2", PortState.OFF)
        assert await drv.get("2") == PortState.OFF
        with pytest.raises(DriverError, match="Argument 'id', value 9 not found"):
            await drv.get("9")
        with pytest.raises(DriverError, match="refused the credentials"):
            await wrong.get("0")
    finally:
        await drv.close()
        await wrong.close()


async def test_gen1_driver_recognises_a_gen2_device(devices):
    shelly = devices("gen2", 1)
    drv = create_driver("shelly_gen1", {"hostname": shelly.hostname})
    try:
        with pytest.raises(DriverError, match="Gen2 Shelly: use the driver shelly_gen2"):
            await drv.ports()
    finally:
        await drv.close()


@pytest.mark.parametrize("key", ["tasmota", "shelly_gen1", "shelly_gen2"])
async def test_slow_and_absent_devices(devices, key):
    device = devices({"tasmota": "tasmota", "shelly_gen1": "gen1", "shelly_gen2": "gen2"}[key], 1)
    device.hang = 1.0
    slow = create_driver(key, {"hostname": device.hostname, "timeout": 0.3})
    gone = create_driver(key, {"hostname": f"127.0.0.1:{free_tcp_port()}", "timeout": 0.3})
    try:
        t0 = time.monotonic()
        with pytest.raises(DriverError, match=r"did not answer within 0.3 s"):
            await slow.get("0" if key != "tasmota" else "1")
        assert time.monotonic() - t0 < 0.9
        with pytest.raises(DriverError, match="is unreachable .*Connection refused"):
            await gone.get("0" if key != "tasmota" else "1")
    finally:
        await slow.close()
        await gone.close()


async def test_power_service_drives_a_shelly(farm, devices):
    shelly = devices("gen2", 2, ["a", "b"], password="pw")
    await farm.power.add_pdu("plug", "shelly_gen2", {"hostname": shelly.hostname, "password": "pw"})
    assert farm.power.outlet_ids("plug") == ["0", "1"]
    assert await farm.power.set_outlet("plug", "1", "on") == PortState.ON
    assert shelly.on == [False, True]
    assert await farm.power.set_outlet("plug", "1", "off") == PortState.OFF


@pytest.mark.parametrize("kind, driver, first, status_path", [
    ("tasmota", "tasmota", 1, "/cm?cmnd=State"),
    ("gen1", "shelly_gen1", 0, "/status"),
    ("gen2", "shelly_gen2", 0, "/rpc/Shelly.GetStatus"),
])
async def test_get_many_reads_every_relay_in_one_request(devices, kind, driver, first, status_path):
    device = devices(kind, 4)
    device.on = [True, False, True, False]
    drv = create_driver(driver, {"hostname": device.hostname, "outlets": 4})
    ids = [str(first + i) for i in (3, 0, 2)]  # any order, a subset
    try:
        device.requests.clear()
        states = await drv.get_many(ids)
        assert list(states) == ids
        assert [s.value for s in states.values()] == ["OFF", "ON", "ON"]
        assert device.requests == [status_path]
        device.requests.clear()
        await drv.set_many({str(first): PortState.OFF, str(first + 1): PortState.ON})  # one request per relay
        assert device.on == [False, True, True, False] and len(device.requests) == 2
    finally:
        await drv.close()
