"""Modal dialogs: confirmation, and adding a PDU."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any, cast

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Static

from ..client import FarmClientError
from ..contract import Pdu

if TYPE_CHECKING:
    from ..app import ConsoleApp


class ConfirmScreen(ModalScreen[bool]):
    """Ask before doing something to the hardware. ``y``/``enter`` confirm, ``n``/``escape`` cancel."""

    BINDINGS = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n", "answer(False)", "No"),
        Binding("escape", "answer(False)", "Cancel"),
    ]

    def __init__(self, question: str, *, confirm_label: str = "Yes", danger: bool = False) -> None:
        super().__init__()
        self.question = question
        self.confirm_label = confirm_label
        self.danger = danger

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-dialog", classes="dialog"):
            yield Static(self.question, id="confirm-question")
            with Horizontal(classes="dialog-buttons"):
                yield Button(f"{self.confirm_label} (y)", id="confirm-yes",
                             variant="error" if self.danger else "primary")
                yield Button("No (n)", id="confirm-no")

    def on_mount(self) -> None:
        self.query_one("#confirm-yes", Button).focus()

    @on(Button.Pressed, "#confirm-yes")
    def _yes(self) -> None:
        self.dismiss(True)

    @on(Button.Pressed, "#confirm-no")
    def _no(self) -> None:
        self.dismiss(False)

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)


_HOSTPORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")
_PDU_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_hostport(value: str) -> str | None:
    """None when ``value`` is HOST:PORT, else what is wrong, in words."""
    match = _HOSTPORT.fullmatch(value.strip())
    if not match:
        return "expected HOST:PORT, e.g. 127.0.0.1:9191"
    if not 0 < int(match.group(2)) <= 65535:
        return "the port must be between 1 and 65535"
    return None


def api_error_field(message: str, driver: str) -> str | None:
    """Which field of the add-PDU form an API error is about, if it says."""
    lowered = message.lower()
    if "named" in lowered or "pdu name" in lowered or "a pdu name" in lowered:
        return "name"
    if "driver" in lowered and "unknown" in lowered:
        return "driver"
    if driver == "vpdu" and "hostname" in lowered:
        return "hostname"
    if driver == "dummy" and "ports" in lowered:
        return "ports"
    if "config" in lowered and driver not in ("vpdu", "dummy"):
        return "config"
    return None


class AddPduScreen(ModalScreen[Pdu | None]):
    """Driver, name and the driver's config; validation next to each field; the API's error below."""

    BINDINGS = [
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+s", "save", "Add", priority=True),
    ]

    def __init__(self, drivers: list[str] | None = None) -> None:
        super().__init__()
        self.drivers = drivers or []

    @property
    def console_app(self) -> "ConsoleApp":
        return cast("ConsoleApp", self.app)

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="add-pdu-dialog", classes="dialog form"):
            yield Static("Add a PDU", classes="dialog-title")
            yield Label("Driver")
            yield Select([(d, d) for d in self.drivers], id="pdu-driver", allow_blank=True,
                         prompt="choose a driver")
            yield Static("", id="err-driver", classes="field-error")
            yield Label("Name")
            yield Input(placeholder="e.g. pdu2", id="pdu-name")
            yield Static("", id="err-name", classes="field-error")
            with Vertical(id="cfg-vpdu", classes="driver-config"):
                yield Label("Hostname (HOST:PORT of the vPDU)")
                yield Input(placeholder="127.0.0.1:9191", id="pdu-hostname")
                yield Static("", id="err-hostname", classes="field-error")
            with Vertical(id="cfg-dummy", classes="driver-config"):
                yield Label("Number of outlets")
                yield Input("8", id="pdu-ports", type="integer")
                yield Static("", id="err-ports", classes="field-error")
            with Vertical(id="cfg-json", classes="driver-config"):
                yield Label("Config (a JSON object)")
                yield Input("{}", id="pdu-config")
                yield Static("", id="err-config", classes="field-error")
            yield Static("", id="add-pdu-error", classes="form-error")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Add (ctrl+s)", id="add-pdu-save", variant="primary")
                yield Button("Cancel (esc)", id="add-pdu-cancel")

    def on_mount(self) -> None:
        self._show_config(None)
        if not self.drivers:
            self.load_drivers()
        self.query_one("#pdu-driver", Select).focus()

    @work(exit_on_error=False, group="drivers")
    async def load_drivers(self) -> None:
        try:
            self.drivers = await self.console_app.client.drivers()
        except FarmClientError as exc:
            self.query_one("#add-pdu-error", Static).update(f"cannot list the drivers: {exc}")
            return
        self.query_one("#pdu-driver", Select).set_options([(d, d) for d in self.drivers])

    @on(Select.Changed, "#pdu-driver")
    def _driver_changed(self, event: Select.Changed) -> None:
        value = event.value
        self._show_config(None if value is Select.NULL else str(value))
        self.query_one("#err-driver", Static).update("")

    def _show_config(self, driver: str | None) -> None:
        kind = {"vpdu": "vpdu", "dummy": "dummy"}.get(driver or "", "json" if driver else "")
        for section in ("vpdu", "dummy", "json"):
            self.query_one(f"#cfg-{section}").display = section == kind

    def _field_error(self, field: str, message: str) -> None:
        widget = self.query_one(f"#err-{field}", Static)
        widget.update(message)
        widget.set_class(bool(message), "-error")

    def validate(self) -> tuple[str, str, dict[str, Any]] | None:
        """The request to send, or None after showing what is wrong next to the fields."""
        ok = True
        for field in ("driver", "name", "hostname", "ports", "config"):
            self._field_error(field, "")
        driver_value = self.query_one("#pdu-driver", Select).value
        driver = "" if driver_value is Select.NULL else str(driver_value)
        if not driver:
            self._field_error("driver", "choose a driver")
            ok = False
        name = self.query_one("#pdu-name", Input).value.strip()
        if not name:
            self._field_error("name", "a name is needed")
            ok = False
        elif not _PDU_NAME.fullmatch(name):
            self._field_error("name", "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
            ok = False
        config: dict[str, Any] = {}
        if driver == "vpdu":
            hostname = self.query_one("#pdu-hostname", Input).value.strip()
            problem = check_hostport(hostname) if hostname else "a hostname is needed (HOST:PORT)"
            if problem:
                self._field_error("hostname", problem)
                ok = False
            config = {"hostname": hostname}
        elif driver == "dummy":
            text = self.query_one("#pdu-ports", Input).value.strip()
            if not text.isdigit() or not 1 <= int(text) <= 1024:
                self._field_error("ports", "a number of outlets between 1 and 1024")
                ok = False
            else:
                config = {"ports": int(text)}
        elif driver:
            text = self.query_one("#pdu-config", Input).value.strip() or "{}"
            try:
                parsed = json.loads(text)
            except ValueError as exc:
                self._field_error("config", f"not JSON: {exc}")
                ok = False
            else:
                if isinstance(parsed, dict):
                    config = parsed
                else:
                    self._field_error("config", "the config must be a JSON object {...}")
                    ok = False
        return (name, driver, config) if ok else None

    @on(Input.Submitted)
    @on(Button.Pressed, "#add-pdu-save")
    def action_save(self) -> None:
        request = self.validate()
        self.query_one("#add-pdu-error", Static).update("")
        if request is not None:
            self.submit(*request)

    @work(exit_on_error=False, exclusive=True, group="add-pdu")
    async def submit(self, name: str, driver: str, config: dict[str, Any]) -> None:
        error = self.query_one("#add-pdu-error", Static)
        error.update(f"adding {name}...")
        try:
            result = await self.console_app.client.add_pdu(name, driver, config)
        except FarmClientError as exc:
            error.update(f"the API refused: {exc}")
            error.add_class("-error")
            field = api_error_field(str(exc), driver)
            if field:
                self._field_error(field, str(exc))
            return
        self.dismiss(result)

    @on(Button.Pressed, "#add-pdu-cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)
