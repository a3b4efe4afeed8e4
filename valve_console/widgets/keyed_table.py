"""Helpers for DataTables whose row keys are domain ids (a MAC, a job id)."""

from __future__ import annotations

from textual.widgets import DataTable


def cursor_key(table: DataTable) -> str | None:
    """The row key under the cursor, or None when the table is empty or the cursor is off the rows."""
    if table.row_count == 0:
        return None
    try:
        return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
    except Exception:  # noqa: BLE001 - cursor outside the rows
        return None


def select_key(table: DataTable, key: str | None) -> bool:
    """Put the cursor on the row with this key, if the table has it (False: it has not)."""
    if key is not None and key in table.rows:
        table.move_cursor(row=table.get_row_index(key), animate=False)
        return True
    return False
