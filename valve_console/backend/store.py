"""Storage: one SQLAlchemy engine (SQLite in WAL mode by default) used from one worker thread.

All database work runs in a single dedicated thread, so the event loop never blocks on SQLite
and writes are serialised. Every write is one transaction.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, create_engine, select

from . import models

log = logging.getLogger(__name__)
T = TypeVar("T")

SCHEMA_VERSION = 5
# version -> function(connection) upgrading from version-1. Version 1 is create_all.


def _v2_machine_console(conn: Any) -> None:
    """v2: the ``machineconsole`` table (console TCP port index, serial device, remote source)."""
    models.MachineConsole.__table__.create(conn, checkfirst=True)


def _v3_jobs(conn: Any) -> None:
    """v3: the ``job`` table (job history: status, machine, console offsets)."""
    models.JobRow.__table__.create(conn, checkfirst=True)


_V4_MACHINE_COLUMNS = {
    "training_loops": "INTEGER",
    "training_qualify": "INTEGER",
    "gitlab_exposed": "BOOLEAN NOT NULL DEFAULT 1",
}


def _v4_training_gitlab(conn: Any) -> None:
    """v4: per-machine training overrides and GitLab exposure; training and GitLab tables."""
    have = {row[1] for row in conn.exec_driver_sql("PRAGMA table_info(machine)")}
    for name, ddl in _V4_MACHINE_COLUMNS.items():
        if name not in have:
            conn.exec_driver_sql(f"ALTER TABLE machine ADD COLUMN {name} {ddl}")
    for table in (models.Training, models.GitlabInstance, models.GitlabRunner):
        table.__table__.create(conn, checkfirst=True)


def _v5_machine_names(conn: Any) -> None:
    """v5: machine names stored (unique) and held registrations. The names of existing machines are
    given by the registry at its next start (MachineService.start), in the order the old derived name
    counted them, so they stay what they were."""
    have = {row[1] for row in conn.exec_driver_sql("PRAGMA table_info(machine)")}
    for name, ddl in (("full_name", "VARCHAR"), ("pending_registration", "JSON")):
        if name not in have:
            conn.exec_driver_sql(f"ALTER TABLE machine ADD COLUMN {name} {ddl}")
    conn.exec_driver_sql("CREATE UNIQUE INDEX IF NOT EXISTS ix_machine_full_name ON machine (full_name)")


MIGRATIONS: dict[int, Callable[[Any], None]] = {
    2: _v2_machine_console,
    3: _v3_jobs,
    4: _v4_training_gitlab,
    5: _v5_machine_names,
}


class Store:
    def __init__(self, url: str) -> None:
        self.url = url
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self.engine: Engine | None = None

    @classmethod
    def for_path(cls, path: Path) -> "Store":
        return cls(f"sqlite:///{path}")

    def _open(self) -> None:
        is_sqlite = self.url.startswith("sqlite")
        engine = create_engine(self.url, connect_args={"check_same_thread": False, "timeout": 30} if is_sqlite else {})
        if is_sqlite:

            @event.listens_for(engine, "connect")
            def _pragmas(dbapi_conn: Any, _record: Any) -> None:
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=FULL")
                cur.execute("PRAGMA foreign_keys=ON")
                cur.close()

        SQLModel.metadata.create_all(engine)
        with Session(engine) as session:
            row = session.get(models.SchemaVersion, 1)
            if row is None:
                session.add(models.SchemaVersion(id=1, version=SCHEMA_VERSION))
            elif row.version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"the database schema is version {row.version}, newer than this program's {SCHEMA_VERSION}"
                )
            else:
                for version in range(row.version + 1, SCHEMA_VERSION + 1):
                    MIGRATIONS[version](session.connection())
                    row.version = version
            session.commit()
        self.engine = engine

    async def open(self) -> None:
        await self.run_raw(self._open)

    def journal_mode(self) -> str:
        assert self.engine is not None
        with self.engine.connect() as conn:
            return str(conn.exec_driver_sql("PRAGMA journal_mode").scalar())

    async def run_raw(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    async def run(self, fn: Callable[[Session], T]) -> T:
        """Run ``fn(session)`` in the store thread; commit if it returns, roll back if it raises."""

        def job() -> T:
            assert self.engine is not None, "store not open"
            with Session(self.engine, expire_on_commit=False) as session:
                result = fn(session)
                session.commit()
                return result

        return await self.run_raw(job)

    async def all(self, model: type[T]) -> list[T]:
        return await self.run(lambda s: list(s.exec(select(model)).all()))

    async def close(self) -> None:
        def _dispose() -> None:
            if self.engine is not None:
                self.engine.dispose()
                self.engine = None

        try:
            await self.run_raw(_dispose)
        finally:
            self._executor.shutdown(wait=True)
