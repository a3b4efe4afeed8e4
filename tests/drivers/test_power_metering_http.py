"""Shelly Gen1/Gen2 and Tasmota reading power (issue 18) against local HTTP servers that answer like the devices.

Field names, units and the sample values follow /work/shared/reference/power-metering.md §6: a real Gen1
meter (``power`` 2.21 W, ``total`` 439 237 watt-minutes), Gen2 ``apower``/``voltage``/``current``/``aenergy``,
Tasmota's ``StatusSNS.ENERGY`` sample (Total 0.003 kWh, Power 26 W, Voltage 239 V, Current 0.106 A).
"""

from __future__ import annotations

import pytest

from tests.drivers.fake_devices import FakeDevice
from tests.drivers.test_http_drivers import devices  # noqa: F401 - the fixture
from valve_console.drivers.pdu import DriverError, create_driver
from valve_console.drivers.pdu.base import OutletPower, meters

GEN1_METER = {"power": 2.21, "overpower": 0, "is_valid": True, "timestamp": 0, "counters": [2.115, 2.114, 2.142],
              "total": 439237}


def gen2_meter(apower, voltage=230.1, current=0.262, total=5812.5):
    return {"apower": apower, "voltage": voltage, "current": current,
            "aenergy": {"total": total, "by_minute": [1.1, 2.2, 3.3], "minute_ts": 1764064800}}


async def test_shelly_gen1_reads_watts_and_watt_minutes_in_the_status_call(devices):  # noqa: F811
    relay: FakeDevice = devices("gen1", 2)
    relay.meters = [GEN1_METER, {**GEN1_METER, "power": 0, "total": 60}]
    drv = create_driver("shelly_gen1", {"hostname": relay.hostname, "outlets": 2})
    try:
        assert meters(drv)
        reading = await drv.read_power(["0", "1"])
        assert reading.outlets == {
            "0": OutletPower(watts=2.21, energy_wh=pytest.approx(439237 / 60)),  # 7 320.6 Wh: W·min / 60
            "1": OutletPower(watts=0.0, energy_wh=1.0),
        }
        assert reading.outlets["0"].volts is None and reading.outlets["0"].amps is None  # not offered, not 0
        assert reading.total_watts is None and reading.problems == ()
        assert relay.requests == ["/status"]  # one request for every relay
    finally:
        await drv.close()


async def test_shelly_gen1_without_meters_and_with_an_invalid_one(devices):  # noqa: F811
    plain = devices("gen1", 1)  # a Shelly 1: no meters in /status
    odd = devices("gen1", 2)
    odd.meters = [{**GEN1_METER, "is_valid": False}, {**GEN1_METER, "power": "lots", "total": -60}]
    drv = create_driver("shelly_gen1", {"hostname": plain.hostname, "outlets": 1})
    drv2 = create_driver("shelly_gen1", {"hostname": odd.hostname, "outlets": 2})
    try:
        reading = await drv.read_power(["0"])
        assert reading.outlets == {} and reading.problems == ()
        reading = await drv2.read_power(["0", "1"])
        assert reading.outlets == {}
        text = "\n".join(reading.problems)
        assert "outlet 0: the device says its meter reading is not valid" in text
        assert "outlet 1 watts: 'lots' is not a number" in text
        assert "outlet 1 energy_wh: -1 is" not in text and "outlet 1 energy_wh" in text  # -60 W·min: negative
    finally:
        await drv.close()
        await drv2.close()


async def test_shelly_gen2_one_switch_and_all_switches(devices):  # noqa: F811
    relay = devices("gen2", 2, password="pw")
    relay.meters = [gen2_meter(143.0), gen2_meter(0.0, current=0.0, total=0)]
    drv = create_driver("shelly_gen2", {"hostname": relay.hostname, "outlets": 2, "password": "pw"})
    try:
        one = await drv.read_power(["1"])
        assert one.outlets == {"1": OutletPower(watts=0.0, amps=0.0, volts=230.1, energy_wh=0.0)}
        assert relay.requests[-1].startswith("/rpc/Switch.GetStatus?id=1")
        both = await drv.read_power(["0", "1"])
        assert both.outlets["0"] == OutletPower(watts=143.0, amps=0.262, volts=230.1, energy_wh=5812.5)
        assert relay.requests[-1] == "/rpc/Shelly.GetStatus"
        assert both.total_watts is None and both.problems == ()
    finally:
        await drv.close()


async def test_shelly_gen2_without_a_meter_and_with_garbage(devices):  # noqa: F811
    plain = devices("gen2", 2)  # a Plus 2 without PM: no apower
    bad = devices("gen2", 2)
    bad.meters = [gen2_meter(float("nan"), voltage=-3, current=900.0), gen2_meter(25000.0, total="x")]
    bad.meters[1]["voltage"] = True  # JSON true where a number belongs
    drv = create_driver("shelly_gen2", {"hostname": plain.hostname, "outlets": 2})
    drv2 = create_driver("shelly_gen2", {"hostname": bad.hostname, "outlets": 2})
    try:
        assert (await drv.read_power(["0", "1"])).outlets == {}
        reading = await drv2.read_power(["0", "1"])
        assert reading.outlets == {"0": OutletPower(energy_wh=5812.5), "1": OutletPower(amps=0.262)}
        text = "\n".join(reading.problems)
        assert "outlet 0 watts: nan is not a finite number" in text
        assert "outlet 0 volts: -3 is negative" in text
        assert "outlet 0 amps: 900 is beyond any plausible reading" in text
        assert "outlet 1 watts: 25000 is beyond" in text
        assert "outlet 1 energy_wh: 'x' is not a number" in text
        assert "outlet 1 volts: True is not a number" in text
    finally:
        await drv.close()
        await drv2.close()


async def test_tasmota_status_8_energy(devices):  # noqa: F811
    plug = devices("tasmota", 1)
    plug.energy = {"TotalStartTime": "2026-01-01T00:00:00", "Total": 0.003, "Yesterday": 0.0, "Today": 0.003,
                   "Power": 26, "ApparentPower": 27, "ReactivePower": 5, "Factor": 0.96, "Voltage": 239,
                   "Current": 0.106}
    drv = create_driver("tasmota", {"hostname": plug.hostname})
    try:
        assert meters(drv)
        reading = await drv.read_power(["1"])
        assert reading.outlets == {"1": OutletPower(watts=26.0, amps=0.106, volts=239.0, energy_wh=3.0)}
        assert (reading.total_watts, reading.total_energy_wh) == (26.0, 3.0)
        assert reading.problems == ()
        assert plug.requests == ["/cm?cmnd=Status+8"]
    finally:
        await drv.close()


async def test_tasmota_multi_relay_single_channel_is_the_device_total_and_arrays_are_per_relay(devices):  # noqa: F811
    board = devices("tasmota", 2)
    board.energy = {"Total": 12.5, "Power": 80, "Voltage": 230, "Current": 0.4}
    drv = create_driver("tasmota", {"hostname": board.hostname, "outlets": 2})
    try:
        reading = await drv.read_power(["1", "2"])
        assert reading.outlets == {}  # one meter for both relays: not an outlet's reading
        assert (reading.total_watts, reading.total_energy_wh) == (80.0, 12500.0)
        board.energy = {"Total": [1.5, 0.25], "Power": [60, 0], "Voltage": [230, 230], "Current": [0.3, 0]}
        reading = await drv.read_power(["1", "2"])
        assert reading.outlets == {"1": OutletPower(watts=60.0, amps=0.3, volts=230.0, energy_wh=1500.0),
                                   "2": OutletPower(watts=0.0, amps=0.0, volts=230.0, energy_wh=250.0)}
    finally:
        await drv.close()


async def test_tasmota_without_energy_monitor_and_with_garbage(devices):  # noqa: F811
    plug = devices("tasmota", 1)
    drv = create_driver("tasmota", {"hostname": plug.hostname})
    try:
        reading = await drv.read_power(["1"])
        assert reading.outlets == {} and reading.total_watts is None and reading.problems == ()
        plug.energy = {"Total": "n/a", "Power": -26, "Voltage": 1e9, "Current": 0.1}
        reading = await drv.read_power(["1"])
        assert reading.outlets == {"1": OutletPower(amps=0.1)}
        assert reading.total_watts is None and reading.total_energy_wh is None
        text = "\n".join(reading.problems)
        assert "outlet 1 watts: -26 is negative" in text and "outlet 1 volts" in text
        assert "outlet 1 energy_wh: 'n/a' is not a number" in text
        assert len(reading.problems) == 3  # the device total repeats the outlet's reading: not said twice
    finally:
        await drv.close()


async def test_an_unreachable_device_is_a_driver_error(devices):  # noqa: F811
    from tests.drivers.conftest import free_tcp_port

    for key in ("shelly_gen1", "shelly_gen2", "tasmota"):
        drv = create_driver(key, {"hostname": f"127.0.0.1:{free_tcp_port()}", "timeout": 0.5, "outlets": 1})
        try:
            with pytest.raises(DriverError, match="unreachable"):
                await drv.read_power(["1" if key == "tasmota" else "0"])
        finally:
            await drv.close()
