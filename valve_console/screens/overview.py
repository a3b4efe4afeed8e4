"""Overview: the health of each backend service, the gateway's network interfaces, farm counts."""

from __future__ import annotations

import time

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Static

from ..console_data import Changes, FarmModel, farm_watts, format_watts, pdu_watts
from ..contract import Gitlab
from ..widgets.state_badge import outlet_badge, service_badge
from .base import FarmScreen


def format_uptime(seconds: float) -> str:
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"{days}d {hours}h {minutes:02d}m"
    return f"{hours}h {minutes:02d}m"


def gitlab_summary(gitlab: Gitlab) -> Text:
    """The farm's GitLab instances in words, from the backend's answer: each one's URL and runners, and
    whether it is Vivian's stand-in (its ``GET /version`` says ``<x.y.z>-vivian``) or which GitLab it is."""
    if not gitlab.instances:
        return Text("none configured", style="dim")
    line = Text()
    for i, inst in enumerate(gitlab.instances.values()):
        if i:
            line.append("; ")
        line.append(inst.name, style="bold")
        version = inst.version or ""
        if version.endswith("-vivian"):
            line.append(" is a Vivian stand-in", style="yellow")
            line.append(f" (GitLab {version})")
        elif version:
            line.append(f" GitLab {version}")
        line.append(f" at {inst.url}, {inst.runners} runner{'s' if inst.runners != 1 else ''}, {inst.state}")
    return line


def power_line(model: FarmModel) -> Text:
    """The farm's load (the sum of its PDUs') then each metered PDU's load; in words when none meters."""
    total = farm_watts(model.pdus)
    if total is None:
        return Text("no PDU meters power", style="dim")
    line = Text()
    line.append(format_watts(total), style="bold")
    for name, pdu in sorted(model.pdus.items()):
        load = pdu_watts(pdu)
        if load is not None:
            line.append(f"  {name} {format_watts(load)}")
    return line


class OverviewScreen(FarmScreen):
    MODE = "overview"

    def compose_body(self) -> ComposeResult:
        with Horizontal(id="overview-top"):
            with Vertical(id="farm-box", classes="box"):
                yield Static("", id="farm-info")
            with Vertical(id="counts-box", classes="box"):
                yield Static("", id="farm-counts")
        with Vertical(id="services-box", classes="box"):
            yield Static("", id="services")
        with Vertical(id="interfaces-box", classes="box"):
            yield Static("", id="interfaces")

    gitlab_line: Text | None = None  # the farm's GitLab in words (None: not fetched yet)

    def on_mount(self) -> None:
        self.query_one("#farm-box").border_title = "Farm"
        self.query_one("#counts-box").border_title = "Counts"
        self.query_one("#services-box").border_title = "Backend services"
        self.query_one("#interfaces-box").border_title = "Gateway network interfaces"
        super().on_mount()
        if not self.model.loaded:
            self.query_one("#farm-info", Static).update("connecting to the backend...")
        self.set_interval(30, self._tick_uptime)

    def _tick_uptime(self) -> None:
        if self.model.loaded:
            self._show_farm(self.model)

    # ---------------------------------------------------------------- sync
    def farm_reset(self, model: FarmModel) -> None:
        self._fetch_gitlab()
        self._show_farm(model)
        self._show_services(model)
        self._show_interfaces(model)
        self._show_counts(model)

    def farm_changes(self, changes: Changes, model: FarmModel) -> None:
        if changes.health:
            self._show_services(model)
            if "gitlab" in changes.health:  # an instance synced, was added, removed or went down
                self._fetch_gitlab()
        if changes.machines or changes.outlets or changes.pdus or changes.console_info or changes.jobs:
            self._show_counts(model)

    def _show_farm(self, model: FarmModel) -> None:
        health = model.health
        uptime = float(health.uptime if health else 0) + (time.monotonic() - model.fetched_at)
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold")
        table.add_column()
        table.add_row("farm", (health.farm_name if health else "") or "?")
        table.add_row("API", (health.api if health else "") or "-")
        table.add_row("netconsole", (health.netconsole if health else "") or "-")
        table.add_row("version", (health.version if health else "") or "?")
        table.add_row("uptime", format_uptime(uptime))
        if self.gitlab_line is not None:
            table.add_row("GitLab", self.gitlab_line)
        table.add_row("backend", self.console_app.client.describe)
        self.query_one("#farm-info", Static).update(table)

    def _fetch_gitlab(self) -> None:
        self.run_worker(self._read_gitlab(), group="overview-gitlab", exclusive=True, exit_on_error=False)

    async def _read_gitlab(self) -> None:
        try:
            answer = await self.console_app.client.gitlab()
        except Exception:  # noqa: BLE001 - a backend away is the banner's news; the line stays as it was
            return
        self.gitlab_line = gitlab_summary(answer)
        if self.model.loaded:
            self._show_farm(self.model)

    def _show_services(self, model: FarmModel) -> None:
        services = model.health.services if model.health else {}
        table = Table.grid(padding=(0, 2))
        table.add_column()
        table.add_column(style="bold")
        table.add_column()
        for name, info in services.items():
            reason = info.reason or ""
            table.add_row(service_badge(info.state), name, Text(reason, style="dim" if not reason else ""))
        if not services:
            table.add_row("", "no service reported", "")
        self.query_one("#services", Static).update(table)

    def _show_interfaces(self, model: FarmModel) -> None:
        table = Table(box=None, padding=(0, 2), show_edge=False, header_style="bold")
        for column in ("name", "state", "MAC", "addresses"):
            table.add_column(column)
        for iface in model.gateway:
            state = iface.state or "?"
            badge = Text(f"[{state.upper():^4}]", style="bold green" if state == "up" else "red")
            table.add_row(iface.name, badge, iface.mac or "-", ", ".join(iface.addresses) or "-")
        if not model.gateway:
            table.add_row("-", "", "", Text("no interface reported"))
        self.query_one("#interfaces", Static).update(table)

    def _show_counts(self, model: FarmModel) -> None:
        counts = model.counts()
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold")
        table.add_column(justify="right")
        table.add_column()
        duts = counts["duts"]
        table.add_row("DUTs", str(counts["machines"]),
                      "  ".join(f"{state} {n}" for state, n in sorted(duts.items())) or "none yet")
        outlets = counts["outlets"]
        detail = Text()
        detail.append_text(outlet_badge("ON"))
        detail.append(f" {outlets['ON']}  ")
        detail.append_text(outlet_badge("OFF"))
        detail.append(f" {outlets['OFF']}")
        if outlets["other"]:
            detail.append("  ")
            detail.append_text(outlet_badge(None))
            detail.append(f" {outlets['other']}")
        table.add_row("outlets", str(sum(outlets.values())), detail)
        table.add_row("PDUs", str(counts["pdus"]), "")
        table.add_row("power", "", power_line(model))
        typing = f", {counts['consoles_typing']} typed into" if counts["consoles_typing"] else ""
        table.add_row("consoles", str(counts["consoles"]), f"{counts['consoles_connected']} connected{typing}")
        queued = f", {counts['jobs_queued']} queued" if counts["jobs_queued"] else ""
        table.add_row("jobs", str(counts["jobs"]), f"running{queued}")
        self.query_one("#farm-counts", Static).update(table)
