"""Overview: the farm at a glance, and what needs the operator.

From top to bottom: a summary (the farm, its services, DUTs by state, outlets, power, jobs and their
trend over the last hours as sparklines), a tile per DUT (widgets/dut_tiles.py), the attention list (each
item with a letter: shift+letter goes to it), and the recent events. On a wide screen the attention list
and the events sit beside the tiles, with the gateway's details (the farm, each service, the network
interfaces) under them when the screen is tall enough. Compact (80x24, tty2): everything stacked, the
gateway's details summed up in the first line.
"""

from __future__ import annotations

import time
from string import ascii_uppercase

from rich.table import Table
from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Static

from ..console_data import Changes, FarmModel, farm_watts, format_watts, pdu_watts
from ..console_data.attention import Attention, last_jobs
from ..console_data.glance import job_rates, running_jobs, tile_of
from ..contract import Gitlab, ServiceHealth
from ..widgets.dut_tiles import DutTiles
from ..widgets.power_plot import sparkline
from ..widgets.state_badge import MACHINE_STYLES, service_badge
from .base import FarmScreen

COMPACT_BELOW = 120  # columns: narrower screens stack everything
DETAILS_FROM = 40  # rows: taller wide screens also show the gateway's details
TREND_HOURS = 12
ATTENTION_KEYS = ascii_uppercase
SEVERITY_STYLES = {"error": "bold red", "warning": "bold yellow"}


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


def services_words(services: dict[str, ServiceHealth]) -> Text:
    """``services all 6 ok``, or the ones that are not, by name and state word."""
    text = Text("services ", style="bold")
    bad = [(name, info) for name, info in services.items() if info.state != "ok"]
    if not services:
        return text.append("not reported", style="dim")
    if not bad:
        return text.append(f"all {len(services)} ok", style="green")
    for i, (name, info) in enumerate(bad):
        text.append(", " if i else "")
        text.append_text(Text(f"{name} {info.state.upper()}", style="bold red" if info.state == "failed"
                              else "bold yellow"))
    return text


def attention_line(key: str, item: Attention, width: int) -> Text:
    line = Text(no_wrap=True, overflow="ellipsis")
    line.append(f"{key} ", style="bold reverse")
    line.append(f"{item.label:<8} ", style=SEVERITY_STYLES.get(item.severity, ""))
    line.append(item.title, style="bold")
    if item.reason:
        line.append(f": {item.reason}")
    line.truncate(width, overflow="ellipsis")
    return line


def lines_of(lines: list[Text]) -> Text:
    """Lines as one Text that never wraps (each line cut at the width, with an ellipsis)."""
    text = Text("\n", no_wrap=True, overflow="ellipsis").join(lines)
    text.no_wrap, text.overflow = True, "ellipsis"
    return text


class OverviewScreen(FarmScreen):
    MODE = "overview"

    gitlab_line: Text | None = None  # the farm's GitLab in words (None: not fetched yet)

    def compose_body(self) -> ComposeResult:
        yield Static("", id="glance-summary")
        with Horizontal(id="glance-main"):
            with Vertical(id="tiles-box", classes="glance-section"):
                yield DutTiles(id="tiles", clock=lambda: self.model.clock())
            with Vertical(id="glance-side"):
                with VerticalScroll(id="attention-box", classes="glance-section", can_focus=False):
                    yield Static("", id="attention")
                with Vertical(id="events-box", classes="glance-section"):
                    yield Static("", id="events")
                with Vertical(id="gateway-box"):
                    with Vertical(id="farm-box", classes="box"):
                        yield Static("", id="farm-info")
                    with Vertical(id="services-box", classes="box"):
                        yield Static("", id="services")
                    with Vertical(id="interfaces-box", classes="box"):
                        yield Static("", id="interfaces")

    @property
    def tiles(self) -> DutTiles:
        return self.query_one(DutTiles)

    def on_mount(self) -> None:
        self.query_one("#tiles-box").border_title = "DUTs"
        self.query_one("#attention-box").border_title = "Attention"
        self.query_one("#events-box").border_title = "Recent events"
        self.query_one("#farm-box").border_title = "Farm"
        self.query_one("#services-box").border_title = "Backend services"
        self.query_one("#interfaces-box").border_title = "Gateway network interfaces"
        self._layout_for(self.app.size.width, self.app.size.height)
        super().on_mount()
        if not self.model.loaded:
            self.query_one("#glance-summary", Static).update("connecting to the backend...")
        self.tiles.focus()
        self.set_interval(5, self._tick)

    def on_resize(self, event: events.Resize) -> None:
        self._layout_for(event.size.width, event.size.height)
        if self.model.loaded:
            self._show_attention(self.console_app.attention)
            self._show_events(self.model)

    def _layout_for(self, width: int, height: int) -> None:
        compact = width < COMPACT_BELOW
        self.set_class(compact, "compact")
        self.set_class(not compact and height >= DETAILS_FROM, "detailed")
        self.tiles.set_detail(not compact)

    def _tick(self) -> None:
        """Every few seconds: the times in state and the uptime move on."""
        if self.model.loaded and self.is_current:
            self.tiles.tick()
            self._show_summary(self.model)
            self._show_farm(self.model)

    # ---------------------------------------------------------------- sync
    def farm_reset(self, model: FarmModel) -> None:
        self._fetch_gitlab()
        self._show_all(model)

    def _show_all(self, model: FarmModel) -> None:
        self._show_summary(model)
        self._show_tiles(model)
        self._show_attention(self.console_app.attention)
        self._show_events(model)
        self._show_farm(model)
        self._show_services(model)
        self._show_interfaces(model)

    _stale = False  # changes came while another screen was shown: redrawn when this one is again

    def farm_changes(self, changes: Changes, model: FarmModel) -> None:
        if "gitlab" in changes.health:  # an instance synced, was added, removed or went down
            self._fetch_gitlab()
        if changes.machines or changes.outlets or changes.pdus or changes.jobs or changes.health:
            if not self.is_current:  # nobody sees it: the work waits for the screen to come back
                self._stale = True
                return
            if changes.health:
                self._show_services(model)
            self._show_summary(model)
            self._show_tiles(model)
            self._show_events(model)

    def attention_changed(self, items: list[Attention]) -> None:
        """The app's attention list changed (it computes it for every screen's notifications)."""
        if not self.is_current:
            self._stale = True
            return
        self._show_attention(items)
        if self.model.loaded:
            self._show_tiles(self.model)

    def on_screen_resume(self) -> None:
        if self._stale and self.model.loaded:
            self._stale = False
            self._show_all(self.model)
        if self.focused is None:
            self.tiles.focus()

    # ---------------------------------------------------------------- the glance
    def _show_summary(self, model: FarmModel) -> None:
        health = model.health
        ascii = self.console_app.linux_console
        first = Text(no_wrap=True, overflow="ellipsis")
        first.append((health.farm_name if health else "") or "?", style="bold")
        if health:
            uptime = float(health.uptime) + (time.monotonic() - model.fetched_at)
            first.append(f" {health.version}  up {format_uptime(uptime)}  ")
            first.append_text(services_words(health.services))
        counts = model.counts()
        second = Text(no_wrap=True, overflow="ellipsis")
        second.append(f"DUTs {counts['machines']}", style="bold")
        for state, n in sorted(counts["duts"].items()):
            second.append(" ")
            second.append(f"{state} {n}", style=MACHINE_STYLES.get(state, ""))
        third = Text(no_wrap=True, overflow="ellipsis")
        outlets = counts["outlets"]
        third.append("outlets ", style="bold")
        third.append(f"{outlets['ON']} ON of {sum(outlets.values())}")
        total = farm_watts(model.pdus)
        if total is not None:
            third.append("  power ", style="bold")
            third.append(format_watts(total))
        third.append("  jobs ", style="bold")
        third.append(f"{counts['jobs']} running {counts['jobs_queued']} queued")
        fourth = Text(no_wrap=True, overflow="ellipsis")
        ended, rates = job_rates(model, model.clock(), TREND_HOURS)
        fourth.append(f"jobs per hour ({TREND_HOURS}h) ", style="bold")
        fourth.append(sparkline(ended, TREND_HOURS, ascii=ascii), style="cyan")
        fourth.append(f" {int(ended[-1])} in the last hour")
        fourth.append("  passed ", style="bold")
        fourth.append(sparkline([r * 100 if r is not None else None for r in rates], TREND_HOURS, ascii=ascii,
                               top=100.0), style="green")
        done = sum(ended)
        passed = sum(r * n for r, n in zip(rates, ended, strict=True) if r is not None)
        fourth.append(f" {round(100 * passed / done)}% of {int(done)}" if done else " -")
        self.query_one("#glance-summary", Static).update(lines_of([first, second, third, fourth]))

    def _show_tiles(self, model: FarmModel) -> None:
        flagged = {item.mac for item in self.console_app.attention if item.mac}
        running = running_jobs(model)
        last = last_jobs(model)
        machines = sorted(model.machines.values(), key=lambda m: ((m.full_name or m.mac_address), m.mac_address))
        self.tiles.set_tiles([tile_of(model, m, running.get(m.mac_address), last.get(m.mac_address),
                                      m.mac_address in flagged) for m in machines])
        self.query_one("#tiles-box").border_title = f"DUTs ({len(machines)})"

    def _show_attention(self, items: list[Attention]) -> None:
        box = self.query_one("#attention-box")
        width = max(10, box.content_size.width or self.app.size.width - 2)
        if not items:
            box.border_title = "Attention"
            self.query_one("#attention", Static).update(Text("nothing needs you", style="green"))
            return
        box.border_title = f"Attention ({len(items)}): shift+letter goes there"
        lines = [attention_line(key, item, width) for key, item in zip(ATTENTION_KEYS, items, strict=False)]
        if len(items) > len(ATTENTION_KEYS):
            lines.append(Text(f"and {len(items) - len(ATTENTION_KEYS)} more", style="dim"))
        self.query_one("#attention", Static).update(lines_of(lines))

    def _show_events(self, model: FarmModel) -> None:
        widget = self.query_one("#events", Static)
        rows = max(1, widget.size.height or 3)
        items = list(model.recent)[-rows:]
        if not items:
            widget.update(Text("nothing happened since the console started", style="dim"))
            return
        lines = []
        for item in reversed(items):  # newest first
            line = Text(no_wrap=True, overflow="ellipsis")
            line.append(time.strftime("%H:%M:%S ", time.localtime(item.at)), style="dim")
            line.append(item.text, style=SEVERITY_STYLES.get(item.severity, ""))
            lines.append(line)
        widget.update(lines_of(lines))

    # ---------------------------------------------------------------- keys
    def on_key(self, event: events.Key) -> None:
        char = event.character or ""
        if len(char) == 1 and char in ATTENTION_KEYS:
            items = self.console_app.attention
            i = ATTENTION_KEYS.index(char)
            if i < len(items):
                event.stop()
                self.console_app.go_to(items[i].target)

    def on_dut_tiles_opened(self, message: DutTiles.Opened) -> None:
        self.console_app.open_console(message.mac)

    def on_dut_tiles_edit(self, message: DutTiles.Edit) -> None:
        self.console_app.edit_machine(message.mac)

    # ---------------------------------------------------------------- the gateway's details (wide screens)
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
        table.add_row("power", power_line(model))
        table.add_row("backend", self.console_app.client.describe)
        self.query_one("#farm-info", Static).update(table)

    def _fetch_gitlab(self) -> None:
        # the method, not a coroutine made now: a screen removed before the worker starts leaves no
        # coroutine never awaited behind (a fleet gateway switch removes every screen)
        self.run_worker(self._read_gitlab, group="overview-gitlab", exclusive=True, exit_on_error=False)

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

