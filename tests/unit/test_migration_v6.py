"""Schema v6 (power metering): a version-5 database gets the ``power_history`` table and the job's
``energy_j`` column, in place, keeping its jobs."""

from __future__ import annotations

import sqlite3


from tests.unit.old_schema import old_database
from valve_console.backend import models
from valve_console.backend.store import SCHEMA_VERSION, Store


def make_v5_database(db) -> None:
    def undo(conn: sqlite3.Connection) -> None:
        conn.execute("DROP TABLE power_history")
        conn.execute("ALTER TABLE job DROP COLUMN energy_j")
        conn.execute("INSERT INTO job (id, status, state, submitted_at, job_text, target, result, position)"
                     " VALUES ('old', 'PASS', 'done', 1.0, '', '{}', 'kept', 0)")

    old_database(db, 5, undo)


async def test_a_version_5_database_gets_power_history_and_job_energy(tmp_path):
    db = tmp_path / "valve-console.db"
    make_v5_database(db)
    store = Store.for_path(db)
    await store.open()
    try:
        assert SCHEMA_VERSION >= 6
        assert await store.run(lambda s: s.get(models.SchemaVersion, 1).version) == SCHEMA_VERSION
        row = await store.run(lambda s: s.get(models.JobRow, "old"))
        assert (row.result, row.energy_j) == ("kept", None)
        await store.upsert(models.JobRow, {**row.model_dump(), "energy_j": 12.5})
        await store.run(lambda s: s.add(models.PowerHistory(pdu="p", port_id="1", at=60.0, avg_w=1.0, min_w=1.0,
                                                            max_w=1.0, energy_j=60.0, samples=60)))
        assert (await store.run(lambda s: s.get(models.JobRow, "old"))).energy_j == 12.5
    finally:
        await store.close()
