"""Machine form: what an operator configures on a DUT (PDU outlet, tty, tags, off delay, comment,
ready for service, retired, exposed on GitLab, console device, remote console). Keyboard only:
tab/shift+tab, space toggles, ctrl+s or Save sends ONE PATCH with the changed machine fields, then, only when they
changed, the console device (``set_console_device``) and the remote console (``set_console_source``);
escape or Cancel goes back. Problems are shown next to their field.
"""

from __future__ import annotations

import re
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Button, Checkbox, Input, Label, Select, Static

from ..client import FarmClientError
from ..console_data import Changes, FarmModel, outlet_of
from ..contract import Machine, SerialDevice
from ..widgets.state_badge import outlet_badge
from .base import FarmScreen

_TTY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,63}$")
FIELDS = ("machine", "pdu", "port", "tty", "tags", "delay", "comment", "ready", "retired", "condev", "remote",
          "training", "gitlab")


def format_delay(value: Any) -> str:
    if value is None:
        return ""
    number = float(value)
    return str(int(number)) if number.is_integer() else f"{number:g}"


def own_delay(machine: Machine) -> float | None:
    """The machine's own off delay, or None when it uses the farm's default."""
    return None if machine.pdu_off_delay_is_default else machine.pdu_off_delay


def parse_tags(text: str) -> list[str]:
    return list(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))


def error_field(message: str) -> str | None:
    """Which form field an API error message is about, if it names one."""
    lowered = message.lower()
    for needle, field in (
        ("training_qualify", "training"),
        ("training_loops", "training"),
        ("pdu_off_delay", "delay"),
        ("off delay", "delay"),
        ("local_tty_device", "tty"),
        ("tty", "tty"),
        ("manual_tags", "tags"),
        ("tag", "tags"),
        ("comment", "comment"),
        ("ready_for_service", "ready"),
        ("is_retired", "retired"),
        ("gitlab_exposed", "gitlab"),
        ("pdu_port_id", "port"),
        ("port", "port"),
        ("outlet", "port"),
        ("pdu", "pdu"),
    ):
        if needle in lowered:
            return field
    return None


class FormRow(Horizontal):
    """A label on the left, the field and its error line on the right."""

    DEFAULT_CSS = """
    FormRow { height: auto; }
    FormRow > Label { width: 22; padding: 1 1 0 0; text-align: right; }
    FormRow > Vertical { height: auto; width: 1fr; }
    """

    def __init__(self, label: str, field: Any, name: str) -> None:
        super().__init__(id=f"row-{name}")
        self.label = label
        self.field = field
        self.field_name = name

    def compose(self) -> ComposeResult:
        yield Label(self.label)
        with Vertical():
            yield self.field
            yield Static("", id=f"err-{self.field_name}", classes="field-error")


class MachineFormScreen(FarmScreen):
    MODE = "machine"

    BINDINGS = [
        Binding("ctrl+s", "save", "Save", priority=True),
        Binding("escape", "cancel", "Cancel"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.mac: str | None = None
        self.original: Machine | None = None
        self._loaded_target: str | None = None
        self._machine_values: set[str] = set()
        self.original_console: dict[str, Any] = {"device": None, "remote": None}

    def compose_body(self) -> ComposeResult:
        with VerticalScroll(id="machine-form", classes="form"):
            yield Static("", id="form-title")
            yield FormRow("Machine", Select([], id="form-machine", allow_blank=True, prompt="choose a machine"),
                          "machine")
            yield FormRow("PDU", Select([], id="form-pdu", allow_blank=True, prompt="none"), "pdu")
            yield FormRow("Port", Select([], id="form-port", allow_blank=True, prompt="none"), "port")
            yield FormRow("TTY device", Input(placeholder="e.g. ttyUSB0", id="form-tty"), "tty")
            yield FormRow("Tags (manual)", Input(placeholder="comma-separated, e.g. gpu:amd, big", id="form-tags"),
                          "tags")
            yield FormRow("Off delay (s)", Input(placeholder="empty: the farm's default", id="form-delay"), "delay")
            yield FormRow("Comment", Input(placeholder="free text", id="form-comment"), "comment")
            yield FormRow("", Checkbox("Ready for service", id="form-ready"), "ready")
            yield FormRow("", Checkbox("Retired", id="form-retired"), "retired")
            yield FormRow("", Checkbox("Exposed on GitLab", id="form-gitlab"), "gitlab")
            yield FormRow("Console device", Select([], id="form-condev", allow_blank=True, prompt="none"), "condev")
            yield FormRow("Remote console", Input(placeholder="tcp://HOST:PORT or rfc2217://HOST:PORT (empty: none)",
                                                  id="form-remote"), "remote")
            # Sgt. Hartman overrides (ticking "ready for service" above skips the training)
            training = Horizontal(
                Input(placeholder="loops (empty: the farm's)", id="form-loops"),
                Input(placeholder="passes needed (empty: the farm's)", id="form-qualify"),
                id="form-training",
            )
            training.styles.height = "auto"
            for box in training.children:
                box.styles.width = "1fr"
            yield FormRow("Training loops/pass", training, "training")
            yield Static("", id="form-error", classes="form-error")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Save (ctrl+s)", id="form-save", variant="primary")
                yield Button("Cancel (esc)", id="form-cancel")

    def on_mount(self) -> None:
        super().on_mount()
        if not self.model.loaded:
            self.query_one("#form-title", Static).update("connecting to the backend...")

    def on_screen_resume(self) -> None:
        self.call_after_refresh(self._load_target)

    def forget(self) -> None:
        """The form was saved or cancelled: load afresh next time it is shown."""
        self._loaded_target = None
        self.mac = None

    def _load_target(self) -> None:
        target = self.console_app.form_target
        if target is not None and target != self._loaded_target and target in self.model.machines:
            self.load(target)
        elif self.mac is None and self.model.machines:
            self.load(sorted(self.model.machines)[0])

    # ---------------------------------------------------------------- sync
    def farm_reset(self, model: FarmModel) -> None:
        self._update_machine_options(model)
        self._update_pdu_options(model)
        self._load_target()
        if self.mac is None:
            self._show_empty()

    def farm_changes(self, changes: Changes, model: FarmModel) -> None:
        if any(mac not in self._machine_values for mac in changes.machines):
            self._update_machine_options(model)
            if self.mac is None:
                self._load_target()
        if changes.pdus:
            self._update_pdu_options(model)

    def _update_machine_options(self, model: FarmModel) -> None:
        select = self.query_one("#form-machine", Select)
        macs = sorted(model.machines, key=model.machine_name)
        self._machine_values = set(macs)
        with self.prevent(Select.Changed):
            select.set_options([(f"{model.machine_name(m)}  {m}", m) for m in macs])
            if self.mac in self._machine_values:
                select.value = self.mac

    def _update_pdu_options(self, model: FarmModel) -> None:
        select = self.query_one("#form-pdu", Select)
        current = select.value
        with self.prevent(Select.Changed):
            select.set_options([(name, name) for name in sorted(model.pdus)])
            if current in model.pdus:
                select.value = current

    def _port_options(self, pdu: str | None) -> list[tuple[Text, str]]:
        if not pdu:
            return []
        keep = self.original_outlet[1] if self.original_outlet[0] == pdu else None
        options = []
        for port in self.model.free_ports(pdu, keep=keep):
            info = self.model.outlet(pdu, port)
            label = Text(f"{port}  ")
            label.append_text(outlet_badge(info.state if info else None))
            if info and info.label:
                label.append(f"  {info.label}", style="dim")
            if port == keep:
                label.append("  (current)", style="bold")
            options.append((label, port))
        return options

    @property
    def original_outlet(self) -> tuple[str | None, str | None]:
        return outlet_of(self.original) if self.original else (None, None)

    def _show_empty(self) -> None:
        self.query_one("#form-title", Static).update(
            "No machine registered yet: power one on from the PDU screen (3) and it registers itself."
        )

    # ---------------------------------------------------------------- loading
    def load(self, mac: str) -> None:
        """Fill the form with ``mac``'s current configuration, discarding unsaved edits."""
        machine = self.model.machines.get(mac)
        if machine is None:
            return
        self.mac = mac
        self._loaded_target = mac
        self.original = machine
        pdu, port = outlet_of(machine)
        self._clear_errors()
        title = Text()
        title.append(f"{machine.full_name or mac}", style="bold")
        title.append(f"  {mac}  {machine.ip_address or '-'}  state {machine.state}")
        registered = machine.registered_tags
        if registered:
            title.append(f"\nregistered tags: {', '.join(registered)}", style="dim")
        self.query_one("#form-title", Static).update(title)
        with self.prevent(Select.Changed):
            machine_select = self.query_one("#form-machine", Select)
            if mac not in self._machine_values:
                self._update_machine_options(self.model)
            machine_select.value = mac
            pdu_select = self.query_one("#form-pdu", Select)
            if pdu is not None and pdu not in self.model.pdus:
                pdu_select.set_options([(n, n) for n in sorted({*self.model.pdus, pdu})])
            pdu_select.value = pdu if pdu is not None else Select.NULL
            port_select = self.query_one("#form-port", Select)
            port_select.set_options(self._port_options(pdu))
            if port is not None:
                if port not in {v for _, v in self._port_options(pdu)}:
                    port_select.set_options([*self._port_options(pdu), (port, port)])
                port_select.value = port
            else:
                port_select.value = Select.NULL
        self.query_one("#form-tty", Input).value = machine.local_tty_device or ""
        self.query_one("#form-tags", Input).value = ", ".join(machine.manual_tags)
        delay_input = self.query_one("#form-delay", Input)
        delay_input.value = format_delay(own_delay(machine))
        if machine.pdu_off_delay_is_default:
            delay_input.placeholder = f"empty: the farm default ({format_delay(machine.pdu_off_delay)} s)"
        self.query_one("#form-comment", Input).value = machine.comment or ""
        for box_id, value in (
            ("#form-ready", machine.ready_for_service),
            ("#form-retired", machine.is_retired),
            ("#form-gitlab", machine.gitlab_exposed),
        ):
            box = self.query_one(box_id, Checkbox)
            box.value = bool(value)
            self._label_checkbox(box)
        console = self.model.consoles.get(mac)
        self.original_console = {"device": (console.device if console else None) or None,
                                 "remote": (console.remote if console else None) or None}
        self._update_device_options(self.model.devices, select_original=True)
        self.query_one("#form-remote", Input).value = self.original_console["remote"] or ""
        training = machine.training
        for own, last, name in ((machine.training_loops, training and training.loops, "loops"),
                                (machine.training_qualify, training and training.qualify, "qualify")):
            box = self.query_one(f"#form-{name}", Input)
            box.value = "" if own is None else str(own)
            if last:
                what = "loops" if name == "loops" else "passes needed"
                box.placeholder = f"{what} (empty: the farm's; last training: {last})"
        self.query_one("#form-pdu", Select).focus()
        self.refresh_devices()

    # ---------------------------------------------------------------- console device
    @work(exit_on_error=False, exclusive=True, group="machine-form-devices")
    async def refresh_devices(self) -> None:
        """The serial devices present now (they come and go with USB adapters)."""
        try:
            devices = await self.console_app.client.console_devices()
        except FarmClientError:
            return  # the model's list stays; the banner tells about a lost backend
        self.model.devices = devices
        self._update_device_options(devices)

    def _update_device_options(self, devices: dict[str, SerialDevice], select_original: bool = False) -> None:
        select = self.query_one("#form-condev", Select)
        current = self.original_console["device"] if select_original else select.value
        options: list[tuple[Text, str]] = []
        for ident, info in sorted(devices.items()):
            label = Text(str(info.devnode or ident))
            if info.serial:
                label.append(f"  serial {info.serial}", style="dim")
            label.append(f"  {ident}", style="dim")
            owner = info.machine
            if owner and owner != self.mac:
                label.append(f"  (console of {self.model.machine_name(owner)})", style="yellow")
            if info.error:
                label.append(f"  {info.error}", style="red")
            options.append((label, ident))
        if isinstance(current, str) and current not in devices:
            options.append((Text(f"{current}  (not present)"), current))
        with self.prevent(Select.Changed):
            select.set_options(options)
            select.value = current if isinstance(current, str) else Select.NULL

    @on(Checkbox.Changed)
    def _checkbox_changed(self, event: Checkbox.Changed) -> None:
        self._label_checkbox(event.checkbox)

    def _label_checkbox(self, box: Checkbox) -> None:
        """The state in words too: colour alone does not read on an 8-colour console."""
        base = {"form-ready": "Ready for service", "form-retired": "Retired", "form-gitlab": "Exposed on GitLab"}.get(
            box.id or "", ""
        )
        if base:
            box.label = f"{base}: {'yes' if box.value else 'no'}"

    @on(Select.Changed, "#form-machine")
    def _machine_chosen(self, event: Select.Changed) -> None:
        if isinstance(event.value, str) and event.value != self.mac:
            self.load(event.value)

    @on(Select.Changed, "#form-pdu")
    def _pdu_chosen(self, event: Select.Changed) -> None:
        pdu = event.value if isinstance(event.value, str) else None
        port_select = self.query_one("#form-port", Select)
        with self.prevent(Select.Changed):
            port_select.set_options(self._port_options(pdu))
            original_pdu, original_port = self.original_outlet
            if pdu is not None and pdu == original_pdu and original_port is not None:
                port_select.value = original_port
        self._field_error("port", "")
        self._field_error("pdu", "")

    # ---------------------------------------------------------------- errors
    def _field_error(self, field: str, message: str) -> None:
        widget = self.query_one(f"#err-{field}", Static)
        widget.update(message)
        widget.set_class(bool(message), "-error")

    def _clear_errors(self) -> None:
        for field in FIELDS:
            self._field_error(field, "")
        self.query_one("#form-error", Static).update("")

    # ---------------------------------------------------------------- saving
    def collect(self) -> dict[str, Any] | None:
        """The changed fields as PATCH fields, or None after showing what is wrong."""
        self._clear_errors()
        ok = True
        fields: dict[str, Any] = {}
        original = self.original
        if original is None:
            return {}  # no machine loaded: nothing changed
        pdu_value = self.query_one("#form-pdu", Select).value
        port_value = self.query_one("#form-port", Select).value
        pdu = pdu_value if isinstance(pdu_value, str) else None
        port = port_value if isinstance(port_value, str) else None
        original_pdu, original_port = self.original_outlet
        if pdu != original_pdu:
            fields["pdu"] = pdu
            if pdu is not None:
                fields["pdu_port_id"] = port
        elif port != original_port:
            fields["pdu_port_id"] = port

        tty = self.query_one("#form-tty", Input).value.strip().removeprefix("/dev/") or None
        if tty is not None and not _TTY.fullmatch(tty):
            self._field_error("tty", "a device name such as ttyUSB0 (letters, digits, . _ : / -)")
            ok = False
        elif tty != (original.local_tty_device or None):
            fields["local_tty_device"] = tty

        tags = parse_tags(self.query_one("#form-tags", Input).value)
        bad = [t for t in tags if len(t) > 256]
        if bad:
            self._field_error("tags", "a tag is at most 256 characters")
            ok = False
        elif tags != list(original.manual_tags):
            fields["manual_tags"] = tags

        delay_text = self.query_one("#form-delay", Input).value.strip()
        if delay_text != format_delay(own_delay(original)):
            if not delay_text:
                fields["pdu_off_delay"] = None
            else:
                try:
                    delay = float(delay_text)
                except ValueError:
                    delay = -1.0
                    self._field_error("delay", f"{delay_text!r} is not a number of seconds")
                    ok = False
                else:
                    if not 0 <= delay <= 3600 or delay != delay:
                        self._field_error("delay", "the off delay is a number of seconds from 0 to 3600")
                        ok = False
                    else:
                        fields["pdu_off_delay"] = delay

        comment = self.query_one("#form-comment", Input).value
        if comment != (original.comment or ""):
            fields["comment"] = comment
        ready = self.query_one("#form-ready", Checkbox).value
        if ready != bool(original.ready_for_service):
            fields["ready_for_service"] = ready
        retired = self.query_one("#form-retired", Checkbox).value
        if retired != bool(original.is_retired):
            fields["is_retired"] = retired
        exposed = self.query_one("#form-gitlab", Checkbox).value
        if exposed != bool(original.gitlab_exposed):
            fields["gitlab_exposed"] = exposed
        for key, name, before in (("training_loops", "loops", original.training_loops),
                                  ("training_qualify", "qualify", original.training_qualify)):
            text = self.query_one(f"#form-{name}", Input).value.strip()
            if text == ("" if before is None else str(before)):
                continue
            if not text:
                fields[key] = None
            elif not text.isdigit() or not 1 <= int(text) <= 1000:
                self._field_error("training", "a whole number from 1 to 1000 (empty: the farm's default)")
                ok = False
            else:
                fields[key] = int(text)
        if not ok:
            self.query_one("#form-error", Static).update(Text("fix the fields marked above", style="bold red"))
            marked = [w for w in self.query(".field-error") if w.has_class("-error")]
            if marked:  # the form may be longer than the screen: show the first problem
                self.call_after_refresh(marked[0].scroll_visible, animate=False)
            return None
        return fields

    def console_changes(self) -> dict[str, str | None]:
        """The console settings that changed: ``device`` (an identity or None), ``remote`` (a URL or None)."""
        changes: dict[str, str | None] = {}
        device_value = self.query_one("#form-condev", Select).value
        device = device_value if isinstance(device_value, str) else None
        if device != self.original_console["device"]:
            changes["device"] = device
        remote = self.query_one("#form-remote", Input).value.strip() or None
        if remote != self.original_console["remote"]:
            changes["remote"] = remote
        return changes

    @on(Button.Pressed, "#form-save")
    def action_save(self) -> None:
        if self.mac is None:
            self.console_app.report("no machine to save", "warning")
            return
        fields = self.collect()
        if fields is None:
            return
        console = self.console_changes()
        if not fields and not console:
            self.console_app.report(f"{self.model.machine_name(self.mac)}: nothing changed", "information")
            self.console_app.leave_form()
            return
        self.save(self.mac, fields, console)

    @work(exit_on_error=False, exclusive=True, group="machine-form-save")
    async def save(self, mac: str, fields: dict[str, Any], console: dict[str, str | None] | None = None) -> None:
        client = self.console_app.client
        self.query_one("#form-error", Static).update("saving...")
        if fields:
            try:
                answer = await client.update_machine(mac, **fields)
            except FarmClientError as exc:
                message = str(exc)
                self.query_one("#form-error", Static).update(Text(f"the API refused: {message}", style="bold red"))
                self.call_after_refresh(self.query_one("#form-error", Static).scroll_visible, animate=False)
                field = error_field(message)
                if field is not None:
                    self._field_error(field, message)
                self.console_app.report(f"saving {self.model.machine_name(mac)} failed: {message}", "error")
                return
            if answer.mac_address == mac:
                self.original = answer  # saving again does not repeat this PATCH
        saved = list(fields)
        problems: list[str] = []
        for key, field, call, what in (
            ("device", "condev", client.set_console_device, "console device"),
            ("remote", "remote", client.set_console_source, "remote console"),
        ):
            if key not in (console or {}):
                continue
            value = (console or {})[key]
            try:
                await call(mac, value)
            except FarmClientError as exc:
                self._field_error(field, str(exc))
                problems.append(f"{what}: {exc}")
                continue
            self.original_console[key] = value
            saved.append(what)
        if problems:
            message = "; ".join(problems)
            done = f" (saved: {', '.join(saved)})" if saved else ""
            self.query_one("#form-error", Static).update(Text(f"the API refused {message}{done}", style="bold red"))
            self.console_app.report(f"saving {self.model.machine_name(mac)} failed: {message}", "error")
            return
        self.query_one("#form-error", Static).update("")
        self.console_app.report(f"saved {self.model.machine_name(mac)} ({', '.join(saved)})", "information")
        self.console_app.leave_form()

    @on(Button.Pressed, "#form-cancel")
    def action_cancel(self) -> None:
        self.console_app.leave_form()
