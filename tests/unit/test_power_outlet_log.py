"""PowerService's OutletLog writes: several PDUs' batches share a commit, callers are answered only
once their rows are committed, and the last OFF survives a restart (dummy PDUs, a real SQLite file)."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from valve_console.backend.events import EventBus
from valve_console.backend.power import PowerService
from valve_console.backend.store import Store
from valve_console.drivers.pdu import PortState

PDUS, PORTS = 3, 4


@pytest.fixture
async def store(tmp_path):
    store = Store.for_path(tmp_path / "db.sqlite")
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def started(store: Store, add: bool) -> PowerService:
    power = PowerService(store, EventBus(), default_off_delay=0, poll_interval=3600, timeout=1.0)
    await power.start()
    for p in range(PDUS):
        if add:
            await power.add_pdu(f"d{p}", "dummy", {"ports": PORTS, "initial_state": "ON"})
        await power.read_outlet(f"d{p}", "0")  # behind the first poll: the outlets are known
    return power


def committed_rows(path) -> list[tuple[str, str, str, str]]:
    """The api rows another connection sees: only committed ones."""
    with sqlite3.connect(path) as db:
        return sorted(db.execute("SELECT pdu, port_id, state, source FROM outletlog WHERE source = 'api'").fetchall())


async def test_rows_are_committed_when_callers_are_answered_and_the_last_off_survives_a_restart(store, tmp_path):
    power = await started(store, add=True)
    try:
        results = await asyncio.gather(*(power.set_outlet(f"d{p}", str(o), "reboot")
                                         for p in range(PDUS) for o in range(PORTS)))
        assert results == [PortState.ON] * (PDUS * PORTS)
        # Read at once, from outside the store thread: every OFF and ON is already committed.
        assert committed_rows(tmp_path / "db.sqlite") == sorted(
            (f"d{p}", str(o), state, "api") for p in range(PDUS) for o in range(PORTS) for state in ("OFF", "ON"))
        offs = {key: at for key, at in power._last_off.items() if key[0].startswith("d")}
    finally:
        await power.stop()
    assert len(offs) == PDUS * PORTS

    again = await started(store, add=False)
    try:
        assert {key: again._last_off[key] for key in offs} == offs  # min-off time counts from these
    finally:
        await again.stop()


async def test_a_failed_log_write_still_answers_the_switched_state_and_reports_it(store, monkeypatch, caplog):
    """Issue 15 (12): an outlet the PDU switched is answered with its read-back state even when its log
    row cannot be written (it used to fail the callers with 409 "log not written"); the failure is logged
    and the store's health says why until a write works again."""
    power = await started(store, add=True)
    try:
        def broken(rows):
            raise sqlite3.OperationalError("disk I/O error (test)")

        monkeypatch.setattr(power, "_insert_log", broken)
        results = await asyncio.gather(*(power.set_outlet(f"d{p}", "1", "off") for p in range(PDUS)))
        assert results == [PortState.OFF] * PDUS
        assert all(power.outlet_state(f"d{p}", "1") == PortState.OFF for p in range(PDUS))
        assert "the outlet log was not written (the database failed: disk I/O error (test))" in caplog.text
        assert store.health() == ("degraded", store.health()[1])
        assert store.health()[1].startswith("the database failed: disk I/O error (test); writes refused since")
        monkeypatch.undo()
        assert await power.set_outlet("d0", "2", "off") == PortState.OFF
        assert store.health() == ("ok", None)
    finally:
        await power.stop()  # returns (it used to hang on 3.11 when a cancel met a finishing command)
