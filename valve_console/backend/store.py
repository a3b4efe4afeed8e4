"""Storage: one SQLAlchemy engine (SQLite in WAL mode by default) used from one worker thread.

All database work runs in a single dedicated thread, so the event loop never blocks on SQLite
and writes are serialised. Every write is one transaction.

A failure of the database (a full data volume, an I/O error) never reaches an answer as SQLAlchemy's
text (which quotes the SQL statement): ``run``/``run_raw`` raise ``StorageError`` (a ``FarmError``:
507 "the data volume is full: the change was not stored (...)", or 503 with the driver's words), and
the store's ``health()`` is degraded with the reason until a write succeeds again or space is freed.
Constraint violations (IntegrityError) are left to their callers.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar, cast

from sqlalchemy import event, exc as sa_exc, inspect as sa_inspect
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, create_engine, select

from . import models
from .errors import FarmError

log = logging.getLogger(__name__)
T = TypeVar("T")

SCHEMA_VERSION = 6
# version -> function(connection) upgrading from version-1. Version 1 is create_all.


def _v2_machine_console(conn: Any) -> None:
    """v2: the ``machineconsole`` table (console TCP port index, serial device, remote source)."""
    cast(Any, models.MachineConsole).__table__.create(conn, checkfirst=True)  # SQLModel sets __table__


def _v3_jobs(conn: Any) -> None:
    """v3: the ``job`` table (job history: status, machine, console offsets)."""
    cast(Any, models.JobRow).__table__.create(conn, checkfirst=True)  # SQLModel sets __table__


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
        cast(Any, table).__table__.create(conn, checkfirst=True)  # SQLModel sets __table__


def _v5_machine_names(conn: Any) -> None:
    """v5: machine names stored (unique) and held registrations. The names of existing machines are
    given by the registry at its next start (MachineService.start), in the order the old derived name
    counted them, so they stay what they were."""
    have = {row[1] for row in conn.exec_driver_sql("PRAGMA table_info(machine)")}
    for name, ddl in (("full_name", "VARCHAR"), ("pending_registration", "JSON")):
        if name not in have:
            conn.exec_driver_sql(f"ALTER TABLE machine ADD COLUMN {name} {ddl}")
    conn.exec_driver_sql("CREATE UNIQUE INDEX IF NOT EXISTS ix_machine_full_name ON machine (full_name)")


def _v6_power(conn: Any) -> None:
    """v6: power metering: the downsampled ``power_history`` table and each job's ``energy_j``."""
    have = {row[1] for row in conn.exec_driver_sql("PRAGMA table_info(job)")}
    if "energy_j" not in have:
        conn.exec_driver_sql("ALTER TABLE job ADD COLUMN energy_j FLOAT")
    cast(Any, models.PowerHistory).__table__.create(conn, checkfirst=True)  # SQLModel sets __table__


MIGRATIONS: dict[int, Callable[[Any], None]] = {
    2: _v2_machine_console,
    3: _v3_jobs,
    4: _v4_training_gitlab,
    5: _v5_machine_names,
    6: _v6_power,
}

FULL_BELOW = 64 * 1024  # bytes free on the data volume under which it counts as full
RECOVERED_BY = 1024 * 1024  # bytes freed since a write failed for lack of space: try writes again


class StorageError(FarmError):
    """The database could not do it (full volume, I/O error): said in words, without SQL."""

    def __init__(self, message: str, status: int = 503, full: bool = False) -> None:
        super().__init__(message, status)
        self.full = full


def _sqlite_code(exc: BaseException) -> Optional[int]:
    orig = getattr(exc, "orig", exc)
    return getattr(orig, "sqlite_errorcode", None) if isinstance(orig, sqlite3.Error) else None


def _is_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    code = _sqlite_code(exc)
    if code is not None and code & 0xFF == sqlite3.SQLITE_FULL:
        return True
    return "disk is full" in str(getattr(exc, "orig", exc))


def upsert_row(
    session: Session, model: type[T], values: dict[str, Any], key: Any = None,
    on_insert: Optional[dict[str, Any]] = None,
) -> T:
    """Insert or update by primary key, in ``session``: the row of ``model`` whose primary key is ``key``
    (default: taken from ``values``, a tuple for a composite key) gets ``values``; without such a row, a new
    one is added from ``on_insert`` and ``values``. Returns the row."""
    if key is None:
        names = [column.key for column in sa_inspect(model).primary_key]
        key = values[names[0]] if len(names) == 1 else tuple(values[name] for name in names)
    row = session.get(model, key)
    if row is None:
        row = model(**{**(on_insert or {}), **values})
        session.add(row)
    else:
        for name, value in values.items():
            setattr(row, name, value)
    return row


class Store:
    def __init__(self, url: str, on_health_change: Callable[[], None] = lambda: None) -> None:
        """``on_health_change()``: told when ``health()`` may answer otherwise (a write failed, or worked again)."""
        self.url = url
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self.engine: Engine | None = None
        # The volume the database lives on (None: not a SQLite file), and the last write failure.
        self.volume: Optional[Path] = self._volume(url)
        self._failure: Optional[tuple[str, bool, float, int]] = None  # (words, full, at, bytes free then)
        self.on_health_change = on_health_change

    @staticmethod
    def _volume(url: str) -> Optional[Path]:
        prefix = "sqlite:///"
        if not url.startswith(prefix) or url[len(prefix):] in ("", ":memory:"):
            return None
        return Path(url[len(prefix):].split("?", 1)[0]).parent

    # ---------------------------------------------------------------- health
    def free_bytes(self) -> Optional[int]:
        """Bytes the backend's user may still write on the database's volume (None: unknown)."""
        if self.volume is None:
            return None
        try:
            st = os.statvfs(self.volume)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    def _full_words(self, free: Optional[int]) -> str:
        where = f" on {self.volume}" if self.volume is not None else ""
        left = f"{free // 1024} KiB free{where}" if free is not None else f"no space left{where}"
        return f"the data volume is full: {left}"

    def health(self) -> tuple[str, Optional[str]]:
        """``("ok", None)`` or ``("degraded", reason)``: the volume is (nearly) full, or the last write
        failed and nothing since says it would work now."""
        free = self.free_bytes()
        failure = self._failure
        if failure is not None:
            words, full, at, free_then = failure
            if full and free is not None and free >= max(free_then, FULL_BELOW) + RECOVERED_BY:
                self._failure = failure = None  # space was freed: writes get their chance again
            else:
                since = time.strftime("%H:%M:%S", time.localtime(at))
                return "degraded", f"{self._full_words(free) if full else words}; writes refused since {since}"
        if free is not None and free < FULL_BELOW:
            return "degraded", self._full_words(free)
        return "ok", None

    def _note(self, failure: Optional[tuple[str, bool, float, int]]) -> None:
        """In the store thread: remember (or forget) a write failure; tell the farm on the loop."""
        before = self._failure is not None
        self._failure = failure
        if (failure is not None) != before and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.on_health_change)

    def _storage_error(self, exc: BaseException) -> StorageError:
        """The words for a database failure (in the store thread; remembered for health)."""
        full = _is_full(exc)
        free = self.free_bytes()
        if full:
            words = f"{self._full_words(free)}: the change was not stored"
        else:
            detail = getattr(exc, "orig", None) or exc
            words = f"the database failed: {str(detail).splitlines()[0][:200] or type(detail).__name__}"
        self._note((words, full, time.time(), free or 0))
        log.error("storage: %s", words)
        return StorageError(words, 507 if full else 503, full)

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
        await self.run_raw(self._open, write=True)

    _loop: Optional[asyncio.AbstractEventLoop] = None

    async def run_raw(self, fn: Callable[..., T], *args: Any, write: bool = False) -> T:
        """Run ``fn(*args)`` in the store thread. A database failure raises ``StorageError`` (in words);
        ``write``: its success means the database takes writes again."""
        self._loop = asyncio.get_running_loop()

        def guarded() -> T:
            try:
                result = fn(*args)
            except (sa_exc.IntegrityError, sqlite3.IntegrityError):
                raise  # a constraint: the caller's to say
            except (sa_exc.OperationalError, sa_exc.DatabaseError, sqlite3.OperationalError,
                    sqlite3.DatabaseError) as exc:
                raise self._storage_error(exc) from None
            except OSError as exc:
                if _is_full(exc):
                    raise self._storage_error(exc) from None
                raise
            if write and self._failure is not None:
                self._note(None)
            return result

        return await self._loop.run_in_executor(self._executor, guarded)

    async def run(self, fn: Callable[[Session], T]) -> T:
        """Run ``fn(session)`` in the store thread; commit if it returns, roll back if it raises."""
        wrote = [False]

        def job() -> T:
            assert self.engine is not None, "store not open"
            with Session(self.engine, expire_on_commit=False) as session:
                result = fn(session)
                wrote[0] = bool(session.new or session.dirty or session.deleted)
                session.commit()
                if wrote[0] and self._failure is not None:
                    self._note(None)
                return result

        return await self.run_raw(job)

    async def upsert(
        self, model: type[T], values: dict[str, Any], key: Any = None, on_insert: Optional[dict[str, Any]] = None
    ) -> None:
        """Store ``values`` on the row of ``model`` with primary key ``key`` (one transaction, see
        ``upsert_row``). A constraint violation (IntegrityError) is left to the caller, as in ``run``."""
        await self.run(lambda session: upsert_row(session, model, values, key, on_insert))

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
