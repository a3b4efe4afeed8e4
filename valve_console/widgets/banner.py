"""The top bar (farm, screens) and the lost-backend banner shown on every screen."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

SCREENS = (
    ("1", "overview", "Overview"),
    ("2", "journal", "Journal"),
    ("3", "pdus", "PDUs"),
    ("4", "duts", "DUTs"),
    ("5", "consoles", "Consoles"),
    ("6", "machine", "Machine"),
    ("7", "jobs", "Jobs"),
    ("8", "gitlab", "GitLab"),
    ("9", "settings", "Settings"),
)


FLEET_SCREEN = ("0", "fleet", "Fleet")


class TopBar(Static):
    """``valve-console  farm NAME   1 Overview  2 Journal ...`` with the current screen reversed; in a
    fleet ``valve-console  fleet F  gateway G  farm NAME   0 Fleet  1 Overview ...``."""

    DEFAULT_CSS = """
    TopBar { height: 1; background: $panel; color: $foreground; }
    """

    def __init__(self, current: str) -> None:
        super().__init__()
        self.current = current

    def on_mount(self) -> None:
        self.watch(self.app, "farm_name", self._refresh_bar)
        if getattr(self.app, "fleet", None) is not None:
            self.watch(self.app, "gateway_name", self._refresh_bar)

    def _refresh_bar(self, _value: object = None) -> None:
        farm = getattr(self.app, "farm_name", "") or "?"
        fleet = getattr(self.app, "fleet", None)
        text = Text()
        text.append(" valve-console ", style="bold")
        screens = SCREENS
        if fleet is not None:
            screens = (FLEET_SCREEN, *SCREENS)
            text.append(f" fleet {fleet.name} ")
            gateway = getattr(self.app, "gateway_name", "") or "?"
            text.append(f" gateway {gateway} ", style="bold" if self.current != "fleet" else "")
        text.append(f" farm {farm} ", style="")
        text.append("  ")
        for key, mode, title in screens:
            label = f" {key} {title} "
            if mode == self.current:
                text.append(label, style="bold reverse")
            else:
                text.append(label)
        self.update(text)


class Banner(Static):
    """Shown only while the backend is lost: what failed, where, and that we are reconnecting."""

    DEFAULT_CSS = """
    Banner { height: auto; display: none; background: $error; color: $text; text-style: bold;
             padding: 0 1; }
    Banner.-shown { display: block; }
    """

    def on_mount(self) -> None:
        self.watch(self.app, "backend_problem", self._show)

    def _show(self, problem: str) -> None:
        self.set_class(bool(problem), "-shown")
        self.update(problem or "")


class StatusLine(Static):
    """The outcome of the operator's last action (also shown as a toast), on every screen."""

    DEFAULT_CSS = """
    StatusLine { height: 1; padding: 0 1; background: $boost; }
    """

    STYLES = {"error": "bold red", "warning": "bold yellow"}

    def on_mount(self) -> None:
        self.watch(self.app, "last_status", self._show)

    def _show(self, status: tuple[str, str] | None) -> None:
        if not status:
            self.update("")
            return
        message, severity = status
        self.update(Text(message, style=self.STYLES.get(severity, "green")))
