"""PowerService's per-PDU batches, with a recording in-memory driver (the snmpd-backed tests are in
tests/drivers/test_power_snmpd.py)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from sqlmodel import select

from valve_console.backend import power as power_module
from valve_console.backend.errors import Conflict
from valve_console.backend.events import EventBus
from valve_console.backend.models import OutletLog
from valve_console.backend.power import PowerError, PowerService, _Switch
from valve_console.backend.store import Store
from valve_console.drivers.pdu import DriverError, OutletError, PortState
from valve_console.drivers.pdu.base import BatchFallback
from valve_console.drivers.pdu.dummy import DummyConfig, DummyPDU

from tests.conftest import eventually


class RecordingPDU(DummyPDU):
    """A dummy PDU that records every batch call and can misbehave per outlet."""

    def __init__(self, ports: int = 8) -> None:
        super().__init__(DummyConfig(ports=ports, initial_state="OFF"))
        self.calls: list[tuple[str, object]] = []
        self.stuck: set[str] = set()  # accept the command, change nothing
        self.refuse: set[str] = set()  # the PDU answers with an error for this outlet
        self.down = False

    async def get_many(self, port_ids: list[str]) -> dict[str, PortState]:
        if self.down:
            raise DriverError("no answer (test)")
        self.calls.append(("get_many", list(port_ids)))
        return {p: self._state[p] for p in port_ids}

    async def set_many(self, states: dict[str, PortState]) -> None:
        if self.down:
            raise DriverError("no answer (test)")
        self.calls.append(("set_many", {p: s.value for p, s in states.items()}))
        for port_id in states:
            if port_id in self.refuse:  # all or nothing, like an SNMP SET
                raise OutletError(port_id, f"outlet {port_id} refused (test)")
        for port_id, state in states.items():
            if port_id not in self.stuck:
                self._state[port_id] = state

    def sets(self) -> list[dict[str, str]]:
        return [arg for name, arg in self.calls if name == "set_many"]  # type: ignore[misc]


@pytest.fixture
async def setup(tmp_path, monkeypatch):
    driver = RecordingPDU()
    monkeypatch.setattr(power_module, "create_driver", lambda name, config: driver)
    monkeypatch.setattr(power_module, "READBACK_SETTLE", 0.3)
    monkeypatch.setattr(power_module, "READBACK_PAUSE", 0.05)
    store = Store.for_path(tmp_path / "db.sqlite")
    await store.open()
    power = PowerService(store, EventBus(), default_off_delay=0, poll_interval=3600, timeout=1.0)
    await power.start()
    await power.add_pdu("p", "dummy", {}, reserved=["6"])
    await power.read_outlet("p", "0")  # queued behind the first poll
    driver.calls.clear()
    try:
        yield power, driver
    finally:
        await power.stop()
        await store.close()


async def test_a_burst_is_one_set_many_and_one_get_many(setup):
    power, driver = setup
    results = await asyncio.gather(*(power.set_outlet("p", str(i), "on") for i in range(5)))
    assert results == [PortState.ON] * 5
    assert driver.calls == [("set_many", {str(i): "ON" for i in range(5)}), ("get_many", [str(i) for i in range(5)])]
    rows = await power.store.run(lambda s: s.exec(select(OutletLog).where(OutletLog.source == "api")).all())
    assert sorted((r.port_id, r.state) for r in rows) == [(str(i), "ON") for i in range(5)]


async def test_a_reboot_burst_is_an_off_batch_then_an_on_batch(setup):
    power, driver = setup
    await asyncio.gather(*(power.set_outlet("p", str(i), "on") for i in range(3)))
    driver.calls.clear()
    assert await asyncio.gather(*(power.set_outlet("p", str(i), "reboot") for i in range(3))) == [PortState.ON] * 3
    assert driver.sets() == [dict.fromkeys("012", "OFF"), dict.fromkeys("012", "ON")]


async def test_one_outlet_twice_goes_in_two_batches_in_order(setup):
    power, driver = setup
    rt = power.pdus["p"]

    def switch(port_id: str, state: PortState) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        power._queue_switch(rt, _Switch(port_id, state, "t", fut))
        return fut

    # _queue_switch bypasses set_outlet's per-outlet lock: the worker itself must keep one entry per outlet.
    results = await asyncio.gather(
        switch("1", PortState.ON), switch("2", PortState.ON), switch("1", PortState.OFF), switch("3", PortState.ON),
    )
    assert results == [PortState.ON, PortState.ON, PortState.OFF, PortState.ON]
    assert driver.sets() == [{"1": "ON", "2": "ON"}, {"1": "OFF", "3": "ON"}]
    assert driver._state["1"] == PortState.OFF


async def test_concurrent_commands_for_one_outlet_keep_their_order(setup):
    power, driver = setup
    sequence = ["on", "off", "on", "off"]
    tasks = []
    for state in sequence:
        tasks.append(asyncio.create_task(power.set_outlet("p", "1", state)))
        tasks.append(asyncio.create_task(power.set_outlet("p", "2", state)))
    results = await asyncio.gather(*tasks)
    assert [r.value for r in results] == [s.upper() for s in sequence for _ in range(2)]
    assert [batch["1"] for batch in driver.sets() if "1" in batch] == ["ON", "OFF", "ON", "OFF"]


async def test_a_read_back_mismatch_fails_only_that_caller(setup):
    power, driver = setup
    driver.stuck = {"2"}
    results = await asyncio.gather(*(power.set_outlet("p", str(i), "on") for i in range(4)), return_exceptions=True)
    assert results[0] == results[1] == results[3] == PortState.ON
    assert isinstance(results[2], PowerError) and "outlet 2 of PDU p reads OFF after switching ON" in str(results[2])
    assert driver.sets() == [dict.fromkeys("0123", "ON")]
    gets = [arg for name, arg in driver.calls if name == "get_many"]
    assert gets[0] == ["0", "1", "2", "3"] and len(gets) > 1 and all(g == ["2"] for g in gets[1:])  # re-reads
    assert power.pdu_json("p")["state"] == "reachable"
    # the outlet says so until a switch reads back right; the others never did
    ports = power.pdu_json("p")["ports"]
    assert ports["2"]["mismatch"] == "read back OFF after switching ON"
    assert [p for p, info in ports.items() if info["mismatch"]] == ["2"]
    driver.stuck = set()
    sub = power.bus.subscribe(["outlet"])
    assert await power.set_outlet("p", "2", "on") == PortState.ON
    assert power.pdu_json("p")["ports"]["2"]["mismatch"] is None
    assert [e.data["mismatch"] for e in sub.drain() if e.data["port_id"] == "2"] == [None]
    assert power.pdus["p"].mismatches == {"2": 1}


async def test_a_refused_outlet_fails_only_its_caller_and_the_rest_are_sent_again(setup):
    power, driver = setup
    driver.refuse = {"1"}
    results = await asyncio.gather(*(power.set_outlet("p", str(i), "on") for i in range(3)), return_exceptions=True)
    assert results[0] == results[2] == PortState.ON
    assert isinstance(results[1], PowerError) and "outlet 1 refused (test)" in str(results[1])
    assert driver.sets() == [dict.fromkeys("012", "ON"), dict.fromkeys("02", "ON")]
    assert power.pdu_json("p")["state"] == "reachable"


async def test_reserved_and_locked_outlets_in_a_burst_are_refused_the_others_switch(setup):
    power, driver = setup
    power.lock("p", "3", "job-1")
    results = await asyncio.gather(*(power.set_outlet("p", str(i), "on") for i in range(2, 8)), return_exceptions=True)
    by_port = dict(zip(range(2, 8), results, strict=True))
    assert isinstance(by_port[6], Conflict) and "reserved" in str(by_port[6])
    assert isinstance(by_port[3], Conflict) and "locked by job-1" in str(by_port[3])
    assert [by_port[i] for i in (2, 4, 5, 7)] == [PortState.ON] * 4
    assert driver.sets() == [dict.fromkeys("2457", "ON")]
    assert await power.set_outlet("p", "3", "on", owner="job-1") == PortState.ON


async def test_an_unreachable_pdu_fails_every_caller_of_the_batch(setup):
    power, driver = setup
    driver.down = True
    results = await asyncio.gather(*(power.set_outlet("p", str(i), "on") for i in range(4)), return_exceptions=True)
    assert all(isinstance(r, PowerError) and "PDU p: no answer (test)" in str(r) for r in results), results
    pdu = power.pdu_json("p")
    assert pdu["state"] == "unreachable" and pdu["error"] == "no answer (test)"
    driver.down = False
    assert await power.set_outlet("p", "0", "on") == PortState.ON
    assert power.pdu_json("p")["state"] == "reachable"


async def test_min_off_wait_happens_before_queueing_so_it_delays_no_other_outlet(setup):
    power, driver = setup
    await power.set_outlet("p", "0", "off")  # already off: logged as off now
    power._last_off[("p", "0")] = time.time()
    power.default_off_delay = 0.4
    driver.calls.clear()
    results = await asyncio.gather(*(power.set_outlet("p", str(i), "on") for i in range(3)))
    assert results == [PortState.ON] * 3
    assert driver.sets() == [dict.fromkeys("12", "ON"), {"0": "ON"}]


async def test_the_pdu_goes_on_while_the_log_is_written_and_callers_wait_for_the_commit(setup, monkeypatch):
    power, driver = setup
    await power.set_outlet("p", "0", "on")
    driver.calls.clear()
    gate = threading.Event()
    insert = power._insert_log

    def slow_insert(rows):
        gate.wait(5)  # the store thread is stuck in a commit
        insert(rows)

    monkeypatch.setattr(power, "_insert_log", slow_insert)
    reboot = asyncio.create_task(power.set_outlet("p", "0", "reboot"))
    # The OFF's rows are not committed, yet the PDU already got the ON: a slow disk does not hold it up.
    await eventually(lambda: driver.sets() == [{"0": "OFF"}, {"0": "ON"}], "the ON sent")
    await asyncio.sleep(0.05)
    assert not reboot.done()  # but the caller hears back only once its rows are stored
    sub = power.bus.subscribe(["outlet"])
    gate.set()
    assert await asyncio.wait_for(reboot, 5) == PortState.ON
    # Each event carries the state it announces, though the ON was done before the OFF was stored.
    assert [e.data["state"] for e in sub.drain() if e.data["port_id"] == "0"] == ["OFF", "ON"]
    rows = await power.store.run(lambda s: s.exec(select(OutletLog).where(OutletLog.source == "api")).all())
    assert [r.state for r in rows][-2:] == ["OFF", "ON"]


async def test_a_reboot_waits_the_min_off_time_between_off_and_on(setup):
    power, driver = setup
    await power.set_outlet("p", "0", "on")
    power.default_off_delay = 0.3
    driver.calls.clear()
    started = time.monotonic()
    assert await power.set_outlet("p", "0", "reboot") == PortState.ON
    assert time.monotonic() - started >= 0.3
    assert driver.sets() == [{"0": "OFF"}, {"0": "ON"}]


async def test_a_power_on_given_up_during_its_min_off_wait_never_happens(setup):
    power, driver = setup
    await power.set_outlet("p", "0", "off")
    power._last_off[("p", "0")] = time.time()
    power.default_off_delay = 0.3
    driver.calls.clear()
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(power.set_outlet("p", "0", "on"), 0.05)
    await asyncio.sleep(0.4)
    assert driver.sets() == [] and driver._state["0"] == PortState.OFF
    assert await power.set_outlet("p", "1", "on") == PortState.ON  # the queue still serves others
    assert not power.pdus["p"].delayed


async def test_removing_a_pdu_fails_a_power_on_waiting_for_its_min_off_time(setup):
    power, driver = setup
    await power.set_outlet("p", "0", "on")
    power.default_off_delay = 30
    reboot = asyncio.create_task(power.set_outlet("p", "0", "reboot"))
    await eventually(lambda: power.pdus["p"].delayed, "the power-on waiting")
    await power.remove_pdu("p")
    with pytest.raises(PowerError, match="was removed"):
        await asyncio.wait_for(reboot, 2)


async def test_removing_a_pdu_during_a_batch_fails_its_callers_instead_of_leaving_them_waiting(setup):
    power, driver = setup
    entered, release = asyncio.Event(), asyncio.Event()
    set_many = driver.set_many

    async def slow_set_many(states):
        entered.set()
        await release.wait()  # a PDU that takes its time
        await set_many(states)

    driver.set_many = slow_set_many
    switches = [asyncio.create_task(power.set_outlet("p", str(i), "on")) for i in range(2)]
    await asyncio.wait_for(entered.wait(), 2)
    await power.remove_pdu("p")
    for task in switches:
        with pytest.raises(PowerError, match="was removed"):
            await asyncio.wait_for(task, 2)


class PlainPDU:
    """A driver written against the old interface: get and set only."""

    name = "plain"

    def __init__(self) -> None:
        self.state = {str(i): PortState.OFF for i in range(3)}
        self.fail: str | None = None

    async def ports(self):
        from valve_console.drivers.pdu import Outlet

        return [Outlet(p) for p in self.state]

    async def get(self, port_id: str) -> PortState:
        return self.state[port_id]

    async def set(self, port_id: str, state: PortState) -> None:
        if port_id == self.fail:
            raise DriverError(f"outlet {port_id} jammed")
        self.state[port_id] = state

    async def close(self) -> None:
        return None


async def test_a_driver_without_batch_calls_is_switched_outlet_by_outlet(tmp_path, monkeypatch):
    driver = PlainPDU()
    monkeypatch.setattr(power_module, "create_driver", lambda name, config: driver)
    store = Store.for_path(tmp_path / "db.sqlite")
    await store.open()
    power = PowerService(store, EventBus(), default_off_delay=0, poll_interval=3600, timeout=1.0)
    await power.start()
    try:
        await power.add_pdu("p", "plain", {})
        driver.fail = "1"
        results = await asyncio.gather(*(power.set_outlet("p", str(i), "on") for i in range(3)),
                                       return_exceptions=True)
        assert results[0] == results[2] == PortState.ON
        assert isinstance(results[1], PowerError) and "outlet 1 jammed" in str(results[1])
        assert driver.state == {"0": PortState.ON, "1": PortState.OFF, "2": PortState.ON}
    finally:
        await power.stop()
        await store.close()


async def test_batch_fallback_names_what_was_switched_before_a_failure():
    driver = PlainPDU()
    driver.set_many = BatchFallback.set_many.__get__(driver)  # type: ignore[attr-defined]
    driver.fail = "0"
    with pytest.raises(DriverError) as first:
        await driver.set_many({"0": PortState.ON, "1": PortState.ON})
    assert not isinstance(first.value, OutletError)  # nothing switched: maybe the PDU is down
    driver.fail = "2"
    with pytest.raises(OutletError) as later:
        await driver.set_many({"0": PortState.ON, "1": PortState.ON, "2": PortState.ON})
    assert later.value.port_id == "2" and later.value.applied == ["0", "1"]
