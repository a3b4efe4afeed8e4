"""Consoles: one tab per machine (and per console seen), each a ConsoleView fed by ``console`` events.

A tab starts with the console's ring buffer (``client.console_log``); events that arrive while it
is being fetched are held and appended without the part the log already holds. What the operator
types in a ConsoleView's type mode arrives as ``ConsoleView.Input`` and is sent, in order, with
``client.console_input`` under this TUI's writer id; errors (e.g. 409: not connected) are shown.
One writer at a time: when someone else holds the console, "X is typing in this console" is shown
and ctrl+t resends what was refused with ``takeover``; leaving type mode gives write access back.
The header line shows the console's source, its TCP port (``nc HOST PORT``), writer and viewers.
``w`` (a ConsoleView key) wraps long lines or lets them scroll; each console keeps its choice, also when
its tab goes and comes back.

Streams bound to no machine (a DUT whose binding the hub did not grant: wrong source address, another
stream live on that console, a machine not registered yet) are counted under the header; ``u`` lists
them and binds the chosen one to the machine of the visible tab (``d`` drops one). ``x`` removes the
visible console (its port, logs and stored settings), after a confirmation.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.screen import ModalScreen
from textual.widgets import OptionList, Static, TabbedContent, TabPane
from textual.widgets.option_list import Option

from ..client import FarmClientError
from ..console_data import Changes, FarmModel
from ..contract import Console, ConsoleRemoved, UnboundStream
from ..widgets.console_view import ConsoleView
from ..widgets.sanitize import sanitize, strip_sgr
from ..widgets.state_badge import connection_badge
from .base import FarmScreen
from .dialogs import ConfirmScreen

MAX_OVERLAP = 256 * 1024
MAX_HIDDEN = 256 * 1024  # characters of output kept for a console whose tab was never shown
MAX_REFUSED = 4096  # characters typed while someone else writes, kept to resend on takeover
UNBOUND_REFRESH = 5.0  # seconds between two looks at the unbound streams while the screen is shown
_HOLDER = re.compile(r"already has a writer \((?P<who>[^)]*)\)")


def writer_conflict(message: str) -> str | None:
    """Who holds write access, from the API's 409 message (None: another kind of error)."""
    match = _HOLDER.search(message)
    return match.group("who") if match else None


def pane_id(mac: str) -> str:
    return "con-" + re.sub(r"[^0-9a-zA-Z]", "", mac)


def without_overlap(log: str, extra: str) -> str:
    """``extra`` minus its beginning that ``log`` already ends with (the fetch/stream overlap).

    The longest suffix of ``log`` that is a prefix of ``extra`` is dropped (searched in the last
    ``MAX_OVERLAP`` characters only).
    """
    if not log or not extra:
        return extra
    start = max(0, len(log) - len(extra), len(log) - MAX_OVERLAP)
    first = extra[0]
    pos = log.find(first, start)
    while pos >= 0:
        if log.startswith(extra[: len(log) - pos], pos):
            return extra[len(log) - pos :]
        pos = log.find(first, pos + 1)
    return extra


def stream_summary(stream: UnboundStream) -> Text:
    """One line about an unbound stream, its DUT output made safe (it is untrusted) and plain."""
    tail = strip_sgr(sanitize(stream.tail or ""))
    last = next((line.strip() for line in reversed(tail.split("\n")) if line.strip()), "")
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append(f"{stream.source or stream.device or stream.kind}", style="bold")
    announced = stream.announced
    text.append(f"  announced {announced}" if announced else "  no machine announced")
    text.append(f"  idle {float(stream.idle or 0):.0f} s", style="dim")
    if stream.waiting:
        text.append(f"\n  {stream.waiting}", style="yellow")
    if last:
        text.append(f"\n  last: {last[-200:]}", style="dim")
    return text


class UnboundStreamsScreen(ModalScreen[tuple[str, str] | None]):
    """The streams bound to no machine: ``enter`` binds the highlighted one (to ``target``), ``d`` drops it.

    Dismissed with ("bind", stream id), ("drop", stream id) or None.
    """

    DEFAULT_CSS = """
    UnboundStreamsScreen { align: center middle; }
    UnboundStreamsScreen > #unbound-dialog {
        width: 90%; max-width: 120; height: auto; max-height: 80%; border: solid $accent; padding: 0 1;
        background: $surface;
    }
    UnboundStreamsScreen #unbound-list { height: auto; max-height: 20; }
    """
    BINDINGS = [
        Binding("enter", "choose('bind')", "Bind"),
        Binding("d", "choose('drop')", "Drop"),
        Binding("escape", "cancel", "Cancel"),
    ]

    def __init__(self, streams: dict[str, UnboundStream], target: str | None, target_name: str) -> None:
        super().__init__()
        self.streams = streams
        self.target = target
        self.target_name = target_name

    def compose(self) -> ComposeResult:
        from textual.containers import Vertical

        title = (f"Bind a console stream to {self.target_name} (enter), drop one (d), escape to close"
                 if self.target else "Console streams bound to no machine: drop one (d), escape to close")
        with Vertical(id="unbound-dialog"):
            yield Static(title, id="unbound-title")
            yield OptionList(*(Option(stream_summary(s), id=sid) for sid, s in self.streams.items()),
                             id="unbound-list")

    def on_mount(self) -> None:
        self.query_one("#unbound-list", OptionList).focus()

    def _highlighted(self) -> str | None:
        options = self.query_one("#unbound-list", OptionList)
        if options.highlighted is None:
            return None
        return options.get_option_at_index(options.highlighted).id

    @on(OptionList.OptionSelected)
    def _selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.action_choose("bind")

    def action_choose(self, what: str) -> None:
        stream_id = self._highlighted()
        if stream_id is None or (what == "bind" and self.target is None):
            return
        self.dismiss((what, stream_id))

    def action_cancel(self) -> None:
        self.dismiss(None)


class ConsolesScreen(FarmScreen):
    MODE = "consoles"
    AUTO_FOCUS = "ConsoleView"  # the visible console, not the tab bar

    BINDINGS = [
        Binding("left_square_bracket", "prev_tab", "Prev tab"),
        Binding("right_square_bracket", "next_tab", "Next tab"),
        Binding("u", "unbound", "Unbound streams"),
        Binding("x", "remove_console", "Remove console"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.views: dict[str, ConsoleView] = {}
        self.order: list[str] = []
        self._loading: dict[str, list[str]] = {}
        self._input: dict[str, str] = {}
        self._sending: set[str] = set()
        self._target: str | None = None
        self._blocked: dict[str, str] = {}  # mac -> who holds write access (after a 409)
        self._refused: dict[str, str] = {}  # mac -> what was typed but refused meanwhile
        self._takeover: set[str] = set()  # macs whose next input takes write access over
        self._wraps: dict[str, bool] = {}  # mac -> wrap chosen (w) in a console since closed, kept for its next tab
        # Only the consoles shown so far are mounted (DESIGN.md §6): a hidden tab that was never
        # shown is an empty pane, its ConsoleView (not in the DOM) keeps its bounded scrollback.
        self._mounted: set[str] = set()
        self._hidden: dict[str, deque[str]] = {}  # mac -> output received before its first showing
        self._hidden_size: dict[str, int] = {}
        self.unbound: dict[str, UnboundStream] = {}  # GET /api/v1/consoles/unbound, last seen

    def compose_body(self) -> ComposeResult:
        yield Static("", id="console-info", classes="status-line")
        yield Static("", id="console-unbound", classes="status-line")
        yield Static("No console yet: machines and console streams get a tab here as they appear.",
                     id="no-consoles")
        yield TabbedContent(id="console-tabs")

    def on_mount(self) -> None:
        super().on_mount()
        self._update_empty()
        self.query_one("#console-unbound").display = False
        self.set_interval(UNBOUND_REFRESH, self._look_for_unbound)

    @property
    def tabs(self) -> TabbedContent:
        return self.query_one("#console-tabs", TabbedContent)

    # ---------------------------------------------------------------- sync
    def farm_reset(self, model: FarmModel) -> None:
        for mac in sorted(set(model.machines) | set(model.consoles), key=lambda m: model.machine_name(m)):
            self._ensure_tab(mac, model)
        self._update_titles(model, list(self.views))
        self._update_info()
        target = self.console_app.console_target
        if target is not None:
            self.console_app.console_target = None
            self.show_console(target)

    def farm_changes(self, changes: Changes, model: FarmModel) -> None:
        removed = [mac for mac, info in changes.console_info.items() if isinstance(info, ConsoleRemoved)]
        for mac in removed:  # a registered machine's tab stays, emptied ("no console yet"); others go
            model.consoles.pop(mac, None)
            self._console_removed(mac, keep_tab=mac in model.machines)
        if changes.console_info:
            self._look_for_unbound()  # a binding changed: the unbound streams may have too
        for mac in list(changes.machines) + list(changes.console_info) + list(changes.console_text):
            if mac in removed and mac not in model.machines:
                continue
            self._ensure_tab(mac, model)
        if changes.machines:
            self._update_titles(model, list(changes.machines))
        for mac, chunks in changes.console_text.items():
            text = "".join(chunks)
            if mac in self._loading:
                self._loading[mac].append(text)
            elif mac in self.views:
                self._write(mac, text)
        for mac, info in changes.console_info.items():
            holder = self._blocked.get(mac)
            writer = info.writer if isinstance(info, Console) else None
            if holder and writer != holder and mac not in self._takeover:
                # the other writer left (or was taken over): typing goes through again
                self._refused.pop(mac, None)
                self._set_blocked(mac, None)
                if not writer:
                    self.console_app.report(f"{holder} stopped typing in {model.machine_name(mac)}'s console")
        if changes.machines or changes.console_info:
            self._update_info()

    def _ensure_tab(self, mac: str, model: FarmModel) -> None:
        if mac in self.views:
            return
        view = ConsoleView(mac, max_lines=20000)
        view.dash = self.console_app.dash
        view.wrap = self._wraps.get(mac, False)
        self.views[mac] = view
        self.order.append(mac)
        self._loading[mac] = []
        pane = TabPane(model.machine_name(mac), id=pane_id(mac))
        self.run_worker(self._open_tab(mac, pane), group=f"console-open-{mac}", exit_on_error=False)
        self._update_empty()

    async def _open_tab(self, mac: str, pane: TabPane) -> None:
        try:
            await self.tabs.add_pane(pane)
            if self._target == mac:
                self._activate(mac)
            elif self.current_mac() == mac:
                self._mount_view(mac)
                if self.focused is None:
                    self._focus(mac)
            try:
                log = await self.console_app.client.console_log(mac)
            except FarmClientError as exc:
                log = "" if exc.status == 404 else f"[cannot read the console log: {exc}]\n"
            if not isinstance(log, str):
                log = str(log)
            held = "".join(self._loading.get(mac, []))
            view = self.views.get(mac)
            if view is not None:
                if log:
                    self._write(mac, log)
                rest = without_overlap(log, held)
                if rest:
                    self._write(mac, rest)
        finally:
            self._loading.pop(mac, None)

    def _update_titles(self, model: FarmModel, macs: list[str]) -> None:
        for mac in macs:
            if mac not in self.views:
                continue
            try:
                tab = self.tabs.get_tab(pane_id(mac))
            except Exception:  # noqa: BLE001 - the pane is still being added
                continue
            name = model.machine_name(mac)
            if str(tab.label) != name:
                tab.label = name

    def _update_empty(self) -> None:
        self.query_one("#no-consoles").display = not self.views

    def _write(self, mac: str, text: str) -> None:
        """Console output for ``mac``: into its view once shown, else into a bounded buffer."""
        if mac in self._mounted:
            self.views[mac].write(text)
            return
        chunks = self._hidden.setdefault(mac, deque())
        if len(text) >= MAX_HIDDEN:
            text = text[-MAX_HIDDEN:]
            cut = text.find("\n")
            if 0 <= cut < len(text) - 1:
                text = text[cut + 1 :]  # start on a whole line
            chunks.clear()
            size = 0
        else:
            size = self._hidden_size.get(mac, 0)
        chunks.append(text)
        size += len(text)
        while size > MAX_HIDDEN and len(chunks) > 1:
            size -= len(chunks.popleft())
        self._hidden_size[mac] = size

    def _mount_view(self, mac: str) -> None:
        """Put ``mac``'s ConsoleView in its pane, the first time the tab is shown."""
        if mac in self._mounted or mac not in self.views:
            return
        try:
            pane = self.tabs.get_pane(pane_id(mac))
        except (NoMatches, ValueError):
            return  # the pane is still being added: _open_tab mounts it
        self._mounted.add(mac)
        view = self.views[mac]
        self._hidden_size.pop(mac, None)
        for chunk in self._hidden.pop(mac, ()):
            view.write(chunk)
        pane.mount(view)

    def current_mac(self) -> str | None:
        active = self.tabs.active
        for mac in self.views:
            if pane_id(mac) == active:
                return mac
        return None

    @property
    def my_writer(self) -> str:
        """How the backend names this TUI as a console writer."""
        return f"api:{self.console_app.writer_id}"

    def _update_info(self) -> None:
        mac = self.current_mac()
        info = self.query_one("#console-info", Static)
        if mac is None:
            info.update("")
            return
        machine = self.model.machines.get(mac)
        console = self.model.consoles.get(mac)
        text = Text()
        text.append(f" {self.model.machine_name(mac)} ", style="bold")
        text.append(f" {mac}")
        if machine and machine.ip_address:
            text.append(f"  {machine.ip_address}")
        if machine and machine.state:
            text.append(f"  {machine.state}")
        text.append("  console ")
        text.append_text(connection_badge(console.connected if console else None))
        if console and console.source:
            text.append(f" via {console.source}", style="dim")
            if console.baud:
                text.append(f" {console.baud} baud", style="dim")
        elif console and console.remote:
            text.append(f" remote {console.remote}", style="dim")
        elif console and console.device:
            text.append(f" device {console.device}", style="dim")
        text.append("\n ")
        if console and console.tcp_port:
            text.append("shared: ")
            text.append(f"nc {console.tcp_host or '127.0.0.1'} {console.tcp_port}", style="bold")
        elif console:
            text.append("not shared on TCP", style="dim")
        else:
            text.append("no console yet: it starts with the machine's first console output", style="dim")
        if console and console.tcp_error:
            text.append(f"  {console.tcp_error}", style="bold red")
        if console:
            writer = console.writer
            text.append("  writer: ")
            if not writer:
                text.append("nobody", style="dim")
            elif writer == self.my_writer:
                text.append("you", style="bold")
            else:
                text.append(str(writer), style="bold yellow")
            viewers = int(console.viewers or 0)
            text.append(f"  {viewers} viewer{'' if viewers == 1 else 's'}")
        holder = self._blocked.get(mac)
        if holder:
            text.append("\n ")
            text.append(f"{holder} is typing in this console{self.console_app.dash}press ctrl+t to take over",
                        style="bold yellow")
        info.update(text)

    @on(TabbedContent.TabActivated, "#console-tabs")
    def _tab_changed(self, event: TabbedContent.TabActivated) -> None:
        self._update_info()
        mac = self.current_mac()
        if mac is None:
            return
        self._mount_view(mac)
        if event.pane is None or event.pane.id != self.tabs.active:
            # Stale: another tab became active since this message was posted, and its own message
            # focuses it. Focusing here would activate this message's pane again (a focused
            # descendant activates its pane), and two such messages could chase each other forever.
            return
        if self.focused is None or isinstance(self.focused, ConsoleView):
            self._focus(mac)

    def on_screen_resume(self) -> None:
        self.call_after_refresh(self._focus_view)
        self.call_after_refresh(self._look_for_unbound)

    def _focus(self, mac: str) -> None:
        """Focus ``mac``'s view after this refresh, if its tab is still the active one then.

        Focusing a widget activates the tab pane it is in, so a focus that lands after another
        tab was activated would switch tabs back (and two such focuses can chase each other for
        ever); Widget.focus() is deferred, hence the check at the time it applies.
        """

        def apply(tries: int) -> None:
            view = self.views.get(mac)
            if view is None or self.current_mac() != mac or self.focused is view:
                return
            if view.is_mounted:
                self.set_focus(view)
            elif tries:  # still being mounted into its pane: look again shortly (at most ~2 s)
                self.set_timer(0.02, lambda: apply(tries - 1))

        self.call_later(apply, 100)

    def _focus_view(self) -> None:
        mac = self.current_mac()
        if mac is not None:
            self._mount_view(mac)
        if mac is not None and self.focused is None:
            self._focus(mac)

    # ---------------------------------------------------------------- navigation
    def show_console(self, mac: str) -> None:
        """Make ``mac``'s tab the active one (creating it if needed) and focus its view."""
        self._target = mac
        self._ensure_tab(mac, self.model)
        self._activate(mac)

    def _activate(self, mac: str) -> None:
        try:
            self.tabs.get_pane(pane_id(mac))
        except Exception:  # noqa: BLE001 - not mounted yet: _open_tab activates it
            return
        self.tabs.active = pane_id(mac)
        self._mount_view(mac)
        self._focus(mac)
        self._target = None
        self._update_info()

    def _cycle(self, step: int) -> None:
        if not self.order:
            return
        current = self.current_mac()
        index = self.order.index(current) if current in self.order else 0
        self._activate(self.order[(index + step) % len(self.order)])

    def action_prev_tab(self) -> None:
        self._cycle(-1)

    def action_next_tab(self) -> None:
        self._cycle(1)

    # ---------------------------------------------------------------- unbound streams, removal
    def _look_for_unbound(self) -> None:
        """Fetch the unbound streams (while this screen is shown: they come and go without an event)."""
        if self.is_current:
            self.run_worker(self._fetch_unbound, group="console-unbound", exclusive=True, exit_on_error=False)

    async def _fetch_unbound(self) -> None:
        try:
            self.unbound = await self.console_app.client.unbound_streams()
        except FarmClientError:  # unreachable (the banner says so), or a backend without the route
            return
        self._update_unbound()

    def _update_unbound(self) -> None:
        line = self.query_one("#console-unbound", Static)
        count = len(self.unbound)
        line.display = bool(count)
        if count:
            line.update(Text.assemble(
                (f" {count} console stream{'' if count == 1 else 's'} bound to no machine", "bold yellow"),
                f"{self.console_app.dash}press u to see {'it' if count == 1 else 'them'} and bind one by hand",
            ))

    def action_unbound(self) -> None:
        self.run_worker(self._show_unbound(), group="console-unbound-dialog", exit_on_error=False)

    async def _show_unbound(self) -> None:
        await self._fetch_unbound()
        if not self.unbound:
            self.console_app.report("every console stream is bound to a machine")
            return
        mac = self.current_mac()
        name = self.model.machine_name(mac) if mac else ""
        self.app.push_screen(UnboundStreamsScreen(dict(self.unbound), mac, name),
                             lambda choice: self._unbound_chosen(choice, mac))

    def _unbound_chosen(self, choice: tuple[str, str] | None, mac: str | None) -> None:
        if choice is None:
            return
        what, stream_id = choice
        if what == "drop":
            self.run_worker(self._drop_stream(stream_id), group="console-unbound-act", exit_on_error=False)
        elif mac is not None:
            self.run_worker(self._bind_stream(stream_id, mac, False), group="console-unbound-act",
                            exit_on_error=False)

    def _stream_name(self, stream_id: str) -> str:
        stream = self.unbound.get(stream_id)
        return (stream.name if stream else "") or stream_id

    async def _bind_stream(self, stream_id: str, mac: str, replace: bool) -> None:
        name = self.model.machine_name(mac)
        source = self._stream_name(stream_id)
        try:
            await self.console_app.client.bind_stream(stream_id, mac, replace=replace)
        except FarmClientError as exc:
            if exc.status == 409 and not replace:
                question = f"{exc}\n\nGive {name}'s console to {source}?"
                self.app.push_screen(
                    ConfirmScreen(question, confirm_label="Give it", danger=True),
                    lambda yes: yes and self.run_worker(self._bind_stream(stream_id, mac, True),
                                                        group="console-unbound-act", exit_on_error=False),
                )
                return
            self.console_app.report(f"binding {source} to {name} failed: {exc}", "error")
            return
        self.console_app.report(f"{source} is {name}'s console now")
        await self._fetch_unbound()

    async def _drop_stream(self, stream_id: str) -> None:
        source = self._stream_name(stream_id)
        try:
            await self.console_app.client.close_stream(stream_id)
        except FarmClientError as exc:
            self.console_app.report(f"dropping {source} failed: {exc}", "error")
            return
        self.console_app.report(f"{source} dropped")
        await self._fetch_unbound()

    def action_remove_console(self) -> None:
        mac = self.current_mac()
        if mac is None or mac not in self.model.consoles:
            self.console_app.report("no console to remove here", "warning")
            return
        name = self.model.machine_name(mac)
        question = (f"Remove {name}'s console ({mac})?\n\nIts log files, its TCP port and its stored settings "
                    "(serial device, console server) go; a netconsole connection is dropped.")
        self.console_app.run_confirmed(
            question, lambda: self.console_app.client.remove_console(mac), label="Remove", danger=True,
            group="console-remove", owner=self, failed=f"removing {name}'s console failed",
            success=f"{name}'s console removed",
        )

    def _console_removed(self, mac: str, keep_tab: bool) -> None:
        """The console is gone: its output goes from the view, and its tab unless ``keep_tab``."""
        for store in (self._hidden, self._hidden_size, self._input, self._blocked, self._refused):
            store.pop(mac, None)
        self._takeover.discard(mac)
        view = self.views.get(mac)
        if view is None:
            return
        view.blocked_by = None
        view.clear()
        if keep_tab:
            self._update_info()
            return
        self._wraps[mac] = view.wrap
        del self.views[mac]
        self._loading.pop(mac, None)
        if mac in self.order:
            self.order.remove(mac)
        self._mounted.discard(mac)
        self.run_worker(self._remove_pane(mac), group=f"console-open-{mac}", exit_on_error=False)

    async def _remove_pane(self, mac: str) -> None:
        try:
            await self.tabs.remove_pane(pane_id(mac))
        except Exception:  # noqa: BLE001 - the pane was never added
            pass
        self._update_empty()
        self._update_info()

    # ---------------------------------------------------------------- typing
    @on(ConsoleView.Input)
    def _typed(self, event: Any) -> None:
        event.stop()
        mac, data = event.mac, event.data
        if mac in self._blocked and mac not in self._takeover:
            self._refused[mac] = (self._refused.get(mac, "") + data)[-MAX_REFUSED:]
            return
        self._input[mac] = self._input.get(mac, "") + data
        self._start_sending(mac)

    def _start_sending(self, mac: str) -> None:
        if mac not in self._sending:
            self._sending.add(mac)
            self.run_worker(self._send(mac), group=f"console-input-{mac}", exit_on_error=False)

    async def _send(self, mac: str) -> None:
        client = self.console_app.client
        try:
            while self._input.get(mac) or mac in self._takeover:
                data = self._input.pop(mac, "")
                takeover = mac in self._takeover
                try:
                    await client.console_input(mac, data, writer=self.console_app.writer_id, takeover=takeover)
                except FarmClientError as exc:
                    self._takeover.discard(mac)
                    rest = self._input.pop(mac, "")
                    holder = writer_conflict(str(exc)) if exc.status == 409 else None
                    if holder is not None:
                        self._refused[mac] = (self._refused.get(mac, "") + data + rest)[-MAX_REFUSED:]
                        self._set_blocked(mac, holder)
                        self.console_app.report(f"{holder} is typing in {self.model.machine_name(mac)}'s console"
                                                f"{self.console_app.dash}press ctrl+t to take over", "warning")
                    else:
                        self.console_app.report(f"typing into {self.model.machine_name(mac)} failed: {exc}", "error")
                    return
                self.console_app.held_writers.add(mac)
                if takeover:
                    self._takeover.discard(mac)
                    self._set_blocked(mac, None)
                    self.console_app.report(f"you now type into {self.model.machine_name(mac)}'s console")
        finally:
            self._sending.discard(mac)

    def _set_blocked(self, mac: str, holder: str | None) -> None:
        if holder is None:
            self._blocked.pop(mac, None)
        else:
            self._blocked[mac] = holder
        view = self.views.get(mac)
        if view is not None:
            view.blocked_by = holder
        if mac == self.current_mac():
            self._update_info()

    @on(ConsoleView.Takeover)
    def _take_over(self, event: Any) -> None:
        """ctrl+t: resend what was refused, taking write access over."""
        event.stop()
        mac = event.mac
        refused = self._refused.pop(mac, "")
        self._input[mac] = refused + self._input.get(mac, "")
        self._takeover.add(mac)
        self._start_sending(mac)

    @on(ConsoleView.TypingChanged)
    def _typing_changed(self, event: Any) -> None:
        event.stop()
        mac = event.mac
        if event.typing:
            return
        # leaving type mode: forget what was refused and give write access back
        self._refused.pop(mac, None)
        self._takeover.discard(mac)
        self._set_blocked(mac, None)
        self.run_worker(self._release(mac), group=f"console-release-{mac}", exit_on_error=False)

    async def _release(self, mac: str) -> None:
        for _ in range(40):  # what was typed last goes out first
            if mac not in self._sending:
                break
            await asyncio.sleep(0.05)
        self.console_app.held_writers.discard(mac)
        try:
            await self.console_app.client.release_console_writer(mac, self.console_app.writer_id)
        except FarmClientError as exc:
            if exc.status not in (404, 409):
                self.console_app.report(f"giving back write access to {self.model.machine_name(mac)} failed: {exc}",
                                        "warning")
