"""Power metering (issue 18): the PowerMeter's accounting, history, flags and sanity checks, fed readings at
chosen times; and PowerService's sampler on the metered dummy PDU (a switch never waits for a read)."""

from __future__ import annotations

import asyncio
import logging
import math

import pytest

from tests.conftest import eventually
from valve_console.backend.events import EventBus
from valve_console.backend.metering import PowerMeter
from valve_console.backend.power import PowerService
from valve_console.backend.store import Store
from valve_console.drivers.pdu.base import OutletPower, PortState, PowerReading
from valve_console.drivers.pdu.dummy import MeteredDummyPDU

ON = {"0": PortState.ON, "1": PortState.ON}
T0 = 1_700_000_000.0  # a minute boundary: 1_700_000_000 % 60 == 20, so readings start 20 s into a minute


@pytest.fixture
async def store(tmp_path):
    s = Store.for_path(tmp_path / "db.sqlite")
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def reading(**outlets: OutletPower) -> PowerReading:
    return PowerReading({port.lstrip("p"): power for port, power in outlets.items()})


def test_energy_is_integrated_without_a_counter_and_read_from_one_where_there_is():
    meter = PowerMeter(store=None)  # type: ignore[arg-type]  # no writes in this test
    for i in range(11):  # 100 W for 10 s on p0; p1's counter counts 0.5 Wh per second (1800 W)
        meter.take("d", reading(p0=OutletPower(watts=100.0), p1=OutletPower(watts=1.0, energy_wh=10 + 0.5 * i)),
                   T0 + i, ON, 1.0)
    assert meter.energy_j("d", "0") == pytest.approx(1000.0)
    assert meter.energy_j("d", "1") == pytest.approx(10 * 0.5 * 3600)  # the counter, not the 1 W reported
    assert meter.energy_j("d", "2") is None


def test_a_counter_that_wraps_resets_or_jumps_is_integrated_over_that_step(caplog):
    meter = PowerMeter(store=None)  # type: ignore[arg-type]
    caplog.set_level(logging.WARNING)
    counters = [100.0, 100.1, 0.0, 0.1, 999_999.0, 999_999.1]  # +0.1 Wh, reset, +0.1, absurd jump, +0.1
    for i, wh in enumerate(counters):
        meter.take("d", reading(p0=OutletPower(watts=360.0, energy_wh=wh)), T0 + i, ON, 1.0)
    # counted steps: 3 x 0.1 Wh (360 J each); the reset and the jump: 360 W x 1 s each
    assert meter.energy_j("d", "0") == pytest.approx(5 * 360.0)
    words = [r.getMessage() for r in caplog.records]
    assert sum("went down" in w for w in words) == 1 and sum("jumped" in w for w in words) == 1
    for i, wh in enumerate([0.0, 0.0 + 0.1]):  # another reset: counted, not said again
        meter.take("d", reading(p0=OutletPower(watts=360.0, energy_wh=wh)), T0 + 10 + i, ON, 1.0)
    assert sum("went down" in r.getMessage() for r in caplog.records) == 1
    assert sum(n for (pdu, kind), n in meter.problems.items() if "went down" in kind) == 2


def test_garbage_negative_and_absurd_readings_never_reach_the_series():
    meter = PowerMeter(store=None)  # type: ignore[arg-type]
    bad = [math.nan, math.inf, -5.0, 1e9, "12W"]
    for i, watts in enumerate([50.0, *bad, 60.0]):
        meter.take("d", reading(p0=OutletPower(watts=watts)), T0 + i, ON, 1.0)  # type: ignore[arg-type]
    series = list(meter.outlets[("d", "0")].series)
    assert [w for _, w in series] == [50.0, 60.0]
    assert meter.outlet_power("d", "0")["watts"] == 60.0
    # W x dt only between believable readings: their mean (55 W) over the 6 s between them
    assert meter.energy_j("d", "0") == pytest.approx(55.0 * 6)
    assert sum(meter.problem_counts().values()) >= len(bad)
    # A reading for an outlet the PDU does not have, and a refused total: said, never a crash
    meter.take("d", PowerReading({"9": OutletPower(watts=1.0)}, total_watts=-3.0), T0 + 20, ON, 1.0)
    assert meter.pdus["d"].total_watts is None and ("d", "9") not in meter.outlets


def test_power_events_are_rate_limited_per_outlet():
    meter = PowerMeter(store=None, event_interval=5.0)  # type: ignore[arg-type]
    due = [meter.take("d", reading(p0=OutletPower(watts=10.0)), T0 + i, ON, 1.0) for i in range(12)]
    assert [i for i, (ports, _) in enumerate(due) if ports] == [0, 5, 10]
    assert [i for i, (_, pdu) in enumerate(due) if pdu] == [0, 5, 10]


async def test_history_one_row_per_minute_series_and_pruning(store):
    meter = PowerMeter(store, history_days=1.0)
    for i in range(0, 180, 2):  # three minutes (and a bit) at 0.5 Hz: 100 W, then 200 W
        meter.take("d", reading(p0=OutletPower(watts=100.0 if i < 100 else 200.0)), T0 + i, ON, 2.0)
    await meter.stop()  # closes the minute in progress and writes everything
    rows = await store.run_raw(lambda: store.engine.connect().exec_driver_sql(
        "SELECT at, avg_w, min_w, max_w, energy_j, samples FROM power_history ORDER BY at").fetchall())
    assert [r[0] for r in rows] == [T0 - 20, T0 + 40, T0 + 100, T0 + 160]
    first = rows[0]
    assert (first[1], first[2], first[3], first[5]) == (100.0, 100.0, 100.0, 20)
    assert sum(r[4] for r in rows) == pytest.approx(meter.energy_j("d", "0"))
    # A fresh meter (a restart): the series comes from the store, one point per minute
    fresh = PowerMeter(store)
    assert [p[0] for p in await fresh.series("d", "0", T0 - 60)] == [T0 - 20, T0 + 40, T0 + 100, T0 + 160]
    assert await fresh.series("d", "0", T0 + 50) == [(T0 + 100, 200.0), (T0 + 160, 200.0)]
    # Memory and store together: new readings after the stored ones
    fresh.take("d", reading(p0=OutletPower(watts=7.0)), T0 + 300, ON, 1.0)
    points = await fresh.series("d", "0", T0)
    assert points[-1] == (T0 + 300, 7.0) and points[0] == (T0 + 40, 100.0)
    # Retention: a day later the rows are gone
    assert await meter.prune(now=T0 + 86400 + 200) == 4
    assert await PowerMeter(store).series("d", "0", 0) == []


def test_no_draw_and_silent_flags_are_raised_and_cleared():
    changed: list[tuple[str, str]] = []
    notes: list[tuple[str, dict]] = []
    activity = {"m": None}
    meter = PowerMeter(
        store=None,  # type: ignore[arg-type]
        no_draw_watts=2.0, no_draw_seconds=10.0, silent_seconds=30.0,
        machine_at=lambda pdu, port: "m" if port == "0" else None,
        console_activity=lambda mac: activity[mac],
        changed=lambda mac, action: changed.append((mac, action)),
        training_note=lambda mac, flag: notes.append((mac, flag)),
    )

    def at(t: float, watts: float, state: PortState = PortState.ON) -> None:
        meter.take("d", reading(p0=OutletPower(watts=watts)), T0 + t, {"0": state}, 1.0)

    for t in range(0, 10):
        at(t, 0.5)
    assert meter.power_flag("m") is None
    at(10, 0.5)
    assert meter.power_flag("m") == {"kind": "no_draw", "reason": "no power draw: check its plug or PSU",
                                     "since": T0 + 10}
    assert changed == [("m", "updated")] and notes[0][1]["kind"] == "no_draw"
    at(11, 0.5)
    assert len(changed) == 1  # said once
    at(12, 0.5, PortState.OFF)  # off: nothing to say
    assert meter.power_flag("m") is None and len(changed) == 2
    # Steady power, the console silent: flagged after 30 s; console output clears it
    for t in range(20, 50):
        at(t, 80.0)
    assert meter.power_flag("m") is None
    at(50, 80.0)
    assert meter.power_flag("m")["kind"] == "silent" and meter.power_flag("m")["reason"] == "powered but silent"
    activity["m"] = T0 + 51
    at(52, 80.0)
    assert meter.power_flag("m") is None
    assert [a for _, a in changed] == ["updated"] * 4


# ------------------------------------------------------------------------ the sampler in PowerService
@pytest.fixture
async def service(store):
    bus = EventBus()
    meter = PowerMeter(store, event_interval=0.0)
    power = PowerService(store, bus, poll_interval=3600, timeout=1.0, meter=meter, sample_interval=0.02)
    await power.start()
    try:
        yield power, bus
    finally:
        await power.stop()
        await meter.stop()


async def test_readings_reach_the_outlet_and_pdu_json_and_events(service):
    power, bus = service
    sub = bus.subscribe(["outlet"])
    await power.add_pdu("d", "dummy", {"ports": 2, "meter": True, "initial_state": "OFF"})
    drv = power.pdus["d"].driver
    assert isinstance(drv, MeteredDummyPDU)
    drv.set_power("1", 33.0, energy_wh=5.0, volts=230.0)
    out = await eventually(lambda: power.pdu_json("d")["ports"]["1"]["power"], "a reading")
    assert out["watts"] == 33.0 and out["volts"] == 230.0 and out["energy_wh"] == 5.0
    pdu = power.pdu_json("d")
    assert pdu["metered"] is True and pdu["total_watts"] == 33.0 and pdu["power_at"] is not None
    assert pdu["ports"]["0"]["metered"] is True and pdu["ports"]["0"]["power"]["watts"] == 0.0
    events = await sub.get_batch(timeout=1.0)
    assert any(e.data.get("power") for e in events)


async def test_a_switch_never_waits_for_a_slow_read(service):
    power, _ = service
    await power.add_pdu("d", "dummy", {"ports": 2, "meter": True})
    drv = power.pdus["d"].driver
    await eventually(lambda: drv.reads_done >= 1, "a first read")
    drv.read_delay = 3600.0  # a meter that never answers
    started = drv.reads_started
    await eventually(lambda: drv.reads_started > started, "a slow read in flight")
    done = drv.reads_done
    assert await power.set_outlet("d", "0", "off") == PortState.OFF
    assert drv.reads_done == done  # the switch went first: the read was given up, not waited for
    assert power.pdu_json("d")["state"] == "reachable"
    assert power.meter.pdus["d"].preempted >= 1


async def test_a_failing_read_does_not_make_the_pdu_unreachable(service, caplog):
    power, _ = service
    caplog.set_level(logging.WARNING)
    await power.add_pdu("d", "dummy", {"ports": 2, "meter": True})
    drv = power.pdus["d"].driver
    from valve_console.drivers.pdu import DriverError

    drv.read_error = DriverError("meter board not answering")
    await eventually(lambda: power.meter.pdus.get("d") and power.meter.pdus["d"].failures >= 3, "failed reads")
    assert power.pdu_json("d")["state"] == "reachable"
    assert sum("meter board not answering" in r.getMessage() for r in caplog.records) == 1
    assert await power.set_outlet("d", "1", "off") == PortState.OFF
    drv.read_error = None
    drv.set_power("1", 12.0)
    await eventually(lambda: (power.pdu_json("d")["ports"]["1"]["power"] or {}).get("watts") == 12.0, "reads again")


async def test_a_per_pdu_interval_and_an_unmetered_dummy(service):
    power, _ = service
    await power.add_pdu("slow", "dummy", {"ports": 1, "meter": True, "power_sample_interval": 120})
    assert power.pdus["slow"].sample_interval == 120.0
    await power.add_pdu("plain", "dummy", {"ports": 1})
    assert power.pdu_json("plain")["metered"] is False and power.is_metered("plain", "0") is False
    from valve_console.backend.errors import BadRequest

    with pytest.raises(BadRequest):
        await power.add_pdu("bad", "dummy", {"ports": 1, "meter": True, "power_sample_interval": "often"})
    await asyncio.sleep(0)
