"""Schema v4 adds training overrides and GitLab exposure to machines, and three tables.

A version-3 database (machine table without the new columns) is upgraded in place and keeps
its rows; the new columns take their defaults.
"""

from __future__ import annotations

import sqlite3

from sqlmodel import Session, SQLModel, create_engine

from valve_console.backend import models
from valve_console.backend.store import SCHEMA_VERSION, Store

MAC = "02:00:00:00:00:43"
NEW_TABLES = {"training", "gitlab_instance", "gitlab_runner"}


async def test_a_version_3_database_is_upgraded_and_keeps_its_machines(tmp_path):
    db = tmp_path / "valve-console.db"
    engine = create_engine(f"sqlite:///{db}")
    SQLModel.metadata.create_all(engine, tables=[t for n, t in SQLModel.metadata.tables.items() if n not in NEW_TABLES])
    with Session(engine) as s:
        s.add(models.SchemaVersion(id=1, version=3))
        s.commit()
    engine.dispose()
    with sqlite3.connect(db) as conn:
        for column in ("training_loops", "training_qualify", "gitlab_exposed"):
            conn.execute(f"ALTER TABLE machine DROP COLUMN {column}")
        conn.execute(
            "INSERT INTO machine (mac_address, base_name, tags, manual_tags, ip_address, ready_for_service,"
            " is_retired, comment, first_seen, last_seen) VALUES (?, 'old', '[]', '[]', '10.0.0.43', 1, 0, '', 0, 0)",
            (MAC,),
        )
    store = Store.for_path(db)
    await store.open()
    try:
        assert SCHEMA_VERSION >= 4
        assert await store.run(lambda s: s.get(models.SchemaVersion, 1).version) == SCHEMA_VERSION
        machine = await store.run(lambda s: s.get(models.Machine, MAC))
        assert (machine.base_name, machine.ready_for_service) == ("old", True)
        assert (machine.training_loops, machine.training_qualify, machine.gitlab_exposed) == (None, None, True)
    finally:
        await store.close()
    with sqlite3.connect(db) as conn:
        assert NEW_TABLES <= {r[0] for r in conn.execute("select name from sqlite_master where type='table'")}
