"""Schema v5 stores machine names and held registrations.

A version-4 database (machine table without ``full_name`` and ``pending_registration``) is upgraded in
place and keeps its rows; at its next start the registry names its machines in the order the old derived
name counted them (first seen, then MAC, per base name), so every name stays what it was. From then on
a name never changes: removing a machine frees its number for the next new machine of that base name.
"""

from __future__ import annotations

import sqlite3

from sqlmodel import select

from tests.unit.old_schema import old_database
from valve_console.backend import models
from valve_console.backend.registration import MachineService, Registration
from valve_console.backend.store import SCHEMA_VERSION, Store

# (mac, base_name, first_seen): b-1 and b-2 are counted by first_seen, not by MAC
OLD = [("02:00:00:00:00:05", "b", 10.0), ("02:00:00:00:00:01", "b", 20.0), ("02:00:00:00:00:03", "c", 5.0)]


def make_v4_database(db) -> None:
    def undo(conn: sqlite3.Connection) -> None:
        conn.execute("DROP INDEX ix_machine_full_name")
        for column in ("full_name", "pending_registration"):
            conn.execute(f"ALTER TABLE machine DROP COLUMN {column}")
        for n, (mac, base, first_seen) in enumerate(OLD):
            conn.execute(
                "INSERT INTO machine (mac_address, base_name, tags, manual_tags, ip_address, ready_for_service,"
                " is_retired, comment, first_seen, last_seen, gitlab_exposed)"
                " VALUES (?, ?, '[]', '[]', ?, 1, 0, 'kept', ?, ?, 1)",
                (mac, base, f"10.0.0.{n + 1}", first_seen, first_seen),
            )

    old_database(db, 4, undo)


async def test_a_version_4_database_is_upgraded_and_its_machines_keep_their_names(tmp_path):
    db = tmp_path / "valve-console.db"
    make_v4_database(db)
    store = Store.for_path(db)
    await store.open()
    try:
        assert SCHEMA_VERSION >= 5
        assert await store.run(lambda s: s.get(models.SchemaVersion, 1).version) == SCHEMA_VERSION
        row = await store.run(lambda s: s.get(models.Machine, OLD[0][0]))
        assert (row.base_name, row.comment, row.full_name, row.pending_registration) == ("b", "kept", None, None)

        machines = MachineService(store, "farm")
        await machines.start()
        names = {mac: m.full_name for mac, m in machines.machines.items()}
        assert names == {OLD[0][0]: "farm-b-1", OLD[1][0]: "farm-b-2", OLD[2][0]: "farm-c-1"}
        stored = await store.run(lambda s: {m.mac_address: m.full_name for m in s.exec(select(models.Machine))})
        assert stored == names  # written once, not derived again

        # A name never changes: b-2 stays b-2 when b-1 goes; the next new "b" takes the free number 1.
        await machines.remove(OLD[0][0])
        assert machines.machines[OLD[1][0]].full_name == "farm-b-2"
        added = await machines.register(Registration(base_name="b", mac_address="02:00:00:00:00:09",
                                                     ip_address="10.0.0.9"))
        assert added.machine.full_name == "farm-b-1"
        added = await machines.register(Registration(base_name="b", mac_address="02:00:00:00:00:0a",
                                                     ip_address="10.0.0.10"))
        assert added.machine.full_name == "farm-b-3"
    finally:
        await store.close()
    with sqlite3.connect(db) as conn:
        indexes = {r[0] for r in conn.execute("select name from sqlite_master where type='index'")}
        assert "ix_machine_full_name" in indexes
    # A restart with the farm renamed to "other" keeps the names given; new machines get the new prefix.
    store = Store.for_path(db)
    await store.open()
    try:
        machines = MachineService(store, "other")
        await machines.start()
        assert machines.machines[OLD[1][0]].full_name == "farm-b-2"
        added = await machines.register(Registration(base_name="b", mac_address="02:00:00:00:00:0b",
                                                     ip_address="10.0.0.11"))
        assert added.machine.full_name == "other-b-1"
    finally:
        await store.close()
