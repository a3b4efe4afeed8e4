"""DUT screen: the machines in a DataTable keyed by MAC, updated cell by cell from events."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Input, Static

from ..console_data import Changes, FarmModel
from ..contract import Machine, Training
from ..widgets.state_badge import machine_state, yes_no
from ..widgets.keyed_table import cursor_key, select_key
from .base import FarmScreen
from .machine_detail import open_details, training_action

COLUMNS = (
    ("Name", "name"),
    ("MAC", "mac"),
    ("IP", "ip"),
    ("State", "state"),
    ("Training", "training"),
    ("PDU/port", "pdu"),
    ("TTY", "tty"),
    ("Ready", "ready"),
    ("Retired", "retired"),
    ("Runner", "runner"),
)
COLUMN_KEYS = tuple(key for _, key in COLUMNS)


TRAINING_WORDS = {"qualified": "ok", "stopped": "stopped", "skipped": "skipped", "cooldown": "failed"}


def training_text(training: Training | None) -> str:
    """The Training cell: ``n/N`` while training (``0/N`` registering), ``failed p/N`` in the back-off,
    ``ok p/N`` once qualified, ``stopped``/``skipped``; ``-`` when never trained."""
    if not training:
        return "-"
    state = training.state
    if state in ("registering", "looping"):
        return f"{training.loop}/{training.loops}"
    if state in ("qualified", "cooldown"):
        return f"{TRAINING_WORDS[state]} {training.passes}/{training.loops}"
    return TRAINING_WORDS.get(state, str(state))


def machine_cells(machine: Machine, linux_console: bool = False) -> tuple[Any, ...]:
    pdu = machine.pdu
    outlet = f"{pdu.name}/{pdu.port_id}" if pdu.name else "-"
    if pdu.name and pdu.port_id is None:
        outlet = f"{pdu.name}/?"
    return (
        name_cell(machine, linux_console),
        machine.mac_address,
        machine.ip_address or "-",
        machine_state(machine.state),
        training_text(machine.training),
        outlet,
        machine.local_tty_device or "-",
        yes_no(machine.ready_for_service),
        yes_no(machine.is_retired, yes_style="bold yellow"),
        runner_text(machine),
    )


POWER_FLAG_WORDS = {"no_draw": "no draw", "silent": "silent"}


def power_flag_badge(kind: str | None, linux_console: bool = False) -> str:
    """A power flag in a few words: ``⚡ no draw``, ``⚡ silent`` (``[no draw]`` on the Linux console, whose
    font has no ⚡); '' without a flag."""
    if not kind:
        return ""
    words = POWER_FLAG_WORDS.get(kind, kind.replace("_", " "))
    return f"[{words}]" if linux_console else f"\u26a1 {words}"


def name_cell(machine: Machine, linux_console: bool = False) -> Any:
    """The Name cell: the name, ``[held]`` in red while a registration of it waits for the operator, and
    its power flag (``⚡ no draw``/``⚡ silent``) in yellow while its power draw looks wrong."""
    name = machine.full_name or machine.base_name or "?"
    flag = machine.power_flag
    if not machine.pending_registration and flag is None:
        return name
    cell = Text(name)
    if machine.pending_registration:
        cell.append(" [held]", style="bold red")
    if flag is not None:
        cell.append(f" {power_flag_badge(flag.kind, linux_console)}", style="bold yellow")
    return cell


def runner_text(machine: Machine) -> Text:
    """The Runner cell: ``#<id>`` per GitLab runner, ``pending``/``deleting``/``error`` in colour, ``-`` none."""
    if not machine.runners:
        return Text("-" if machine.gitlab_exposed else "off", style="dim")
    cell = Text()
    for info in machine.runners:
        if cell:
            cell.append(" ")
        state = info.state
        if info.error:
            cell.append("error", style="bold red")
        elif state == "ok" and info.runner_id is not None:
            cell.append(f"#{info.runner_id}", style="green")
        elif info.runner_id is not None:
            cell.append(f"#{info.runner_id} {state}", style="yellow")
        else:
            cell.append(str(state or "?"), style="yellow")
    return cell


def plain(value: Any) -> str:
    return value.plain if isinstance(value, Text) else str(value)


class DutTable(DataTable[Any]):
    BINDINGS = [Binding("enter", "select_cursor", "Console", show=True, key_display="enter")]


class DutsScreen(FarmScreen):
    MODE = "duts"

    BINDINGS = [
        Binding("e", "edit", "Edit"),
        Binding("R", "retire", "Retire"),
        Binding("delete", "remove", "Remove", show=False),
        Binding("c", "power_cycle", "Cycle"),
        Binding("i", "details", "Details"),
        Binding("t", "training('start')", "Train"),
        Binding("x", "training('stop')", "Stop training", show=False),
        Binding("k", "training('skip')", "Skip training", show=False),
        Binding("s", "sort", "Sort"),
        Binding("slash", "filter", "Filter"),
        Binding("escape", "clear_filter", "Clear filter", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, tuple[Any, ...]] = {}
        self.held: set[str] = set()  # machines with a registration held for the operator
        self.filter = ""
        self.sort_index = 0
        self.sort_reverse = False

    def compose_body(self) -> ComposeResult:
        yield Static("", id="dut-status", classes="status-line")
        yield DutTable(id="dut-table", cursor_type="row", zebra_stripes=True)
        yield Input(placeholder="filter: text in any column (enter: keep, esc: clear)", id="dut-filter")

    def on_mount(self) -> None:
        table = self.table
        for label, key in COLUMNS:
            table.add_column(label, key=key)
        self.query_one("#dut-filter", Input).display = False
        super().on_mount()
        self._update_status()
        table.focus()

    @property
    def table(self) -> DutTable:
        return self.query_one("#dut-table", DutTable)

    # ---------------------------------------------------------------- sync
    def farm_reset(self, model: FarmModel) -> None:
        table = self.table
        for mac in [m for m in self.rows if m not in model.machines]:
            del self.rows[mac]
            self.held.discard(mac)
            if mac in table.rows:
                table.remove_row(mac)
        self._apply(model.machines)

    def farm_changes(self, changes: Changes, model: FarmModel) -> None:
        if changes.machines:
            self._apply({mac: model.machines[mac] for mac in changes.machines if mac in model.machines})

    def _apply(self, machines: dict[str, Machine]) -> None:
        table = self.table
        cursor = self.cursor_mac()
        resort = False
        for mac, machine in machines.items():
            cells = machine_cells(machine, self.console_app.linux_console)
            if machine.pending_registration:
                self.held.add(mac)
            else:
                self.held.discard(mac)
            old = self.rows.get(mac)
            self.rows[mac] = cells
            visible = mac in table.rows
            wanted = self.matches(cells)
            if visible and not wanted:
                table.remove_row(mac)
            elif wanted and not visible:
                table.add_row(*cells, key=mac)
                resort = True
            elif visible and old is not None:
                for index, (before, after) in enumerate(zip(old, cells, strict=True)):
                    if plain(before) != plain(after) or (
                        isinstance(after, Text) and isinstance(before, Text) and before.style != after.style
                    ):
                        table.update_cell(mac, COLUMN_KEYS[index], after)
                        if index == self.sort_index:
                            resort = True
        if resort:
            self._sort(cursor)
        self._update_status()

    def matches(self, cells: tuple[Any, ...]) -> bool:
        if not self.filter:
            return True
        needle = self.filter.lower()
        return any(needle in plain(cell).lower() for cell in cells)

    def _sort(self, keep: str | None = None) -> None:
        table = self.table
        if keep is None:
            keep = self.cursor_mac()
        table.sort(COLUMN_KEYS[self.sort_index], key=lambda value: plain(value).lower(), reverse=self.sort_reverse)
        select_key(table, keep)

    def cursor_mac(self) -> str | None:
        return cursor_key(self.table)

    def select_mac(self, mac: str) -> bool:
        return select_key(self.table, mac)

    def _update_status(self) -> None:
        shown = self.table.row_count
        total = len(self.rows)
        text = Text()
        text.append(f"{total} machine{'s' if total != 1 else ''}")
        arrow = "v" if self.sort_reverse else "^"
        text.append(f"  sorted by {COLUMNS[self.sort_index][0]} {arrow}")
        if self.filter:
            text.append(f"  filter '{self.filter}': {shown} shown", style="bold yellow")
        held = len(self.held)
        if held:
            text.append(f"  {held} registration{'s' if held != 1 else ''} held for you: i to review",
                        style="bold red")
        if not total:
            text.append("  (power a DUT on from the PDU screen, 3, or wait for one to register)", style="dim")
        self.query_one("#dut-status", Static).update(text)

    # ---------------------------------------------------------------- filter
    def action_filter(self) -> None:
        box = self.query_one("#dut-filter", Input)
        box.display = True
        box.focus()

    @on(Input.Changed, "#dut-filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.set_filter(event.value)

    @on(Input.Submitted, "#dut-filter")
    def _filter_done(self) -> None:
        self.table.focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#dut-filter", Input)
        if box.display or self.filter:
            box.value = ""
            box.display = False
            self.set_filter("")
            self.table.focus()

    def set_filter(self, text: str) -> None:
        self.filter = text.strip()
        table = self.table
        cursor = self.cursor_mac()
        added = False
        for mac, cells in self.rows.items():
            wanted = self.matches(cells)
            visible = mac in table.rows
            if visible and not wanted:
                table.remove_row(mac)
            elif wanted and not visible:
                table.add_row(*cells, key=mac)
                added = True
        if added:
            self._sort(cursor)
        self._update_status()

    # ---------------------------------------------------------------- actions
    def action_sort(self) -> None:
        self.sort_index = (self.sort_index + 1) % len(COLUMNS)
        self._sort()
        self._update_status()

    def _selected(self) -> str | None:
        mac = self.cursor_mac()
        if mac is None:
            self.console_app.report("no machine selected", "warning")
        return mac

    def action_edit(self) -> None:
        if (mac := self._selected()) is not None:
            self.console_app.edit_machine(mac)

    def action_retire(self) -> None:
        if (mac := self._selected()) is not None:
            self.console_app.toggle_retired(mac)

    def action_remove(self) -> None:
        if (mac := self._selected()) is not None:
            self.console_app.remove_machine(mac)

    def action_power_cycle(self) -> None:
        if (mac := self._selected()) is not None:
            self.console_app.power_cycle(mac)

    def action_details(self) -> None:
        if (mac := self._selected()) is not None:
            open_details(self.console_app, mac)

    def action_training(self, action: str) -> None:
        if (mac := self._selected()) is not None:
            training_action(self.console_app, mac, action)

    @on(DataTable.RowSelected, "#dut-table")
    def _open_console(self, event: DataTable.RowSelected) -> None:
        mac = event.row_key.value
        if mac:
            self.console_app.open_console(mac)
