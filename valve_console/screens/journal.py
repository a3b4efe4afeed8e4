"""Journal: the backend's own log, and the system journal when the backend has one.

Filter by unit and by minimum priority, search, pause and follow. One Line-API widget
(``JournalView``) holds every entry; batches of new entries come from the app's event flush.
"""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import Input, Label, Select, Static

from ..console_data import Changes, FarmModel
from ..widgets.log_view import BACKEND_UNIT, PRIORITY_NAMES, Entry, JournalView
from .base import FarmScreen

PRIORITY_CHOICES = [
    ("all (debug)", 7),
    ("info", 6),
    ("notice", 5),
    ("warning", 4),
    ("err", 3),
    ("crit", 2),
]
ALL_UNITS = "*"


class JournalScreen(FarmScreen):
    MODE = "journal"

    BINDINGS = [
        Binding("slash", "search", "Search"),
        Binding("p", "pause", "Pause"),
        Binding("f", "follow", "Follow"),
        Binding("l", "cycle_priority", "Priority"),
        Binding("u", "cycle_unit", "Unit"),
        Binding("escape", "clear_search", "Clear search", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self._units: list[str] = [BACKEND_UNIT]
        self._loaded_log = False

    def compose_body(self) -> ComposeResult:
        with Horizontal(id="journal-bar"):
            yield Label("priority ")
            yield Select(PRIORITY_CHOICES, value=7, allow_blank=False, id="journal-priority", compact=True)
            yield Label(" unit ")
            yield Select(self._unit_options(), value=ALL_UNITS, allow_blank=False, id="journal-unit",
                         compact=True)
            yield Static("", id="journal-state")
        yield JournalView(id="journal-view")
        yield Input(placeholder="search (enter: keep, esc: clear)", id="journal-search")

    def on_mount(self) -> None:
        self.query_one("#journal-search", Input).display = False
        super().on_mount()
        self.view.focus()
        self._update_state()

    @property
    def view(self) -> JournalView:
        return self.query_one("#journal-view", JournalView)

    def _unit_options(self) -> list[tuple[str, str]]:
        options = [("all units", ALL_UNITS)]
        for unit in self._units:
            options.append((f"{unit} (backend)" if unit == BACKEND_UNIT else unit, unit))
        return options

    # ---------------------------------------------------------------- sync
    def farm_reset(self, model: FarmModel) -> None:
        # The app merges what a refetch brings in with the live entries (no duplicates) and
        # hands new entries over in farm_changes; only the first load reads its history.
        if not self._loaded_log:
            self._loaded_log = True
            entries = [Entry.from_backend(d) if kind == "log" else Entry.from_journal(d)
                       for kind, d in self.console_app.recent_log_entries]
            entries.sort(key=lambda e: e.ts)
            self._add(entries)

    def farm_changes(self, changes: Changes, model: FarmModel) -> None:
        if not self._loaded_log:
            return
        entries = [Entry.from_backend(e) for e in changes.logs]
        entries += [Entry.from_journal(e) for e in changes.journal]
        if entries:
            entries.sort(key=lambda e: e.ts)
            self._add(entries)

    def _add(self, entries: list[Entry]) -> None:
        if not entries:
            return
        self.view.add_entries(entries)
        new_units = {e.unit for e in entries} - set(self._units)
        if new_units:
            self._units = [BACKEND_UNIT] + sorted((set(self._units) | new_units) - {BACKEND_UNIT})
            select = self.query_one("#journal-unit", Select)
            current = select.value
            with self.prevent(Select.Changed):
                select.set_options(self._unit_options())
                select.value = current if current in {ALL_UNITS, *self._units} else ALL_UNITS
        self._update_state()

    def _update_state(self) -> None:
        view = self.view
        text = Text()
        text.append(f"  {len(view.view)}/{len(view.entries)} lines")
        text.append("  following" if view.follow else "  not following", style="green" if view.follow else "yellow")
        if view.paused:
            text.append(f"  PAUSED ({len(view.held)} new)", style="bold yellow")
        if view.search:
            text.append(f"  search '{view.search}'", style="bold")
        if view.min_priority < 7:
            text.append(f"  >= {PRIORITY_NAMES[view.min_priority]}", style="bold")
        self.query_one("#journal-state", Static).update(text)

    # ---------------------------------------------------------------- filters
    @on(Select.Changed, "#journal-priority")
    def _priority_changed(self, event: Select.Changed) -> None:
        if isinstance(event.value, int):
            self.view.set_filter(min_priority=event.value)
            self._update_state()

    @on(Select.Changed, "#journal-unit")
    def _unit_changed(self, event: Select.Changed) -> None:
        value = event.value
        self.view.set_filter(unit=None if value in (ALL_UNITS, Select.NULL) else str(value))
        self._update_state()

    def set_min_priority(self, priority: int) -> None:
        self.query_one("#journal-priority", Select).value = priority

    def action_cycle_priority(self) -> None:
        values = [v for _, v in PRIORITY_CHOICES]
        select = self.query_one("#journal-priority", Select)
        current = select.value if select.value in values else 7
        select.value = values[(values.index(current) + 1) % len(values)]

    def action_cycle_unit(self) -> None:
        values = [ALL_UNITS, *self._units]
        select = self.query_one("#journal-unit", Select)
        current = select.value if select.value in values else ALL_UNITS
        select.value = values[(values.index(current) + 1) % len(values)]

    def action_search(self) -> None:
        box = self.query_one("#journal-search", Input)
        box.display = True
        box.focus()

    @on(Input.Changed, "#journal-search")
    def _search_changed(self, event: Input.Changed) -> None:
        self.view.set_filter(search=event.value.strip())
        self._update_state()

    @on(Input.Submitted, "#journal-search")
    def _search_done(self) -> None:
        self.view.focus()

    def action_clear_search(self) -> None:
        box = self.query_one("#journal-search", Input)
        if box.display:
            box.value = ""
            box.display = False
            self.view.set_filter(search="")
            self.view.focus()
            self._update_state()

    def action_pause(self) -> None:
        self.view.set_paused(not self.view.paused)
        self._update_state()

    def action_follow(self) -> None:
        self.view.set_follow(not self.view.follow)
        self._update_state()

    @on(JournalView.FollowChanged)
    def _follow_changed(self) -> None:
        self._update_state()
