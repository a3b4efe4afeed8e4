"""ConsoleApp: the operator console (Textual), built on the FarmClient only.

The same app serves the all-in-one program (over the unix socket), ``--attach URL``, ssh and the
browser. Live data comes from the console's data layer (``console_data``): one worker runs the
``EventFeed``, which reads the event stream into its latest-wins buffer (``Changes``) and reconnects
with back-off when the stream or a fetch fails; a 15 Hz timer takes the buffer, applies it to the
``FarmModel`` and hands it to every mounted screen under ``App.batch_update()``. While the backend is
lost, a banner says so.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import re
import signal
import socket
from collections import OrderedDict, deque
from pathlib import Path
from typing import Any, Awaitable, Callable

from textual.app import App
from textual.binding import Binding
from textual.dom import DOMNode
from textual.reactive import reactive
from textual.scrollbar import ScrollBarRender
from textual.worker import Worker, WorkerState

from .client import FarmClient, FarmClientError
from .console_data import EventFeed, FarmModel, outlet_of
from .console_data.attention import NOTIFIED, Attention, Target, attention
from .console_data.fleet import CONSOLES_EVERY, Fleet, FleetSpec, Gateway, new_log_entry
from .contract import (
    DiscoveryEvent,
    DiscoveryStarted,
    DiscoveryStatus,
    Job,
    JournalEntry,
    LogEntry,
    OutletsDiscovery,
    FarmSettings,
    Pdu,
)
from .screens.base import FarmScreen
from .screens.commands import FarmCommands
from .screens.consoles import ConsolesScreen
from .screens.dialogs import AddPduScreen, ConfirmScreen
from .screens.duts import DutsScreen
from .screens.fleet import FleetScreen
from .screens.gitlab import GitlabScreen
from .screens.jobs import JobsScreen
from .screens.journal import JournalScreen
from .screens.machine_form import MachineFormScreen
from .screens.overview import OverviewScreen
from .screens.pdus import PdusScreen
from .screens.settings import SettingsFormScreen, SettingsScreen

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
APP_TCSS = HERE / "app.tcss"
VCONSOLE_TCSS = HERE / "vconsole.tcss"
FLUSH_HZ = 15
RECENT_LOG = 5000
GC_THRESHOLD = (50_000, 20, 100)
"""Collector thresholds once start-up is over: the frozen start-up objects are never scanned again,
and young collections of the steady state (console lines, events) run less often."""


def is_linux_console() -> bool:
    return os.environ.get("TERM", "") == "linux"


def make_writer_id() -> str:
    """A stable id for this TUI's console input (``tui-<hostname>-<pid>``, printable ASCII, <= 64)."""
    host = re.sub(r"[^!-~]", "", socket.gethostname().split(".")[0]) or "host"
    suffix = f"-{os.getpid()}"
    return f"tui-{host}"[: 64 - len(suffix)] + suffix


class ConsoleApp(App[int]):
    CSS_PATH = str(APP_TCSS)
    TITLE = "valve-console"
    COMMANDS = App.COMMANDS | {FarmCommands}
    MODES = {
        "overview": OverviewScreen,
        "journal": JournalScreen,
        "pdus": PdusScreen,
        "duts": DutsScreen,
        "consoles": ConsolesScreen,
        "machine": MachineFormScreen,
        "jobs": JobsScreen,
        "gitlab": GitlabScreen,
        "settings": SettingsScreen,
    }
    DEFAULT_MODE = "overview"
    BINDINGS = [
        Binding("1", "go('overview')", "Overview", id="go-overview"),
        Binding("2", "go('journal')", "Journal", id="go-journal"),
        Binding("3", "go('pdus')", "PDUs", id="go-pdus"),
        Binding("4", "go('duts')", "DUTs", id="go-duts"),
        Binding("5", "go('consoles')", "Consoles", id="go-consoles"),
        Binding("6", "go('machine')", "Machine", id="go-machine"),
        Binding("7", "go('jobs')", "Jobs", id="go-jobs"),
        Binding("8", "go('gitlab')", "GitLab", id="go-gitlab"),
        Binding("9", "go('settings')", "Settings", id="go-settings"),
        Binding("0", "fleet", "Fleet", id="go-fleet"),  # only in a fleet (check_action)
        Binding("q", "quit_console", "Quit", id="quit"),
        Binding("ctrl+p", "command_palette", "Commands", show=False, priority=True, id="palette"),
        Binding("colon", "command_palette", "Commands", show=False, id="commands"),
    ]

    farm_name: reactive[str] = reactive("")
    gateway_name: reactive[str] = reactive("")  # in a fleet: the gateway shown ("" without a fleet)
    backend_problem: reactive[str] = reactive("")
    last_status: reactive[tuple[str, str] | None] = reactive(None)

    def __init__(
        self,
        client: FarmClient,
        *,
        title: str | None = None,
        linux_console: bool | None = None,
        flush_hz: float = FLUSH_HZ,
        fleet: Fleet | None = None,
    ) -> None:
        self.linux_console = is_linux_console() if linux_console is None else linux_console
        css = [str(APP_TCSS), str(VCONSOLE_TCSS)] if self.linux_console else [str(APP_TCSS)]
        self.fleet = fleet
        if fleet is not None:
            self.DEFAULT_MODE = "fleet"  # read by App.__init__: a fleet opens on the Fleet screen
        super().__init__(css_path=css)
        self.client = client
        if title:
            self.title = title
        if self.linux_console:
            self.theme = "ansi-dark"
        self.flush_hz = flush_hz
        self.model = FarmModel()
        self.connected = False
        self.form_target: str | None = None
        self.console_target: str | None = None
        self.writer_id = make_writer_id()
        self.held_writers: set[str] = set()  # consoles this TUI typed into and has not released yet
        self.recent_log_entries: deque[tuple[str, LogEntry | JournalEntry]] = deque(maxlen=RECENT_LOG)
        self._log_keys: OrderedDict[tuple[Any, ...], None] = OrderedDict()
        self.feed = EventFeed(client, flush=self.flush, connected=self._set_connected, lost=self._set_lost,
                              report=self.report, discovery=self.set_discovery)
        self._views: list[FarmScreen] = []
        self._form_return = "duts"
        self._saved_bars: tuple[Any, Any] | None = None
        self._saved_gc: tuple[int, int, int] | None = None
        self.attention: list[Attention] = []  # what needs the operator now (the Overview lists it)
        self._attention_keys: set[str] | None = None  # None: not computed since the (re)connection
        self.gateway: Gateway | None = None  # in a fleet: the gateway every farm screen shows
        self.fleet_view: FleetScreen | None = None
        self._switching = False
        if fleet is not None:
            self.add_mode("fleet", FleetScreen)
            fleet.listener = self
            self._use_gateway(next(iter(fleet)))

    # ---------------------------------------------------------------- lifecycle
    def on_mount(self) -> None:
        if self.linux_console:
            # CP437 fonts lack the eighth blocks the scrollbar ends use: draw plain cells instead.
            self._saved_bars = (ScrollBarRender.VERTICAL_BARS, ScrollBarRender.HORIZONTAL_BARS)
            ScrollBarRender.VERTICAL_BARS = [" "] * 8
            ScrollBarRender.HORIZONTAL_BARS = [" "] * 8
        self.set_interval(1 / self.flush_hz, self.flush)
        self.set_interval(5, self._recheck_attention)  # silences grow without any event
        if self.fleet is None:
            self.run_worker(self.feed.run(), name="events", group="events", exit_on_error=False)
        else:  # one stream per gateway, all the time: the Fleet screen's rows stay live
            for gw in self.fleet:
                self.run_worker(gw.feed.run(), name=f"events from {gw.name}", group="events", exit_on_error=False)
            self.set_interval(CONSOLES_EVERY, self._refresh_fleet_consoles)

    def _refresh_fleet_consoles(self) -> None:
        if self.fleet is not None:
            self.run_worker(self.fleet.refresh_consoles(self.gateway), group="fleet-consoles", exclusive=True,
                            exit_on_error=False)

    def on_unmount(self) -> None:
        self.feed.close()
        for gw in self.fleet or ():
            gw.feed.close()
        if self._saved_bars is not None:
            ScrollBarRender.VERTICAL_BARS, ScrollBarRender.HORIZONTAL_BARS = self._saved_bars
            self._saved_bars = None
        if self._saved_gc is not None:
            gc.unfreeze()
            gc.set_threshold(*self._saved_gc)
            self._saved_gc = None

    def _freeze_gc(self) -> None:
        """Once the first farm snapshot is shown: move every object alive now (Textual, the DOM,
        the model) out of the collector's reach, so full collections only scan what came after."""
        if self._saved_gc is not None or not self.is_running:
            return
        self._saved_gc = gc.get_threshold()
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLD)

    def register_view(self, view: FarmScreen) -> None:
        if view not in self._views:
            self._views.append(view)

    def unregister_view(self, view: FarmScreen) -> None:
        if view in self._views:
            self._views.remove(view)

    # ---------------------------------------------------------------- connection
    async def release_writers(self, timeout: float = 2.0) -> None:
        """Give back write access to every console this TUI still holds (on the way out)."""
        macs, self.held_writers = list(self.held_writers), set()
        if not macs:
            return
        calls = [self.client.release_console_writer(mac, self.writer_id) for mac in macs]
        try:
            await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), timeout)
        except asyncio.TimeoutError:
            log.warning("giving back write access to %d consoles timed out", len(macs))

    def set_discovery(self, status: DiscoveryStatus) -> None:
        self.model.set_discovery(status)
        for view in list(self._views):
            show = getattr(view, "show_discovery", None)
            if show is not None:
                show(self.model)

    def _short_reason(self, reason: str) -> str:
        where = self.client.describe
        for prefix in (f"backend unreachable at {where}: ", f"event stream from {where} lost: "):
            if reason.startswith(prefix):
                return reason[len(prefix):]
        return reason or "no answer"

    def _set_lost(self, reason: str) -> None:
        self.connected = False
        # the Linux console's fonts (CP437) have no em dash or ellipsis
        dash, dots = (" - ", "...") if self.linux_console else (" — ", "…")
        message = f"backend lost at {self.client.describe}: {self._short_reason(reason)}{dash}reconnecting{dots}"
        if message != self.backend_problem:
            log.warning("%s", message)
        self.backend_problem = message

    def _set_connected(self) -> None:
        if self.backend_problem:
            log.info("backend at %s is back", self.client.describe)
        self.connected = True
        self.backend_problem = ""

    # ---------------------------------------------------------------- batching
    def flush(self) -> None:
        """Apply the buffered changes to the model and to every screen, in one batch (in a fleet, the
        other gateways' changes to their models only)."""
        if self.fleet is not None:
            for gw in self.fleet:
                if gw is not self.gateway:
                    self.fleet.apply(gw)
        changes = self.feed.take()
        if changes is None:
            return
        if changes.snapshot is not None:
            changes.logs = changes.snapshot.backend_log + changes.logs
            if changes.snapshot.health.farm_name:
                self.farm_name = changes.snapshot.health.farm_name
        if self.gateway is not None:
            self.gateway.dirty = True
        changes.logs = [e for e in changes.logs if self._new_log_entry(e)]
        self.model.apply(changes)
        with self.batch_update():
            for view in list(self._views):
                try:
                    if changes.snapshot is not None:
                        view.farm_reset(self.model)
                    view.farm_changes(changes, self.model)
                except Exception as exc:  # noqa: BLE001 - one broken screen must not stop the others
                    log.exception("updating %s failed", type(view).__name__)
                    self.notify(f"internal error updating {type(view).__name__}: {exc}", severity="error")
            if changes.snapshot is not None or changes.machines or changes.pdus or changes.outlets or changes.jobs \
                    or changes.health or changes.console_info:
                self.update_attention()
        if changes.snapshot is not None and self._saved_gc is None:
            self.call_after_refresh(self._freeze_gc)
        self.recent_log_entries.extend(("log", e) for e in changes.logs)
        self.recent_log_entries.extend(("journal", e) for e in changes.journal)
        for event in changes.discovery:
            self._report_discovery(event)
        if changes.discovery:
            self.feed.schedule_discovery_refresh()

    # ---------------------------------------------------------------- attention
    def _recheck_attention(self) -> None:
        if self.model.loaded:
            self.update_attention()

    def update_attention(self) -> None:
        """Work out what needs the operator; tell every screen when that changed, and raise a notification
        for each new item of a kind that needs the operator now (``NOTIFIED``), wherever the operator is.
        What is there when the console starts is listed, not notified (after a refetch, new items are)."""
        items = attention(self.model, self.model.clock())
        keys = {item.key for item in items}
        if items == self.attention and self._attention_keys is not None:
            return
        before, self._attention_keys = self._attention_keys, keys
        self.attention = items
        if before is not None:
            for item in items:
                if item.key not in before and item.kind in NOTIFIED:
                    self.notify(item.message, title=f"{item.label}: needs you (Overview, key 1)",
                                severity="error" if item.severity == "error" else "warning", timeout=10)
        for view in list(self._views):
            changed = getattr(view, "attention_changed", None)
            if changed is not None:
                changed(items)

    def go_to(self, target: Target) -> None:
        """Take the operator to an attention item: its screen, with its machine, outlet, job or runner selected."""
        if target.mode == "consoles" and target.mac:
            self.open_console(target.mac)
            return
        self.switch_mode(target.mode)
        self._select_target(target, tries=20)

    def _select_target(self, target: Target, tries: int) -> None:
        for view in self._views:
            if view.MODE != target.mode:
                continue
            if isinstance(view, DutsScreen) and target.mac:
                if view.select_mac(target.mac):
                    view.table.focus()
                    return
            elif isinstance(view, PdusScreen) and target.pdu:
                if target.port is None or view.select_outlet(target.pdu, target.port):
                    return
            elif isinstance(view, JobsScreen) and target.job:
                if view.select_job(target.job):
                    return
            elif isinstance(view, GitlabScreen) and target.instance and target.mac:
                if view.select_runner(target.instance, target.mac):
                    return
            else:
                return
        if tries > 0:  # the screen is being mounted or its rows not filled yet
            self.set_timer(0.05, lambda: self._select_target(target, tries - 1))

    def _report_discovery(self, event: DiscoveryEvent) -> None:
        state = event.state
        outlet = f"{event.pdu}/{event.port_id}"
        if state == "found":
            mac = event.mac or "?"
            name = self.model.machine_name(mac)
            self.report(f"{mac} is behind {outlet}" + (f" ({name})" if name != mac else ""))
        elif state == "timeout":
            self.report(f"nothing registered behind {outlet} in time: switched off again", "warning")
        elif state == "cancelled":
            self.report(f"discovery of {outlet} cancelled: switched off", "warning")
        elif state == "started":
            self.last_status = (f"discovering {outlet}: waiting for a machine to register...", "information")

    def _new_log_entry(self, entry: LogEntry) -> bool:
        return new_log_entry(self._log_keys, entry, RECENT_LOG * 2)

    # ---------------------------------------------------------------- fleet
    def _use_gateway(self, gw: Gateway) -> None:
        """Make ``gw`` the gateway every farm screen shows: its client, feed, model and logs."""
        self.gateway = gw
        if self.fleet is not None:
            self.fleet.show(gw)  # its stream carries everything now; the others' only what rows need
        self.client, self.feed, self.model = gw.client, gw.feed, gw.model
        self.recent_log_entries, self._log_keys = gw.recent_log, gw.log_keys
        self.form_target = self.console_target = None
        self._form_return = "duts"
        self.attention, self._attention_keys = [], None
        self.gateway_name = gw.name
        self.farm_name = gw.farm_name
        self.connected = gw.state == "up"
        self.backend_problem = ""
        if gw.state == "lost":
            self._set_lost(gw.feed.last_error and str(gw.feed.last_error) or gw.reason)
        self.last_status = None

    async def show_gateway(self, name: str, mode: str = "overview") -> None:
        """Switch the whole console to the fleet's gateway ``name``: every farm screen is made anew on
        its data (none keeps the previous gateway's machines, consoles, jobs or forms); then ``mode``."""
        if self.fleet is None or self._switching:
            return  # a second enter while the first switch runs: the first one finishes
        gw = self.fleet[name]
        self._switching = True
        self.refresh_bindings()
        try:
            if gw is not self.gateway:
                if self.current_mode != "fleet":
                    await self.switch_mode("fleet")
                await self.release_writers()  # write access held on the previous gateway's consoles
                for farm_mode, screen in type(self).MODES.items():
                    await self.remove_mode(farm_mode)
                    self.add_mode(farm_mode, screen)
                self.fleet.apply(gw)  # what it buffered since the last flush
                self._use_gateway(gw)
                if self.model.loaded:
                    self.update_attention()
            if self.current_mode == "fleet":
                await self.switch_mode(mode)
        finally:
            self._switching = False
            self.refresh_bindings()

    @property
    def switching(self) -> bool:
        """A gateway switch (show_gateway) is on its way: the screen keys wait for it."""
        return self._switching

    def action_fleet(self) -> None:
        if self.fleet is not None:
            self.switch_mode("fleet")

    def gateway_flush(self, gateway: Gateway) -> None:
        if gateway is self.gateway:
            self.flush()
        elif self.fleet is not None:
            self.fleet.apply(gateway)

    def gateway_connected(self, gateway: Gateway) -> None:
        if gateway is self.gateway:
            self._set_connected()

    def gateway_lost(self, gateway: Gateway, reason: str) -> None:
        if gateway is self.gateway:
            self._set_lost(reason)

    def gateway_report(self, gateway: Gateway, message: str, severity: str) -> None:
        if gateway is self.gateway:
            self.report(message, severity)
        else:
            log.warning("%s: %s", gateway.name, message)

    def gateway_discovery(self, gateway: Gateway, status: DiscoveryStatus) -> None:
        if gateway is self.gateway:
            self.set_discovery(status)
        else:
            gateway.model.set_discovery(status)

    def too_old(self, screen: str, exc: FarmClientError) -> str | None:
        """``"rack1 (version 1.2) is too old for the Settings screen"`` when ``exc`` says the gateway has
        no such endpoint (404); None for any other error."""
        if exc.status != 404:
            return None
        version = self.model.health.version if self.model.health else "unknown"
        who = self.gateway_name or self.farm_name or "the backend"
        return f"{who} (version {version}) is too old for the {screen} screen"

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """A worker that failed in an unexpected way is reported, never silent."""
        if event.state == WorkerState.ERROR:
            worker = event.worker
            what = worker.description or worker.name or "a background task"
            log.error("%s failed: %r", what, worker.error)
            self.report(f"{what} failed: {worker.error}", "error")

    # ---------------------------------------------------------------- reporting
    def report(self, message: str, severity: str = "information") -> None:
        """Show the outcome of an action where the operator looks: a toast and the status lines."""
        self.last_status = (message, severity)
        self.notify(message, severity=severity, timeout=8 if severity == "error" else 4)  # type: ignore[arg-type]

    # ---------------------------------------------------------------- navigation
    def action_go(self, mode: str) -> None:
        self.go(mode)

    def go(self, mode: str) -> None:
        if mode == "machine" and self.current_mode != "machine":
            self._form_return = self.current_mode
            if self.form_target is None:
                self.form_target = self._selected_machine()
        self.switch_mode(mode)

    def _selected_machine(self) -> str | None:
        for view in self._views:
            if isinstance(view, DutsScreen):
                return view.cursor_mac()
        return None

    def action_quit_console(self) -> None:
        self.exit(0)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "fleet":
            return self.fleet is not None and self.current_mode != "machine" and not self._switching
        if action == "go" and self._switching:
            return False  # the farm screens' modes are being made anew (show_gateway)
        if action == "quit_console" and self.current_mode == "machine":
            return False  # 'q' belongs to the form's fields there; ctrl+q still quits
        return True

    def open_console(self, mac: str) -> None:
        self.console_target = mac
        self.switch_mode("consoles")
        self.call_after_refresh(self._show_console_target)

    def _show_console_target(self) -> None:
        mac, self.console_target = self.console_target, None
        if mac is None:
            return
        for view in self._views:
            if isinstance(view, ConsolesScreen):
                view.show_console(mac)
                return
        self.console_target = mac  # the screen is not mounted yet: it asks on mount

    def edit_machine(self, mac: str) -> None:
        self.form_target = mac
        if self.current_mode != "machine":
            self._form_return = self.current_mode
        self.switch_mode("machine")
        for view in self._views:
            if isinstance(view, MachineFormScreen):
                self.call_after_refresh(view.load, mac)

    def leave_form(self) -> None:
        back = self._form_return if self._form_return != "machine" else "duts"
        self.form_target = None
        for view in self._views:
            if isinstance(view, MachineFormScreen):
                view.forget()
        self.switch_mode(back)

    # ---------------------------------------------------------------- actions (all confirmed first)
    def run_confirmed(
        self,
        question: str,
        call: Callable[[], Awaitable[Any]],
        *,
        failed: str,
        success: str | Callable[[Any], str | None] | None = None,
        busy: str | None = None,
        label: str = "Yes",
        danger: bool = False,
        group: str = "action",
        owner: DOMNode | None = None,
    ) -> None:
        """Ask ``question``; on yes, run ``call()`` in a worker (of ``owner``, the app by default) and
        report its outcome: ``"<failed>: <the API's error>"`` as an error, or ``success`` (a message, or
        one made from the answer; None says nothing). ``busy`` is the status line while the call runs."""

        def answered(ok: bool | None) -> None:
            if ok:
                (owner or self).run_worker(self._run_action(call, failed, success, busy), group=group,
                                           exit_on_error=False)

        self.push_screen(ConfirmScreen(question, confirm_label=label, danger=danger), answered)

    async def _run_action(
        self,
        call: Callable[[], Awaitable[Any]],
        failed: str,
        success: str | Callable[[Any], str | None] | None,
        busy: str | None,
    ) -> None:
        if busy is not None:
            self.last_status = (busy, "information")
        try:
            answer = await call()
        except FarmClientError as exc:
            self.report(f"{failed}: {exc}", "error")
            return
        message = success(answer) if callable(success) else success
        if message:
            self.report(message)

    def _machine_suffix(self, pdu: str, port: str) -> str:
        machine = self.model.machine_on(pdu, port)
        return f" ({machine.full_name or machine.mac_address})" if machine else ""

    def _confirm_switch(self, question: str, pdu: str, port: str, state: str, *, label: str, danger: bool) -> None:
        """Switch an outlet after ``question``; the read-back state is reported."""
        self.run_confirmed(
            question, lambda: self.client.set_outlet(pdu, port, state), label=label, danger=danger,
            group=f"outlet-{pdu}-{port}", busy=f"{pdu}/{port}: switching {state}...",
            failed=f"{pdu}/{port} {state} failed",
            success=lambda result: f"{pdu}/{port}{self._machine_suffix(pdu, port)} is {result} (read back)",
        )

    def power_outlet(self, pdu: str, port: str, state: str) -> None:
        """Switch an outlet (on/off/reboot) after a confirmation; the read-back state is reported."""
        question = f"Switch outlet {pdu}/{port}{self._machine_suffix(pdu, port)} {state.upper()}?"
        self._confirm_switch(question, pdu, port, state, label=f"Power {state}", danger=state != "on")

    # ---------------------------------------------------------------- outlet discovery
    @property
    def dash(self) -> str:
        """An em dash, or its ASCII stand-in on the Linux console (CP437 has none)."""
        return " - " if self.linux_console else " — "

    def discover_outlet(self, pdu: str, port: str) -> None:
        """Power a free outlet on; the next machine that registers without an outlet gets it (asks first)."""

        def started(answer: DiscoveryStarted) -> str:
            self.set_discovery(DiscoveryStatus(current=answer.discovery, queue=self.model.discovery.queue))
            return answer.message or f"discovering {pdu}/{port}"

        self.run_confirmed(
            f"Power {pdu}/{port} on and give it to the next machine that registers?",
            lambda: self.client.discover(pdu, port), label="Discover", group="discovery",
            busy=f"{pdu}/{port}: starting discovery...", failed=f"discovering {pdu}/{port} failed", success=started,
        )

    def find_outlets(self, pdu: str) -> None:
        """Discover every free outlet of ``pdu`` that is off, one after another (asks first)."""
        free = [p for p in self.model.free_ports(pdu)
                if (outlet := self.model.outlet(pdu, p)) is not None and outlet.state.upper() == "OFF"]
        question = (f"Find outlets on {pdu}: power its {len(free)} free outlets that are off on, one at a time, "
                    "and give each to the next machine that registers?")

        def started(answer: OutletsDiscovery) -> str:
            self.set_discovery(DiscoveryStatus(current=answer.current, queue=answer.queue))
            self.feed.schedule_discovery_refresh()
            return answer.message or f"finding outlets on {pdu}"

        self.run_confirmed(
            question, lambda: self.client.find_outlets(pdu), label="Find outlets", group="discovery",
            busy=f"{pdu}: starting to find outlets...", failed=f"finding outlets on {pdu} failed", success=started,
        )

    def cancel_discovery(self) -> None:
        current = self.model.discovery.current
        queued = len(self.model.discovery.queue)
        if not current and not queued:
            self.report("no discovery is running", "warning")
            return
        what = f"the discovery of {current.pdu}/{current.port_id}" if current else "the discovery"
        more = f" and the {queued} queued outlets" if queued else ""

        def cancelled(status: DiscoveryStatus) -> None:
            self.set_discovery(status)

        self.run_confirmed(
            f"Cancel {what}{more}? The outlet is switched off.", self.client.cancel_discovery,
            label="Cancel discovery", danger=True, group="discovery", failed="cancelling the discovery failed",
            success=cancelled,
        )

    def power_cycle(self, mac: str) -> None:
        pdu, port = outlet_of(self.model.machines.get(mac))
        name = self.model.machine_name(mac)
        if pdu is None or port is None:
            self.report(f"{name} has no PDU outlet: set its PDU and port in the machine form (e)", "error")
            return
        self._confirm_switch(f"Power cycle {name} (outlet {pdu}/{port})?", pdu, port, "reboot",
                             label="Power cycle", danger=True)

    def toggle_retired(self, mac: str) -> None:
        machine = self.model.machines.get(mac)
        name = self.model.machine_name(mac)
        retire = not (machine and machine.is_retired)
        verb = "Retire" if retire else "Activate"
        self.run_confirmed(
            f"{verb} {name} ({mac})?", lambda: self.client.retire(mac) if retire else self.client.activate(mac),
            label=verb, danger=retire, group=f"retire-{mac}",
            failed=f"{'retiring' if retire else 'activating'} {name} failed",
            success=lambda answer: str(answer).strip() or f"{name} {'retired' if retire else 'activated'}",
        )

    def remove_machine(self, mac: str) -> None:
        name = self.model.machine_name(mac)
        self.run_confirmed(
            f"Remove {name} ({mac}) from the farm? It registers again if it boots.",
            lambda: self.client.remove_machine(mac), label="Remove", danger=True, group=f"remove-{mac}",
            failed=f"removing {name} failed", success=f"{name} removed",
        )

    def add_pdu(self) -> None:
        def added(result: Pdu | None) -> None:
            if result:
                self.report(f"PDU {result.name} added ({result.driver}, {result.state})")

        self.push_screen(AddPduScreen(), added)

    def remove_pdu(self, name: str) -> None:
        self.run_confirmed(
            f"Remove PDU {name}? Its outlets are left as they are.", lambda: self.client.remove_pdu(name),
            label="Remove", danger=True, group=f"remove-pdu-{name}",
            failed=f"removing PDU {name} failed", success=f"PDU {name} removed",
        )

    def edit_settings(self, focus: str | None = None) -> None:
        """The form of the settings that may change at run time (fetched first when not known yet)."""
        if self.current_mode != "settings":
            self.switch_mode("settings")
        self.run_worker(self._open_settings_form(focus), group="settings-form", exclusive=True, exit_on_error=False)

    async def _open_settings_form(self, focus: str | None) -> None:
        settings = self.model.settings
        if settings is None:
            try:
                settings = self.model.settings = await self.client.settings()
            except FarmClientError as exc:
                self.report(self.too_old("Settings", exc) or f"cannot read the settings: {exc}", "error")
                return

        def saved(answer: FarmSettings | None) -> None:
            if answer is None:
                return
            before = {s.name: s.value for s in settings.settings}
            changed = [s for s in answer.settings if s.editable and before.get(s.name) != s.value]
            self.model.settings = answer
            for view in self._views:
                if isinstance(view, SettingsScreen):
                    view.show(answer)
            words = ", ".join(f"{s.name}={s.value}" for s in changed) or "nothing"
            self.report(f"settings changed: {words} (kept in {answer.file})")

        self.push_screen(SettingsFormScreen(settings, focus), saved)

    def cancel_job(self, job_id: str) -> None:
        """Cancel a job after a confirmation; the API's answer (or error) is reported."""
        job = self.model.jobs.get(job_id)
        status = job.status if job else None
        mac = job.machine if job else None
        where = f" on {self.model.machine_name(mac)}" if mac else ""
        what = {"QUEUED": "queued ", "RUNNING": "running "}.get(str(status), "")
        stop = " The DUT is powered off." if status == "RUNNING" else ""

        def cancelled(answer: Job) -> str:
            if answer.id == job_id:
                self.feed.pending.jobs[job_id] = answer  # the answer is the job's latest state
                return f"job {job_id}: {answer.status} ({answer.state})"
            return f"job {job_id}: {answer}"

        self.run_confirmed(
            f"Cancel the {what}job {job_id}{where}?{stop}", lambda: self.client.cancel_job(job_id),
            label="Cancel job", danger=True, group=f"cancel-job-{job_id}", busy=f"cancelling job {job_id}...",
            failed=f"cancelling job {job_id} failed", success=cancelled,
        )


def make_app(client: FarmClient, *, title: str | None = None, linux_console: bool | None = None) -> ConsoleApp:
    """Build the console app on ``client`` (tests build it here too)."""
    return ConsoleApp(client, title=title, linux_console=linux_console)


def make_fleet_app(fleet: Fleet, *, linux_console: bool | None = None) -> ConsoleApp:
    """The console on a fleet: it opens on the Fleet screen, showing the first gateway's screens."""
    first = next(iter(fleet))
    return ConsoleApp(first.client, title=f"valve-console fleet {fleet.name}", linux_console=linux_console,
                      fleet=fleet)


async def _run(app: ConsoleApp) -> int:
    """Run the app; SIGTERM (systemd) and SIGHUP (the terminal went away) end it cleanly, so the
    caller's cleanup (stopping the farm, the demo's vPDU and its DUTs) always runs."""
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGTERM, signal.SIGHUP):
        try:
            loop.add_signal_handler(sig, app.exit)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):
            pass
    try:
        result = await app.run_async(mouse=not app.linux_console)
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        await app.release_writers()
        await app.client.close()
        if app.fleet is not None:
            await app.fleet.close()
    return int(result or 0) if isinstance(result, int) else 0


async def run_tui(api_url: str | None, socket_path: Path | None, token: str | None, farm: Any = None) -> None:
    """All-in-one: the TUI in the backend's loop, talking to the API over the unix socket."""
    if socket_path is not None:
        client = FarmClient(socket_path=socket_path, token=token)
    else:
        client = FarmClient(api_url, token=token)
    await _run(make_app(client))


async def attach_main(url: str, token: str | None) -> int:
    """The TUI alone, as a client of a running backend over HTTP."""
    return await _run(make_app(FarmClient(url, token=token)))


async def fleet_main(spec: FleetSpec) -> int:
    """The TUI alone on a fleet of gateways (a fleet file, or ``--attach`` given several times)."""
    return await _run(make_fleet_app(Fleet(spec)))
