"""State badges: every state as text AND colour, so it reads on an 8-colour Linux console too."""

from __future__ import annotations

from rich.text import Text

OUTLET_BADGES = {
    "ON": ("[ON ]", "bold green"),
    "OFF": ("[off]", "red"),
    "REBOOT": ("[rbt]", "bold yellow"),
}
UNKNOWN_OUTLET = ("[ ? ]", "bold yellow")

SERVICE_STYLES = {
    "ok": "bold green",
    "starting": "yellow",
    "stopping": "yellow",
    "degraded": "bold yellow",
    "failed": "bold red",
}

MACHINE_STYLES = {
    "IDLE": "green",
    "NOT_READY": "yellow",
    "WAIT_FOR_CONFIG": "yellow",
    "RETIRED": "dim",
    "TRAINING": "cyan",
    "RUNNING": "bold cyan",
    "QUEUED": "bold yellow",
}


def outlet_badge(state: str | None) -> Text:
    label, style = OUTLET_BADGES.get(str(state or "").upper(), UNKNOWN_OUTLET)
    return Text(label, style=style)


def service_badge(state: str | None) -> Text:
    text = str(state or "?")
    return Text(f"[{text.upper():^8}]", style=SERVICE_STYLES.get(text, "bold red"))


def machine_state(state: str | None) -> Text:
    text = str(state or "?")
    return Text(text, style=MACHINE_STYLES.get(text, ""))


def yes_no(value: object, yes_style: str = "green", no_style: str = "") -> Text:
    return Text("yes", style=yes_style) if value else Text("no", style=no_style)


def connection_badge(connected: object) -> Text:
    if connected is None:
        return Text("[ ? ] no console yet", style="yellow")
    if connected:
        return Text("[CON] connected", style="bold green")
    return Text("[---] not connected", style="red")
