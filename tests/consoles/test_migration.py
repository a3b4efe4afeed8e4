"""Schema v2 adds the machineconsole table; a version-1 database is upgraded in place."""

from __future__ import annotations

import asyncio
import sqlite3

from sqlmodel import Session, SQLModel, create_engine, select

from tests.conftest import make_settings
from tests.consoles.conftest import wait_for
from valve_console.backend import models
from valve_console.backend.farm import Farm
from valve_console.backend.store import SCHEMA_VERSION, Store

MAC = "02:00:00:00:00:42"


def make_v1_database(path) -> None:
    engine = create_engine(f"sqlite:///{path}")
    v1 = [t for name, t in SQLModel.metadata.tables.items() if name != "machineconsole"]
    SQLModel.metadata.create_all(engine, tables=v1)
    with Session(engine) as s:
        s.add(models.SchemaVersion(id=1, version=1))
        s.add(models.Machine(mac_address=MAC, base_name="old", ip_address="10.0.0.42"))
        s.commit()
    engine.dispose()


async def test_a_version_1_database_is_migrated(tmp_path):
    db = tmp_path / "valve-console.db"
    make_v1_database(db)
    with sqlite3.connect(db) as conn:
        assert "machineconsole" not in {r[0] for r in conn.execute("select name from sqlite_master")}
    store = Store.for_path(db)
    await store.open()
    try:
        version = await store.run(lambda s: s.get(models.SchemaVersion, 1).version)
        assert version == SCHEMA_VERSION >= 4  # v4: training and GitLab; v5: machine names
        assert await store.run(lambda s: list(s.exec(select(models.MachineConsole)).all())) == []
        assert (await store.run(lambda s: s.get(models.Machine, MAC))).base_name == "old"
    finally:
        await store.close()


async def test_a_farm_starts_on_a_version_1_data_dir(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    make_v1_database(data / "valve-console.db")
    farm = Farm(make_settings(data, console_tcp_base=0, console_discovery="off"))
    farm.console_device_sources = []
    await farm.start()
    try:
        reader, writer = await asyncio.open_connection(*farm.netconsole_address)
        writer.write(f"SALAD.machine_id={MAC}\n".encode())
        await writer.drain()
        await wait_for(lambda: MAC in farm.consoles.consoles and farm.consoles.consoles[MAC].tcp_port)
        assert farm.consoles.consoles[MAC].tcp_index == 0  # the first console gets index 0, stored
        writer.close()
    finally:
        await farm.stop()
    with sqlite3.connect(data / "valve-console.db") as conn:
        assert conn.execute("select mac_address, tcp_index from machineconsole").fetchall() == [(MAC, 0)]
        assert conn.execute("select version from schemaversion").fetchone() == (SCHEMA_VERSION,)
