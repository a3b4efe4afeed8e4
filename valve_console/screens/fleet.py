"""Fleet (key 0, only in a fleet): one row per gateway, live from each gateway's own event stream.

A row: the gateway's name, its farm, whether it is reachable (or why not: "token refused",
"unreachable: ...", what was last known stays listed), its version, DUTs by state, jobs running and
queued, PDUs unreachable, alarms (the Overview's attention items) and the farm's power when metered.
``enter`` switches the whole console to the selected gateway (its Overview); ``0`` comes back here
from any screen. Rows are computed from each gateway's model (``console_data.fleet``) at most
``ROW_HZ`` times a second, only for the gateways that changed.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import DataTable, Static

from ..console_data.fleet import FleetRow
from ..widgets.banner import StatusLine, TopBar
from ..widgets.keybar import KeyBar
from ..widgets.keyed_table import cursor_key
from .base import FarmScreen

ROW_HZ = 2
COLUMNS = (("Gateway", "name"), ("Farm", "farm"), ("Reachable", "status"), ("Version", "version"),
           ("DUTs", "duts"), ("Jobs", "jobs"), ("PDUs down", "pdus"), ("Alarms", "alarms"), ("Power", "power"))
STATUS_WIDTH = 40  # longer reasons are cut in the table; the line under it shows the selected one whole


class FleetTable(DataTable[Any]):
    BINDINGS = [Binding("enter", "select_cursor", "Show", show=True, key_display="enter")]


def row_cells(row: FleetRow, dots: str = "…") -> tuple[Any, ...]:
    status = row.status if len(row.status) <= STATUS_WIDTH else row.status[: STATUS_WIDTH - 1] + dots
    return (
        Text(row.name, style="bold"),
        row.farm or "?",
        Text(status, style="green" if row.ok else "bold red"),
        row.version or "?",
        row.duts or "?",
        row.jobs or "?",
        Text(str(row.pdus_unreachable), style="bold red") if row.pdus_unreachable else "0",
        Text(str(row.alarms), style="bold yellow") if row.alarms else "0",
        row.power or "-",
    )


class FleetScreen(FarmScreen):
    """Not a farm view: it reads every gateway of the app's fleet, not the one shown."""

    MODE = "fleet"

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, FleetRow] = {}

    def compose(self) -> ComposeResult:
        with Vertical(classes="frame-top"):
            yield TopBar(self.MODE)  # no lost-backend banner: each row says whether its gateway is there
        with Vertical(classes="frame-bottom"):
            yield StatusLine()
            yield KeyBar()
        yield Static("", id="fleet-summary", classes="status-line")
        yield FleetTable(id="fleet-table", cursor_type="row", zebra_stripes=True)
        yield Static("", id="fleet-detail")

    @property
    def table(self) -> FleetTable:
        return self.query_one("#fleet-table", FleetTable)

    def on_mount(self) -> None:
        table = self.table
        for label, key in COLUMNS:
            table.add_column(label, key=key)
        self.console_app.fleet_view = self
        self.refresh_rows(every=True)
        self.set_interval(1 / ROW_HZ, self.refresh_rows)
        table.focus()

    def on_unmount(self) -> None:
        if self.console_app.fleet_view is self:
            self.console_app.fleet_view = None

    def refresh_rows(self, every: bool = False) -> None:
        """Compute the rows of the gateways that changed (all with ``every``) and show them."""
        fleet = self.console_app.fleet
        if fleet is None:
            return
        if not every and not self.is_current:
            return  # hidden: the rows are computed when it is shown again (on_screen_resume)
        table = self.table
        dots = "..." if self.console_app.linux_console else "…"
        changed = False
        with self.app.batch_update():
            for gw in fleet:
                if not (every or gw.dirty) and gw.name in self.rows:
                    continue
                row = fleet.row(gw)
                if self.rows.get(gw.name) == row:
                    continue
                self.rows[gw.name] = row
                changed = True
                cells = row_cells(row, dots)
                if gw.name in table.rows:
                    for (_label, key), cell in zip(COLUMNS, cells, strict=True):
                        table.update_cell(gw.name, key, cell, update_width=True)
                else:
                    table.add_row(*cells, key=gw.name)
        if changed or every:
            self._summary()
            self._detail()

    def on_screen_resume(self) -> None:
        self.refresh_rows(every=True)

    def _summary(self) -> None:
        fleet = self.console_app.fleet
        if fleet is None:
            return
        up = sum(1 for row in self.rows.values() if row.ok)
        alarms = sum(row.alarms for row in self.rows.values())
        shown = self.console_app.gateway_name
        text = f"fleet {fleet.name}: {up} of {len(fleet)} gateways up, {alarms} alarms"
        if shown:
            text += f"; the screens 1-9 show {shown}"
        self.query_one("#fleet-summary", Static).update(text)

    def _detail(self) -> None:
        name = cursor_key(self.table)
        row = self.rows.get(name) if name else None
        if row is None:
            self.query_one("#fleet-detail", Static).update("")
            return
        text = Text()
        text.append(f" {row.name}: ", style="bold")
        text.append(row.status, style="green" if row.ok else "bold red")
        if row.alarm_text:
            text.append(f"  first alarm: {row.alarm_text}", style="yellow")
        self.query_one("#fleet-detail", Static).update(text)

    def on_data_table_row_highlighted(self, _event: DataTable.RowHighlighted) -> None:
        self._detail()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        name = event.row_key.value
        if name:
            # not exclusive: a switch cancelled half-way would leave the farm screens' modes removed
            self.console_app.run_worker(self.console_app.show_gateway(name), group="fleet-switch",
                                        exit_on_error=False)

    def cursor_gateway(self) -> str | None:
        return cursor_key(self.table)

    def select_gateway(self, name: str) -> bool:
        if name not in self.table.rows:
            return False
        self.table.move_cursor(row=self.table.get_row_index(name))
        return True
