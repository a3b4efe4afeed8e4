"""GitLab (key 8): the GitLab instances, the runners of the exposed machines, and config.toml.

Instances: name, URL, state, last sync, runners; ``a`` adds one and ``e`` edits the selected one in a
form (``GitlabFormScreen``: tokens typed masked, never shown back: the API masks them; the backend tries
the URL and token on GitLab before it stores anything and its refusal is shown in the form), ``x`` removes
it. Runners: one row per runner (machine, instance, runner id, description, tags, the token's last check,
the last error) and one per machine without a runner (not exposed, not ready, pending); ``s`` syncs the
selected instance now, ``n`` renews the selected runner's token, ``t`` exposes or un-exposes its machine.
Every action asks first (``ConsoleApp.run_confirmed``). Below: where gitlab-runner's config.toml was
written, when, with how many runners, and the pre-build user/namespace filter.

The screen reads ``GET /api/v1/gitlab`` when shown, every few seconds while it is the current screen,
after its actions, and when machines change.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlparse

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, DataTable, Input, Label, Static

from ..client import FarmClientError
from ..console_data import Changes, FarmModel
from ..contract import Gitlab, GitlabInstance, GitlabRunner
from ..widgets.keyed_table import cursor_key, select_key
from .base import FarmScreen

if TYPE_CHECKING:
    from ..app import ConsoleApp

POLL_SECONDS = 3.0
GATEWAY = "gateway"  # the gateway runner's key in place of a MAC (backend/gitlab: GATEWAY)
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
INSTANCE_COLUMNS = (("Name", "name"), ("URL", "url"), ("State", "state"), ("Last sync", "sync"),
                    ("Runners", "runners"))
RUNNER_COLUMNS = (("Machine", "machine"), ("Instance", "instance"), ("Runner", "runner"),
                  ("Description", "description"), ("Tags", "tags"), ("Token", "token"), ("Last error", "error"))
STATE_STYLES = {"ok": "bold green", "not exposing": "yellow", "starting": "yellow", "unreachable": "bold red"}


def clock(stamp: float | None) -> str:
    """A Unix time as the local ``HH:MM:SS`` ('-' for none)."""
    if not stamp:
        return "-"
    try:
        return datetime.fromtimestamp(float(stamp)).strftime("%H:%M:%S")
    except (TypeError, ValueError, OverflowError, OSError):
        return "?"


def token_words(runner: GitlabRunner) -> str:
    """The token's last check: ``valid 09:20:00``, ``renewed: why 09:21:00``, ``not checked yet``."""
    if not runner.verify:
        return "not checked yet"
    return f"{runner.verify} {clock(runner.verified_at)}"


def runner_key(instance: str, mac: str) -> str:
    return f"{instance}|{mac}"


def split_key(key: str | None) -> tuple[str, str] | None:
    if not key or "|" not in key:
        return None
    instance, mac = key.split("|", 1)
    return instance, mac


def check_url(value: str) -> str | None:
    """None when ``value`` is an http(s) URL with a host, else what is wrong."""
    parsed = urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.netloc or " " in value:
        return "expected an http(s):// URL, e.g. https://gitlab.freedesktop.org"
    return None


def filter_words(gitlab: Gitlab) -> str:
    users, namespaces = gitlab.allowed_users, gitlab.allowed_namespaces
    if not users and not namespaces:
        return "pre-build filter: none (every job runs)"
    parts = []
    if users:
        parts.append("users " + ", ".join(users))
    if namespaces:
        parts.append("namespaces " + ", ".join(namespaces))
    return "pre-build filter: " + "; ".join(parts)


class GitlabScreen(FarmScreen):
    MODE = "gitlab"

    DEFAULT_CSS = """
    GitlabScreen .gitlab-title { height: 1; padding: 0 1; text-style: bold; }
    GitlabScreen #gitlab-instances { height: auto; max-height: 10; }
    GitlabScreen #gitlab-runners { height: 1fr; }
    GitlabScreen #gitlab-config { height: auto; padding: 0 1; }
    GitlabScreen #gitlab-message { height: auto; padding: 0 1; color: $error; text-style: bold; }
    """

    BINDINGS = [
        Binding("a", "add", "Add"),
        Binding("e", "edit", "Edit"),
        Binding("x,delete", "remove", "Remove"),
        Binding("s", "sync", "Sync"),
        Binding("n", "renew", "Renew token"),
        Binding("t", "expose", "Expose/unexpose"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.gitlab: Gitlab | None = None
        self.instance_table = DataTable(id="gitlab-instances", cursor_type="row", zebra_stripes=True)
        self.runner_table = DataTable(id="gitlab-runners", cursor_type="row", zebra_stripes=True)
        self.message_line = Static("", id="gitlab-message")
        self.config_line = Static("", id="gitlab-config")

    def compose_body(self) -> ComposeResult:
        with Vertical():
            yield self.message_line
            yield Static("GitLab instances  (a add, e edit, x remove, s sync)", classes="gitlab-title")
            yield self.instance_table
            yield Static("Runners  (n renew token, t expose/unexpose the machine)", classes="gitlab-title")
            yield self.runner_table
            yield self.config_line

    def on_mount(self) -> None:
        for label, key in INSTANCE_COLUMNS:
            self.instance_table.add_column(label, key=key)
        for label, key in RUNNER_COLUMNS:
            self.runner_table.add_column(label, key=key)
        super().on_mount()
        self.set_interval(POLL_SECONDS, self._poll)
        self.message_line.display = False
        self.refresh_gitlab()
        self.call_after_refresh(self.instance_table.focus)

    def on_screen_resume(self) -> None:
        self.refresh_gitlab()

    def _poll(self) -> None:
        if self.is_current:
            self.refresh_gitlab()

    # ---------------------------------------------------------------- data
    def farm_reset(self, model: FarmModel) -> None:
        if self.gitlab is not None:
            self.show(self.gitlab)
        self.refresh_gitlab()

    def farm_changes(self, changes: Changes, model: FarmModel) -> None:
        if changes.machines and self.is_current:  # a machine's runners or exposure changed
            self.refresh_gitlab()

    @work(exclusive=True, group="gitlab-fetch", exit_on_error=False)
    async def refresh_gitlab(self) -> None:
        try:
            gitlab = await self.console_app.client.gitlab()
        except FarmClientError as exc:
            self.show_message(self.console_app.too_old("GitLab", exc) or f"cannot read the GitLab state: {exc}")
            return
        self.show_message("")
        self.show(gitlab)

    def show_message(self, text: str) -> None:
        self.message_line.update(text)
        self.message_line.display = bool(text)

    def show(self, gitlab: Gitlab) -> None:
        self.gitlab = gitlab
        self._show_instances(gitlab)
        self._show_runners(gitlab, self.model)
        self._show_config(gitlab)

    def _show_instances(self, gitlab: Gitlab) -> None:
        table = self.instance_table
        keep = cursor_key(table)
        table.clear()
        for name, inst in sorted(gitlab.instances.items()):
            state = Text(inst.state, style=STATE_STYLES.get(inst.state, ""))
            if inst.reason:
                state.append(f": {inst.reason}", style="")
            table.add_row(Text(name), Text(inst.url), state, clock(inst.last_sync), str(inst.runners), key=name)
        if not gitlab.instances:
            table.add_row(Text("none yet: press a to add one", style="dim"), "", "", "", "", key="")
        select_key(table, keep)

    def runner_rows(self, gitlab: Gitlab, model: FarmModel) -> list[tuple[str, tuple[Any, ...]]]:
        """(key, cells): every runner, then every machine in service without one (why not)."""
        rows: list[tuple[str, tuple[Any, ...]]] = []
        with_runner: set[str] = set()
        for runner in gitlab.runners:
            mac = runner.mac_address or GATEWAY
            with_runner.add(mac)
            name = "gateway" if runner.gateway else model.machine_name(mac)
            error = Text(runner.error, style="red") if runner.error else Text("-", style="dim")
            # Text, not str: a str cell is markup (and ``:family:`` in a tag an emoji)
            rows.append((runner_key(runner.instance, mac), (
                Text(name), Text(runner.instance), f"#{runner.runner_id}" if runner.runner_id is not None else "-",
                Text(runner.description), Text(", ".join(runner.tags)), Text(token_words(runner)), error)))
        for mac in sorted(model.machines, key=model.machine_name):
            machine = model.machines[mac]
            if mac in with_runner or machine.is_retired:
                continue
            errors = [r.error for r in machine.runners if r.error]
            states = [r.state for r in machine.runners]
            if not machine.gitlab_exposed:
                what = Text("not exposed", style="dim")
            elif not machine.ready_for_service:
                what = Text("not ready", style="dim")
            elif "error" in states:
                what = Text("error", style="bold red")
            else:
                what = Text(states[0] if states else "pending", style="yellow")
            error = Text("; ".join(errors), style="red") if errors else Text("-", style="dim")
            rows.append((runner_key("", mac), (Text(model.machine_name(mac)), "-", what, "-", "", "-", error)))
        return rows

    def _show_runners(self, gitlab: Gitlab, model: FarmModel) -> None:
        table = self.runner_table
        keep = cursor_key(table)
        table.clear()
        for key, cells in self.runner_rows(gitlab, model):
            table.add_row(*cells, key=key)
        select_key(table, keep)

    def _show_config(self, gitlab: Gitlab) -> None:
        text = Text()
        text.append("config.toml ", style="bold")
        text.append(gitlab.config_path)
        if gitlab.config_written_at:
            text.append(f", written {clock(gitlab.config_written_at)}, {gitlab.config_runners} runners")
        else:
            text.append(", not written yet")
        text.append("\n")
        text.append(filter_words(gitlab))
        self.config_line.update(text)

    # ---------------------------------------------------------------- selection
    def selected_instance(self) -> str | None:
        """The instance under the instances' cursor, or the selected runner's when the runners have focus."""
        if self.focused is self.runner_table:
            picked = split_key(cursor_key(self.runner_table))
            if picked and picked[0]:
                return picked[0]
        name = cursor_key(self.instance_table)
        if name:
            return name
        names = sorted(self.gitlab.instances) if self.gitlab else []
        return names[0] if len(names) == 1 else None

    def selected_runner(self) -> tuple[str, str] | None:
        """(instance, mac) of the runners' cursor row (instance '' for a machine without a runner)."""
        return split_key(cursor_key(self.runner_table))

    def select_runner(self, instance: str, mac: str) -> bool:
        key = runner_key(instance, mac)
        if key not in self.runner_table.rows:
            return False
        select_key(self.runner_table, key)
        self.runner_table.focus()
        return True

    def select_instance(self, name: str) -> bool:
        if name not in self.instance_table.rows:
            return False
        select_key(self.instance_table, name)
        self.instance_table.focus()
        return True

    # ---------------------------------------------------------------- actions
    @property
    def app_(self) -> "ConsoleApp":
        return self.console_app

    def _done(self, message: str) -> str:
        self.refresh_gitlab()
        return message

    def action_add(self) -> None:
        def added(result: GitlabInstance | None) -> None:
            if result is not None:
                self.app_.report(f"GitLab instance {result.name} added ({result.url}, token accepted)")
                self.refresh_gitlab()

        self.app.push_screen(GitlabFormScreen(), added)

    def action_edit(self) -> None:
        name = self.selected_instance()
        inst = self.gitlab.instances.get(name) if self.gitlab and name else None
        if inst is None:
            self.app_.report("no GitLab instance selected: add one first (a)", "warning")
            return

        def saved(result: GitlabInstance | None) -> None:
            if result is not None:
                self.app_.report(f"GitLab instance {result.name} saved")
                self.refresh_gitlab()

        self.app.push_screen(GitlabFormScreen(inst), saved)

    def action_remove(self) -> None:
        name = self.selected_instance()
        if not name:
            self.app_.report("no GitLab instance selected", "warning")
            return

        def removed(answer: Any) -> str:
            left = answer.runners_left_on_gitlab
            more = f"; runners left on GitLab: {', '.join(map(str, left))}" if left else ""
            return self._done(f"GitLab instance {name} removed{more}")

        self.app_.run_confirmed(
            f"Remove GitLab instance {name}? Its runners are deleted on GitLab and from config.toml.",
            lambda: self.app_.client.remove_gitlab(name), label="Remove", danger=True, owner=self,
            group=f"gitlab-remove-{name}", failed=f"removing GitLab instance {name} failed", success=removed,
        )

    def action_sync(self) -> None:
        name = self.selected_instance()
        if not name:
            self.app_.report("no GitLab instance selected: add one first (a)", "warning")
            return

        def synced(inst: GitlabInstance) -> str:
            reason = f": {inst.reason}" if inst.reason else ""
            return self._done(f"GitLab {name} synced: {inst.state}{reason}, {inst.runners} runners")

        self.app_.run_confirmed(
            f"Sync GitLab instance {name} now (create, update, verify tokens, delete strays)?",
            lambda: self.app_.client.sync_gitlab(name), label="Sync", owner=self, group=f"gitlab-sync-{name}",
            busy=f"syncing GitLab {name}...", failed=f"syncing GitLab {name} failed", success=synced,
        )

    def action_renew(self) -> None:
        picked = self.selected_runner()
        if picked is None or not picked[0]:
            self.app_.report("select a runner (a row with a runner id) to renew its token", "warning")
            return
        instance, mac = picked
        name = "the gateway runner" if mac == GATEWAY else self.model.machine_name(mac)

        def renewed(runner: GitlabRunner) -> str:
            return self._done(f"{name} on {instance}: new runner #{runner.runner_id}, token {token_words(runner)}")

        self.app_.run_confirmed(
            f"Renew the runner token of {name} on {instance}? Its runner is replaced by a new one.",
            lambda: self.app_.client.renew_gitlab_runner(instance, mac), label="Renew", owner=self,
            group=f"gitlab-renew-{instance}-{mac}", busy=f"renewing the token of {name}...",
            failed=f"renewing the token of {name} failed", success=renewed,
        )

    def action_expose(self) -> None:
        picked = self.selected_runner()
        if picked is None or picked[1] == GATEWAY:
            self.app_.report("select a machine's row to expose or un-expose it", "warning")
            return
        mac = picked[1]
        machine = self.model.machines.get(mac)
        if machine is None:
            self.app_.report(f"{mac} is not a machine of this farm", "warning")
            return
        expose = not machine.gitlab_exposed
        name = self.model.machine_name(mac)
        verb = "Expose" if expose else "Un-expose"
        what = ("it gets a runner on every exposing instance once it is ready" if expose
                else "its runners are deleted on GitLab")

        def done(_answer: Any) -> str:
            return self._done(f"{name} {'exposed on' if expose else 'no longer exposed on'} GitLab")

        self.app_.run_confirmed(
            f"{verb} {name} on GitLab? {what[0].upper()}{what[1:]}.",
            lambda: self.app_.client.update_machine(mac, gitlab_exposed=expose), label=verb, danger=not expose,
            owner=self, group=f"gitlab-expose-{mac}", failed=f"{verb.lower()} {name} failed", success=done,
        )


class GitlabFormScreen(ModalScreen[GitlabInstance | None]):
    """Add (``instance`` None) or edit a GitLab instance. Tokens are typed masked and never shown: left
    empty when editing, they stay as they are. Bad input is said next to its field and nothing is sent;
    the backend tries the URL and token on GitLab first, and its refusal is shown here."""

    DEFAULT_CSS = """
    GitlabFormScreen { align: center middle; }
    """

    BINDINGS = [
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+s", "save", "Save", priority=True),
    ]

    def __init__(self, instance: GitlabInstance | None = None) -> None:
        super().__init__()
        self.instance = instance

    @property
    def console_app(self) -> "ConsoleApp":
        return cast("ConsoleApp", self.app)

    def compose(self) -> ComposeResult:
        inst = self.instance
        keep = "(empty: unchanged)" if inst else ""
        with VerticalScroll(id="gitlab-form", classes="dialog form"):
            yield Static(f"Edit GitLab instance {inst.name}" if inst else "Add a GitLab instance",
                         classes="dialog-title")
            yield Label("Name")
            yield Input(inst.name if inst else "", placeholder="e.g. fdo", id="gl-name", disabled=inst is not None)
            yield Static("", id="err-name", classes="field-error")
            yield Label("URL")
            yield Input(inst.url if inst else "", placeholder="https://gitlab.freedesktop.org", id="gl-url")
            yield Static("", id="err-url", classes="field-error")
            yield Label(f"Access token (create_runner scope) {keep}".strip())
            yield Input("", password=True, placeholder="glpat-...", id="gl-token")
            yield Static("", id="err-token", classes="field-error")
            yield Label(f"Registration token, legacy fallback (optional) {keep}".strip())
            yield Input("", password=True, id="gl-registration-token")
            yield Label("Farm tags (comma-separated, optional)")
            yield Input(", ".join(inst.farm_tags) if inst else "", id="gl-tags")
            yield Checkbox("Expose runners", inst.expose_runners if inst else True, id="gl-expose")
            yield Static("", id="gitlab-form-error", classes="form-error")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Save (ctrl+s)", id="gl-save", variant="primary")
                yield Button("Cancel (esc)", id="gl-cancel")

    def on_mount(self) -> None:
        self.query_one("#gl-url" if self.instance else "#gl-name", Input).focus()

    def _value(self, widget_id: str) -> str:
        return self.query_one(f"#{widget_id}", Input).value.strip()

    def _field_error(self, field: str, message: str) -> None:
        widget = self.query_one(f"#err-{field}", Static)
        widget.update(message)
        widget.set_class(bool(message), "-error")

    def validate(self) -> dict[str, Any] | None:
        """The fields to send, or None after saying what is wrong next to them."""
        for field in ("name", "url", "token"):
            self._field_error(field, "")
        ok = True
        name = self._value("gl-name")
        if self.instance is None and not NAME.fullmatch(name):
            self._field_error("name", "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
            ok = False
        url = self._value("gl-url")
        problem = check_url(url)
        if problem:
            self._field_error("url", problem)
            ok = False
        token = self._value("gl-token")
        registration = self._value("gl-registration-token")
        if self.instance is None and not token and not registration:
            self._field_error("token", "a token is needed (or a registration token)")
            ok = False
        tags = [t.strip() for t in self._value("gl-tags").split(",") if t.strip()]
        expose = self.query_one("#gl-expose", Checkbox).value
        if not ok:
            return None
        fields: dict[str, Any] = {"url": url, "farm_tags": tags, "expose_runners": expose}
        if token:
            fields["token"] = token
        if registration:
            fields["registration_token"] = registration
        if self.instance is None:
            fields["name"] = name
            return fields
        old = self.instance  # an edit sends what changed only
        unchanged = {"url": old.url, "farm_tags": list(old.farm_tags), "expose_runners": old.expose_runners}
        return {k: v for k, v in fields.items() if unchanged.get(k, object()) != v}

    @on(Input.Submitted)
    @on(Button.Pressed, "#gl-save")
    def action_save(self) -> None:
        error = self.query_one("#gitlab-form-error", Static)
        error.update("")
        fields = self.validate()
        if fields is None:
            error.update("not saved: fix the fields above")
            return
        if self.instance is not None and not fields:
            self.dismiss(None)
            return
        self.submit(fields)

    @work(exit_on_error=False, exclusive=True, group="gitlab-form")
    async def submit(self, fields: dict[str, Any]) -> None:
        error = self.query_one("#gitlab-form-error", Static)
        error.update("trying the URL and token on GitLab...")
        client = self.console_app.client
        try:
            if self.instance is None:
                fields = dict(fields)
                result = await client.add_gitlab(fields.pop("name"), fields.pop("url"), fields.pop("token", ""),
                                                 **fields)
            else:
                result = await client.update_gitlab(self.instance.name, **fields)
        except FarmClientError as exc:
            error.update(f"not saved: {exc}")
            return
        self.dismiss(result)

    @on(Button.Pressed, "#gl-cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)
