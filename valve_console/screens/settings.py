"""Settings (key 9): every effective setting of the farm, where it came from, and a form for the few
that may change while the farm runs.

The table (``GET /api/v1/settings``): name, value (secrets masked by the backend), source (default,
environment, command line, start-up, data dir file: with what a stored value overrides) and whether it
may change at run time; a read-only one shows the variable that sets it. ``e``/``enter`` opens the form
(``SettingsFormScreen``, modal) on the editable ones; the API checks every change (config.py's rules)
and its refusal is shown in the form, next to the field it names. ``r`` puts the selected setting back
to its start-up value (asks first). Every console refreshes from the ``settings`` event a change
publishes, and refetches when it reconnects.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, cast

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Input, Label, Static

from ..client import FarmClientError
from ..console_data import Changes, FarmModel
from ..contract import FarmSettings, Setting
from ..widgets.keyed_table import cursor_key, select_key
from .base import FarmScreen

if TYPE_CHECKING:
    from ..app import ConsoleApp

COLUMNS = (("Setting", "name"), ("Value", "value"), ("Source", "source"), ("Editable", "editable"))
INTEGERS = ("training_loops", "training_qualify")
HELP = {
    "training_loops": "boot loops of a training (Sgt. Hartman)",
    "training_qualify": "passes a training needs (at most the loops)",
    "default_pdu_off_delay": "seconds an outlet stays off, by default",
    "gitlab_sync_interval": "seconds between full GitLab syncs",
    "gitlab_retry_max": "longest back-off while GitLab is down (s)",
    "gitlab_timeout": "one GitLab call's timeout (s)",
    "gitlab_verify_interval": "seconds between runner token checks",
    "trusted_networks": "act as the operator without a token: auto, none, CIDRs (comma-separated)",
}
SOURCE_STYLES = {"data dir file": "bold", "environment": "cyan", "command line": "cyan", "default": "dim"}
VALUE_WIDTH = 48  # longer values are cut in the table; the line under it shows the selected one whole


def value_text(value: Any) -> str:
    """A setting's value as the operator reads and types it."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def setting_cells(setting: Setting, dots: str = "…") -> tuple[Any, ...]:
    text = value_text(setting.value) or "-"
    if len(text) > VALUE_WIDTH:
        text = text[: VALUE_WIDTH - len(dots)] + dots
    value = Text(text, style="dim" if setting.value in (None, "", [], {}) else "")
    source = Text(setting.source, style=SOURCE_STYLES.get(setting.source, ""))
    if setting.overrides:
        source.append(" (overrides)", style="dim")
    editable = Text("yes", style="bold green") if setting.editable else Text(f"no: {setting.variable}", style="dim")
    return setting.name, value, source, editable


def parse_input(name: str, text: str) -> Any:
    """What the form sends for ``name``: a number when it reads as one (the API says what is wrong
    otherwise, in config.py's words), the text as typed for the networks (comma-separated)."""
    text = text.strip()
    if name == "trusted_networks":
        return text
    try:
        return int(text) if name in INTEGERS else float(text)
    except ValueError:
        return text


def setting_detail(setting: Setting) -> Text:
    """The selected setting whole: its value, its source and what it overrides, the variable that sets it."""
    text = Text()
    text.append(setting.name, style="bold")
    text.append(f" = {value_text(setting.value) or '-'}")
    text.append(f"   from: {setting.source}")
    if setting.overrides:
        text.append(f", {setting.overrides}")
    text.append(f"   variable: {setting.variable}", style="dim")
    text.append("   may change at run time (e)" if setting.editable else "   read-only while the farm runs",
                style="green" if setting.editable else "dim")
    return text


def error_field(message: str, names: list[str]) -> str | None:
    """The setting an API error is about (its message starts with the name)."""
    for name in sorted(names, key=len, reverse=True):
        if message.startswith(name) or message.startswith(f"'{name}'"):
            return name
    return None


class SettingsTable(DataTable[Any]):
    BINDINGS = [Binding("enter", "select_cursor", "Edit", show=False)]


class SettingsScreen(FarmScreen):
    MODE = "settings"

    BINDINGS = [
        Binding("e", "edit", "Edit"),
        Binding("r", "reset", "Reset to start-up value"),
        Binding("g", "reload", "Refetch", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.shown: FarmSettings | None = None

    def compose_body(self) -> ComposeResult:
        yield Static("fetching the settings...", id="settings-status", classes="status-line")
        yield SettingsTable(id="settings-table", cursor_type="row", zebra_stripes=True)
        yield Static("", id="settings-detail")

    def on_mount(self) -> None:
        table = self.table
        for label, key in COLUMNS:
            table.add_column(label, key=key)
        super().on_mount()
        if self.model.settings is not None:
            self.show(self.model.settings)
        self.reload()
        table.focus()

    @property
    def table(self) -> SettingsTable:
        return self.query_one("#settings-table", SettingsTable)

    # ---------------------------------------------------------------- data
    @work(exit_on_error=False, exclusive=True, group="settings-fetch")
    async def reload(self) -> None:
        try:
            answer = await self.console_app.client.settings()
        except FarmClientError as exc:
            words = self.console_app.too_old("Settings", exc) or f"cannot read the settings: {exc}"
            self.query_one("#settings-status", Static).update(Text(words, style="red"))
            return
        self.model.settings = answer
        self.show(answer)

    def action_reload(self) -> None:
        self.reload()

    def farm_reset(self, model: FarmModel) -> None:
        """A (re)connection: what changed while away is fetched again."""
        if self.shown is not None:
            self.reload()

    def farm_changes(self, changes: Changes, model: FarmModel) -> None:
        if changes.settings is not None:
            self.show(changes.settings)

    def show(self, answer: FarmSettings) -> None:
        self.shown = answer
        table = self.table
        cursor = cursor_key(table)
        table.clear()
        dots = "..." if self.console_app.linux_console else "…"
        for setting in answer.settings:
            table.add_row(*setting_cells(setting, dots), key=setting.name)
        select_key(table, cursor)
        self._show_detail()
        stored = sum(1 for s in answer.settings if s.source == "data dir file")
        status = Text()
        status.append(f"{len(answer.settings)} settings, {len(answer.editable)} editable at run time")
        status.append(f"; {stored} kept in {answer.file}" if stored else f"; changes are kept in {answer.file}")
        self.query_one("#settings-status", Static).update(status)

    @on(DataTable.RowHighlighted, "#settings-table")
    def _show_detail(self) -> None:
        setting = self.cursor_setting()
        self.query_one("#settings-detail", Static).update(setting_detail(setting) if setting else "")

    def cursor_setting(self) -> Setting | None:
        name = cursor_key(self.table)
        return self.shown.get(name) if self.shown is not None and name else None

    # ---------------------------------------------------------------- actions
    @on(DataTable.RowSelected, "#settings-table")
    def _selected(self, _event: DataTable.RowSelected) -> None:
        self.action_edit()

    def action_edit(self) -> None:
        if self.shown is None:
            self.console_app.report("the settings are not fetched yet", "warning")
            return
        setting = self.cursor_setting()
        if setting is not None and not setting.editable:
            self.console_app.report(f"{setting.name} cannot change while the farm runs: set {setting.variable} "
                                    "and restart", "warning")
        self.console_app.edit_settings(setting.name if setting is not None and setting.editable else None)

    def action_reset(self) -> None:
        setting = self.cursor_setting()
        if setting is None:
            return
        if not setting.editable:
            self.console_app.report(f"{setting.name} is read-only at run time: it is set by {setting.variable}",
                                    "warning")
            return
        if setting.source != "data dir file":
            self.console_app.report(f"{setting.name} is not changed at run time: nothing to reset", "warning")
            return
        name = setting.name

        def done(answer: FarmSettings) -> str:
            self.show(answer)
            after = answer.get(name)
            return f"{name} is back to {value_text(after.value) if after else '?'} ({after.source if after else '?'})"

        self.console_app.run_confirmed(
            f"Put {name} back to its start-up value (the environment's or the default) and remove it from the "
            "data dir file?", lambda: self.console_app.client.update_settings({name: None}),
            label="Reset", group="settings", failed=f"resetting {name} failed", success=done,
        )


class SettingsFormScreen(ModalScreen[FarmSettings | None]):
    """The settings that may change at run time, one field each; the API's refusal below (and next to
    the field it names); nothing is changed unless every change is accepted."""

    BINDINGS = [
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+s", "save", "Save", priority=True),
    ]

    def __init__(self, settings: FarmSettings, focus: str | None = None) -> None:
        super().__init__()
        self.settings = settings
        self.editable = [s for s in settings.settings if s.editable]
        self.initial = {s.name: value_text(s.value) for s in self.editable}
        self.focus_name = focus

    @property
    def console_app(self) -> "ConsoleApp":
        return cast("ConsoleApp", self.app)

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="settings-dialog", classes="dialog form"):
            yield Static("Settings that may change while the farm runs", classes="dialog-title")
            yield Static("", id="settings-error", classes="form-error")
            for setting in self.editable:
                note = f" [{setting.source}]" if setting.source != "default" else ""
                yield Label(f"{setting.name}: {HELP.get(setting.name, '')}{note}", classes="setting-label")
                yield Input(self.initial[setting.name], id=f"set-{setting.name}", placeholder=setting.variable)
                yield Static("", id=f"err-{setting.name}", classes="field-error")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Save (ctrl+s)", id="settings-save", variant="primary")
                yield Button("Cancel (esc)", id="settings-cancel")

    def on_mount(self) -> None:
        if self.editable:
            name = self.focus_name if self.focus_name in self.initial else self.editable[0].name
            self.query_one(f"#set-{name}", Input).focus()

    def _field_error(self, name: str, message: str) -> None:
        widget = self.query_one(f"#err-{name}", Static)
        widget.update(message)
        widget.set_class(bool(message), "-error")

    def changes(self) -> dict[str, Any]:
        """The fields the operator changed, as the API takes them."""
        out: dict[str, Any] = {}
        for name, before in self.initial.items():
            text = self.query_one(f"#set-{name}", Input).value
            if text.strip() != before.strip():
                out[name] = parse_input(name, text)
        return out

    @on(Input.Submitted)
    @on(Button.Pressed, "#settings-save")
    def action_save(self) -> None:
        for name in self.initial:
            self._field_error(name, "")
        error = self.query_one("#settings-error", Static)
        changes = self.changes()
        if not changes:
            error.update("nothing changed")
            return
        error.update("")
        self.submit(changes)

    @work(exit_on_error=False, exclusive=True, group="settings-save")
    async def submit(self, changes: dict[str, Any]) -> None:
        error = self.query_one("#settings-error", Static)
        error.update(f"saving {', '.join(changes)}...")
        try:
            answer = await self.console_app.client.update_settings(changes)
        except FarmClientError as exc:
            message = str(exc)
            error.update(f"the API refused (nothing changed): {message}")
            field = error_field(message, list(self.initial))
            if field:
                self._field_error(field, message)
            return
        self.dismiss(answer)

    @on(Button.Pressed, "#settings-cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)
