"""Issue 15, reproduction 12 (all but the console logs' cap): a full data volume, for real.

The backend runs as a process whose data dir is a 3 MiB tmpfs, filled with a file until its writes
fail. Before: health stayed "ok" while writes answered 500 with SQLAlchemy's text (the SQL statement
and its parameters), and an outlet the PDU had switched was answered 409 "the outlet log was not
written". Now: writes are refused in words (507 "the data volume is full: ..."), no SQL in any answer,
health is degraded with the reason, the switched outlet is answered with its read-back state (the
failure logged), and once space is freed writes work again with nothing lost.
"""

from __future__ import annotations

import errno
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from tests.e2e.helpers import Backend

SQL_WORDS = ("SQL", "INSERT", "UPDATE", "sqlite3", "sqlalchemy", "OperationalError", "Traceback")


@pytest.fixture
def small_volume() -> Iterator[Path]:
    """A 3 MiB tmpfs, unmounted afterwards (skipped where mounting is not permitted)."""
    mount = shutil.which("mount")
    point = Path(tempfile.mkdtemp(prefix="vc15-disk-", dir="/tmp"))
    done = subprocess.run([mount or "mount", "-t", "tmpfs", "-o", "size=3m,mode=0755", "tmpfs", str(point)],
                          capture_output=True, text=True) if mount else None
    if done is None or done.returncode != 0:
        point.rmdir()
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.strip() if done else 'no mount'}")
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)
        point.rmdir()


def fill(volume: Path) -> Path:
    """Write a file until the volume has no room left for it."""
    filler = volume / "filler"
    with filler.open("wb", buffering=0) as out:
        for size in (256 * 1024, 4096, 512, 1):
            try:
                while True:
                    out.write(b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    return filler


def register(http: httpx.Client, i: int) -> httpx.Response:
    return http.post("/api/v1/machine/", json={"base_name": "dut", "tags": ["disk"],
                                               "mac_address": f"02:00:00:00:12:{i:02x}", "ip_address": f"10.0.12.{i}"})


def assert_no_sql(response: httpx.Response) -> None:
    for word in SQL_WORDS:
        assert word not in response.text, f"{word!r} in the answer: {response.text[:300]}"


def test_a_full_data_volume_is_said_in_words_and_loses_nothing(small_volume: Path, tmp_path: Path) -> None:
    data = small_volume / "data"
    backend = Backend(data, log=tmp_path / "backend.log").start()  # its output off the full volume
    try:
        with backend.http() as http:
            r = http.post("/api/v1/pdu/", json={"name": "d1", "driver": "dummy", "config": {"ports": 2}})
            assert r.status_code == 201, r.text
            assert register(http, 1).status_code == 200
            stored = {"02:00:00:00:12:01"}
            filler = fill(small_volume)

            refused = None
            for i in range(2, 60):  # until the database needs room it has not got
                r = register(http, i)
                if r.status_code == 200:
                    stored.add(f"02:00:00:00:12:{i:02x}")
                    continue
                refused = r
                break
            assert refused is not None, "every write succeeded on a full volume"
            assert refused.status_code == 507, refused.text
            assert refused.json()["error"].startswith("the data volume is full: "), refused.text
            assert_no_sql(refused)

            health = http.get("/api/v1/health").json()
            assert health["status"] == "degraded", health
            assert health["services"]["storage"]["state"] == "degraded"
            assert health["services"]["storage"]["reason"].startswith("the data volume is full: "), health

            # The PDU switches the outlet; when its log row cannot be written (the WAL may still have room
            # for a row or two), it is answered all the same with the state read back, and the failure logged.
            for n in range(40):
                wanted = "ON" if n % 2 == 0 else "OFF"
                r = http.post("/api/v1/pdu/d1/port/0/state", json={"state": wanted.lower()})
                assert r.status_code == 200 and r.json()["state"] == wanted, r.text
                assert http.get("/api/v1/pdu/d1").json()["ports"]["0"]["state"] == wanted
                if "the outlet log was not written" in str(http.get("/api/v1/log").json()):
                    break
            else:
                raise AssertionError("every outlet log row was written on a full volume")

            for path in ("/api/v1/machines", "/api/v1/pdus", "/api/v1/jobs"):
                r = http.get(path)
                assert r.status_code == 200, (path, r.text)
            listed = set(http.get("/api/v1/machines").json()["machines"])
            assert stored <= listed and f"02:00:00:00:12:{i:02x}" not in listed  # the refused one is not shown

            filler.unlink()  # the operator makes room: writes work again
            assert register(http, 99).status_code == 200
            stored.add("02:00:00:00:12:63")
            deadline = time.monotonic() + 10
            while http.get("/api/v1/health").json()["services"]["storage"]["state"] != "ok":
                assert time.monotonic() < deadline, http.get("/api/v1/health").json()
                time.sleep(0.2)
    finally:
        backend.stop()
    output = backend.log_text()
    assert "Traceback" not in output, output[-3000:]

    backend = Backend(data, log=tmp_path / "backend-2.log").start()  # after a restart: all acknowledged is there
    try:
        with backend.http() as http:
            assert stored <= set(http.get("/api/v1/machines").json()["machines"])
            assert "d1" in http.get("/api/v1/pdus").json()["pdus"]
    finally:
        backend.stop()


def test_store_errors_never_carry_sql(tmp_path: Path) -> None:
    """The words of a database failure are the driver's message, never the statement or its values
    (a check of the mapping: a write into a connection made read-only); health says it until a write
    succeeds again."""
    import asyncio

    from sqlalchemy import text
    from sqlmodel import Session

    from valve_console.backend import models
    from valve_console.backend.store import StorageError, Store

    async def run() -> None:
        store = Store.for_path(tmp_path / "db.sqlite")
        await store.open()
        try:
            def add_read_only(session: Session) -> None:
                session.exec(text("PRAGMA query_only = 1"))
                session.add(models.Pdu(name="y", driver="dummy", config={"password": "glpat-secret"}))
                session.flush()

            with pytest.raises(StorageError) as failed:
                await store.run(add_read_only)
            assert failed.value.status == 503, failed.value.message
            assert failed.value.message == "the database failed: attempt to write a readonly database"
            state, reason = store.health()
            assert state == "degraded" and reason.startswith("the database failed: attempt to write"), reason

            def add(session: Session) -> None:
                session.exec(text("PRAGMA query_only = 0"))
                session.add(models.Pdu(name="x", driver="dummy", config={}))

            await store.run(add)
            assert store.health() == ("ok", None)
        finally:
            await store.close()

    asyncio.run(run())
