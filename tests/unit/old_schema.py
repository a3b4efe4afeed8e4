"""An older database for migration tests: today's tables, marked ``version``, then taken back by hand."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Callable

from sqlmodel import Session, SQLModel, create_engine

from valve_console.backend import models


def old_database(db: Path, version: int, undo: Callable[[sqlite3.Connection], None]) -> None:
    """Create ``db`` with the current schema, record it as ``version``, then run ``undo`` on it (drop what
    came later, insert the rows that version had)."""
    engine = create_engine(f"sqlite:///{db}")
    SQLModel.metadata.create_all(engine)
    with Session(engine) as s:
        s.add(models.SchemaVersion(id=1, version=version))
        s.commit()
    engine.dispose()
    with sqlite3.connect(db) as conn:
        undo(conn)
