"""Schema v3 adds the job table; a version-2 database is upgraded in place."""

from __future__ import annotations

import sqlite3

from sqlmodel import Session, SQLModel, create_engine, select

from valve_console.backend import models
from valve_console.backend.store import SCHEMA_VERSION, Store


async def test_a_version_2_database_gets_the_job_table(tmp_path):
    db = tmp_path / "valve-console.db"
    engine = create_engine(f"sqlite:///{db}")
    SQLModel.metadata.create_all(engine, tables=[t for n, t in SQLModel.metadata.tables.items() if n != "job"])
    with Session(engine) as s:
        s.add(models.SchemaVersion(id=1, version=2))
        s.commit()
    engine.dispose()
    with sqlite3.connect(db) as conn:
        assert "job" not in {r[0] for r in conn.execute("select name from sqlite_master")}
    store = Store.for_path(db)
    await store.open()
    try:
        assert SCHEMA_VERSION >= 4
        assert await store.run(lambda s: s.get(models.SchemaVersion, 1).version) == SCHEMA_VERSION
        assert await store.run(lambda s: list(s.exec(select(models.JobRow)).all())) == []
    finally:
        await store.close()
