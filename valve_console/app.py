"""ConsoleApp: the operator console (Textual), built on the FarmClient only.

The same app serves the all-in-one program (over the unix socket), ``--attach URL``, ssh and the
browser. Live data: one worker reads the event stream into per-kind buffers (``Changes``, latest
state wins per machine/outlet/PDU/service); a 15 Hz timer applies the buffer to the ``FarmModel``
and hands it to every mounted screen under ``App.batch_update()``. When the stream or a fetch
fails, a banner says so and the worker reconnects with back-off (0.5 s → 5 s), then refetches
everything.
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
from typing import Any, Callable

from textual.app import App
from textual.binding import Binding
from textual.reactive import reactive
from textual.scrollbar import ScrollBarRender
from textual.worker import Worker, WorkerState

from .client import FarmClient, FarmClientError
from .screens.base import FarmScreen
from .screens.commands import FarmCommands
from .screens.consoles import ConsolesScreen
from .screens.dialogs import AddPduScreen, ConfirmScreen
from .screens.duts import DutsScreen
from .screens.jobs import JobsScreen
from .screens.journal import JournalScreen
from .screens.machine_form import MachineFormScreen
from .screens.model import Changes, FarmModel, Snapshot, outlet_of
from .screens.overview import OverviewScreen
from .screens.pdus import PdusScreen

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
APP_TCSS = HERE / "app.tcss"
VCONSOLE_TCSS = HERE / "vconsole.tcss"
FLUSH_HZ = 15
BACKOFF_START = 0.5
BACKOFF_MAX = 5.0
STREAM_SETTLE = 0.1  # seconds given to the event stream to subscribe before the refetch
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
        Binding("q", "quit_console", "Quit", id="quit"),
        Binding("ctrl+p", "command_palette", "Commands", show=False, priority=True, id="palette"),
        Binding("colon", "command_palette", "Commands", show=False, id="commands"),
    ]

    farm_name: reactive[str] = reactive("")
    backend_problem: reactive[str] = reactive("")
    last_status: reactive[tuple[str, str] | None] = reactive(None)

    def __init__(
        self,
        client: FarmClient,
        *,
        title: str | None = None,
        linux_console: bool | None = None,
        flush_hz: float = FLUSH_HZ,
    ) -> None:
        self.linux_console = is_linux_console() if linux_console is None else linux_console
        css = [str(APP_TCSS), str(VCONSOLE_TCSS)] if self.linux_console else [str(APP_TCSS)]
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
        self.recent_log_entries: deque[tuple[str, dict[str, Any]]] = deque(maxlen=RECENT_LOG)
        self._log_keys: OrderedDict[tuple[Any, ...], None] = OrderedDict()
        self._pending = Changes()
        self._views: list[FarmScreen] = []
        self._form_return = "duts"
        self._refetch_task: asyncio.Task[None] | None = None
        self._discovery_task: asyncio.Task[None] | None = None
        self._discovery_dirty = False
        self._saved_bars: tuple[Any, Any] | None = None
        self._saved_gc: tuple[int, int, int] | None = None

    # ---------------------------------------------------------------- lifecycle
    def on_mount(self) -> None:
        if self.linux_console:
            # CP437 fonts lack the eighth blocks the scrollbar ends use: draw plain cells instead.
            self._saved_bars = (ScrollBarRender.VERTICAL_BARS, ScrollBarRender.HORIZONTAL_BARS)
            ScrollBarRender.VERTICAL_BARS = [" "] * 8
            ScrollBarRender.HORIZONTAL_BARS = [" "] * 8
        self.set_interval(1 / self.flush_hz, self.flush)
        self.run_worker(self._connection_loop(), name="events", group="events", exit_on_error=False)

    def on_unmount(self) -> None:
        for task in (self._refetch_task, self._discovery_task):
            if task is not None and not task.done():
                task.cancel()
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
    async def _connection_loop(self) -> None:
        delay = BACKOFF_START
        while True:
            stream = asyncio.create_task(self._read_events(), name="valve-console-events")
            reason = ""
            try:
                await asyncio.sleep(STREAM_SETTLE)
                if stream.done():
                    stream.result()  # raises the stream's error
                    raise FarmClientError("the event stream ended")
                await self.refetch()
            except FarmClientError as exc:
                reason = str(exc)
            else:
                self._set_connected()
                delay = BACKOFF_START
                try:
                    await stream
                    reason = "the event stream ended"
                except FarmClientError as exc:
                    reason = str(exc)
            finally:
                if not stream.done():
                    stream.cancel()
                await asyncio.gather(stream, return_exceptions=True)  # its error is retrieved, never leaked
            self._set_lost(reason)
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)

    async def _read_events(self) -> None:
        async for event in self.client.events():
            if self._pending.add_event(event):
                self._schedule_refetch()

    def _schedule_refetch(self) -> None:
        if self._refetch_task is None or self._refetch_task.done():
            self._refetch_task = asyncio.create_task(self._refetch_quietly())

    async def _refetch_quietly(self) -> None:
        try:
            await self.refetch()
        except FarmClientError as exc:
            self.report(f"refetch after dropped events failed: {exc}", "error")

    async def refetch(self) -> None:
        """Fetch everything; the next flush replaces the model with it."""
        self.flush()  # events buffered so far are older than what comes back now
        c = self.client
        health, gateway, machines, pdus, consoles, backend_log, discovery, jobs = await asyncio.gather(
            c.health(), c.gateway(), c.machines(), c.pdus(), c.request("GET", "/api/v1/consoles"),
            c.backend_log(500), self._fetch_discovery(), self._fetch_jobs()
        )
        self._pending.snapshot = Snapshot(
            health=health,
            gateway=gateway.get("interfaces", []) if isinstance(gateway, dict) else list(gateway or []),
            machines=machines,
            pdus=pdus,
            consoles=consoles.get("consoles", {}),
            backend_log=backend_log,
            devices=consoles.get("devices") or {},
            discovery=discovery,
            jobs=jobs,
        )

    async def _fetch_discovery(self) -> dict[str, Any] | None:
        """The discovery status; None from a backend without discovery (404)."""
        try:
            return await self.client.discovery()
        except FarmClientError as exc:
            if exc.status is not None and 400 <= exc.status < 500 and exc.status != 401:
                return None  # an older backend: no discovery there
            raise

    async def _fetch_jobs(self) -> list[dict[str, Any]] | None:
        """The jobs, newest first; None from a backend without jobs (404)."""
        try:
            return await self.client.jobs()
        except FarmClientError as exc:
            if exc.status is not None and 400 <= exc.status < 500 and exc.status != 401:
                return None  # an older backend: no jobs there
            raise

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

    def _schedule_discovery_refresh(self) -> None:
        self._discovery_dirty = True
        if self._discovery_task is None or self._discovery_task.done():
            self._discovery_task = asyncio.create_task(self._refresh_discovery())

    async def _refresh_discovery(self) -> None:
        """A cheap refetch of the discovery status (the queue is not in the events); again when
        more discovery events came in while it was on its way, so the last word is the backend's."""
        while self._discovery_dirty:
            self._discovery_dirty = False
            try:
                status = await self._fetch_discovery()
            except FarmClientError:
                return  # the connection loop reports a lost backend
            if status is not None and not self._pending.discovery:
                self.set_discovery(status)

    def set_discovery(self, status: dict[str, Any]) -> None:
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
        """Apply the buffered changes to the model and to every screen, in one batch."""
        if not self._pending:
            return
        changes, self._pending = self._pending, Changes()
        if changes.snapshot is not None:
            changes.logs = changes.snapshot.backend_log + changes.logs
            if changes.snapshot.health.get("farm_name"):
                self.farm_name = str(changes.snapshot.health["farm_name"])
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
        if changes.snapshot is not None and self._saved_gc is None:
            self.call_after_refresh(self._freeze_gc)
        self.recent_log_entries.extend(("log", e) for e in changes.logs)
        self.recent_log_entries.extend(("journal", e) for e in changes.journal)
        for event in changes.discovery:
            self._report_discovery(event)
        if changes.discovery:
            self._schedule_discovery_refresh()

    def _report_discovery(self, event: dict[str, Any]) -> None:
        state = event.get("state")
        outlet = f"{event.get('pdu')}/{event.get('port_id')}"
        if state == "found":
            mac = str(event.get("mac") or "?")
            name = self.model.machine_name(mac)
            self.report(f"{mac} is behind {outlet}" + (f" ({name})" if name != mac else ""))
        elif state == "timeout":
            self.report(f"nothing registered behind {outlet} in time: switched off again", "warning")
        elif state == "cancelled":
            self.report(f"discovery of {outlet} cancelled: switched off", "warning")
        elif state == "started":
            self.last_status = (f"discovering {outlet}: waiting for a machine to register...", "information")

    def _new_log_entry(self, entry: dict[str, Any]) -> bool:
        key = (entry.get("ts"), entry.get("logger"), entry.get("message"))
        if key in self._log_keys:
            return False
        self._log_keys[key] = None
        while len(self._log_keys) > RECENT_LOG * 2:
            self._log_keys.popitem(last=False)
        return True

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
    def _confirm(self, question: str, then: Callable[[], None], *, label: str = "Yes", danger: bool = False) -> None:
        def answered(ok: bool | None) -> None:
            if ok:
                then()

        self.push_screen(ConfirmScreen(question, confirm_label=label, danger=danger), answered)

    def _machine_suffix(self, pdu: str, port: str) -> str:
        machine = self.model.machine_on(pdu, port)
        return f" ({machine.get('full_name') or machine.get('mac_address')})" if machine else ""

    def power_outlet(self, pdu: str, port: str, state: str) -> None:
        """Switch an outlet (on/off/reboot) after a confirmation; the read-back state is reported."""
        question = f"Switch outlet {pdu}/{port}{self._machine_suffix(pdu, port)} {state.upper()}?"
        self._confirm(question, lambda: self._start_power(pdu, port, state), label=f"Power {state}",
                      danger=state != "on")

    def _start_power(self, pdu: str, port: str, state: str) -> None:
        self.run_worker(self._power(pdu, port, state), group=f"outlet-{pdu}-{port}", exit_on_error=False)

    async def _power(self, pdu: str, port: str, state: str) -> None:
        self.last_status = (f"{pdu}/{port}: switching {state}...", "information")
        try:
            result = await self.client.set_outlet(pdu, port, state)
        except FarmClientError as exc:
            self.report(f"{pdu}/{port} {state} failed: {exc}", "error")
            return
        self.report(f"{pdu}/{port}{self._machine_suffix(pdu, port)} is {result} (read back)")

    # ---------------------------------------------------------------- outlet discovery
    @property
    def dash(self) -> str:
        """An em dash, or its ASCII stand-in on the Linux console (CP437 has none)."""
        return " - " if self.linux_console else " — "

    def discover_outlet(self, pdu: str, port: str) -> None:
        """Power a free outlet on; the next machine that registers without an outlet gets it (asks first)."""
        question = f"Power {pdu}/{port} on and give it to the next machine that registers?"
        self._confirm(question, lambda: self.run_worker(self._discover(pdu, port), group="discovery",
                                                        exit_on_error=False), label="Discover")

    async def _discover(self, pdu: str, port: str) -> None:
        self.last_status = (f"{pdu}/{port}: starting discovery...", "information")
        try:
            answer = await self.client.discover(pdu, port)
        except FarmClientError as exc:
            self.report(f"discovering {pdu}/{port} failed: {exc}", "error")
            return
        if isinstance(answer, dict) and answer.get("discovery"):
            self.set_discovery({"current": answer["discovery"], "queue": self.model.discovery.get("queue", [])})
        self.report(str((answer or {}).get("message") or f"discovering {pdu}/{port}"))

    def find_outlets(self, pdu: str) -> None:
        """Discover every free outlet of ``pdu`` that is off, one after another (asks first)."""
        free = [p for p in self.model.free_ports(pdu)
                if str((self.model.outlet(pdu, p) or {}).get("state", "")).upper() == "OFF"]
        question = (f"Find outlets on {pdu}: power its {len(free)} free outlets that are off on, one at a time, "
                    "and give each to the next machine that registers?")
        self._confirm(question, lambda: self.run_worker(self._find_outlets(pdu), group="discovery",
                                                        exit_on_error=False), label="Find outlets")

    async def _find_outlets(self, pdu: str) -> None:
        self.last_status = (f"{pdu}: starting to find outlets...", "information")
        try:
            answer = await self.client.find_outlets(pdu)
        except FarmClientError as exc:
            self.report(f"finding outlets on {pdu} failed: {exc}", "error")
            return
        if isinstance(answer, dict) and "queue" in answer:
            self.set_discovery(answer)
        self._schedule_discovery_refresh()
        self.report(str((answer or {}).get("message") or f"finding outlets on {pdu}"))

    def cancel_discovery(self) -> None:
        current = self.model.discovery.get("current")
        queued = len(self.model.discovery.get("queue") or [])
        if not current and not queued:
            self.report("no discovery is running", "warning")
            return
        what = f"the discovery of {current['pdu']}/{current['port_id']}" if current else "the discovery"
        more = f" and the {queued} queued outlets" if queued else ""
        self._confirm(f"Cancel {what}{more}? The outlet is switched off.", lambda: self.run_worker(
            self._cancel_discovery(), group="discovery", exit_on_error=False), label="Cancel discovery", danger=True)

    async def _cancel_discovery(self) -> None:
        try:
            status = await self.client.cancel_discovery()
        except FarmClientError as exc:
            self.report(f"cancelling the discovery failed: {exc}", "error")
            return
        if isinstance(status, dict):
            self.set_discovery(status)

    def power_cycle(self, mac: str) -> None:
        machine = self.model.machines.get(mac) or {}
        pdu, port = outlet_of(machine)
        name = self.model.machine_name(mac)
        if pdu is None or port is None:
            self.report(f"{name} has no PDU outlet: set its PDU and port in the machine form (e)", "error")
            return
        self._confirm(f"Power cycle {name} (outlet {pdu}/{port})?", lambda: self._start_power(pdu, port, "reboot"),
                      label="Power cycle", danger=True)

    def toggle_retired(self, mac: str) -> None:
        machine = self.model.machines.get(mac) or {}
        name = self.model.machine_name(mac)
        retire = not machine.get("is_retired")
        verb = "Retire" if retire else "Activate"
        self._confirm(f"{verb} {name} ({mac})?", lambda: self.run_worker(
            self._retire(mac, retire), group=f"retire-{mac}", exit_on_error=False), label=verb, danger=retire)

    async def _retire(self, mac: str, retire: bool) -> None:
        name = self.model.machine_name(mac)
        try:
            answer = await (self.client.retire(mac) if retire else self.client.activate(mac))
        except FarmClientError as exc:
            self.report(f"{'retiring' if retire else 'activating'} {name} failed: {exc}", "error")
            return
        self.report(str(answer).strip() or f"{name} {'retired' if retire else 'activated'}")

    def remove_machine(self, mac: str) -> None:
        name = self.model.machine_name(mac)
        self._confirm(f"Remove {name} ({mac}) from the farm? It registers again if it boots.", lambda: self.run_worker(
            self._remove_machine(mac), group=f"remove-{mac}", exit_on_error=False), label="Remove", danger=True)

    async def _remove_machine(self, mac: str) -> None:
        name = self.model.machine_name(mac)
        try:
            await self.client.remove_machine(mac)
        except FarmClientError as exc:
            self.report(f"removing {name} failed: {exc}", "error")
            return
        self.report(f"{name} removed")

    def add_pdu(self) -> None:
        def added(result: dict[str, Any] | None) -> None:
            if result:
                name = result.get("name", "?")
                state = result.get("state", "")
                self.report(f"PDU {name} added ({result.get('driver', '?')}, {state})")

        self.push_screen(AddPduScreen(), added)

    def remove_pdu(self, name: str) -> None:
        self._confirm(f"Remove PDU {name}? Its outlets are left as they are.", lambda: self.run_worker(
            self._remove_pdu(name), group=f"remove-pdu-{name}", exit_on_error=False), label="Remove", danger=True)

    def cancel_job(self, job_id: str) -> None:
        """Cancel a job after a confirmation; the API's answer (or error) is reported."""
        job = self.model.jobs.get(job_id) or {}
        status = job.get("status")
        mac = job.get("machine")
        where = f" on {self.model.machine_name(str(mac))}" if mac else ""
        what = {"QUEUED": "queued ", "RUNNING": "running "}.get(str(status), "")
        stop = " The DUT is powered off." if status == "RUNNING" else ""
        self._confirm(f"Cancel the {what}job {job_id}{where}?{stop}", lambda: self.run_worker(
            self._cancel_job(job_id), group=f"cancel-job-{job_id}", exit_on_error=False),
            label="Cancel job", danger=True)

    async def _cancel_job(self, job_id: str) -> None:
        self.last_status = (f"cancelling job {job_id}...", "information")
        try:
            answer = await self.client.cancel_job(job_id)
        except FarmClientError as exc:
            self.report(f"cancelling job {job_id} failed: {exc}", "error")
            return
        if isinstance(answer, dict) and answer.get("id") == job_id:
            self._pending.jobs[job_id] = answer  # the answer is the job's latest state
            self.report(f"job {job_id}: {answer.get('status')} ({answer.get('state')})")
        else:
            self.report(f"job {job_id}: {answer}")

    async def _remove_pdu(self, name: str) -> None:
        try:
            await self.client.remove_pdu(name)
        except FarmClientError as exc:
            self.report(f"removing PDU {name} failed: {exc}", "error")
            return
        self.report(f"PDU {name} removed")


def make_app(client: FarmClient, *, title: str | None = None, linux_console: bool | None = None) -> ConsoleApp:
    """Build the console app on ``client`` (tests build it here too)."""
    return ConsoleApp(client, title=title, linux_console=linux_console)


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
