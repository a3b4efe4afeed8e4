"""ConsoleHub: consoles of machines, their lifecycle, input, stored settings, housekeeping, removal, the farm-wide
log cap and console events; the netconsole (netconsole.py), other sources (sources.py), binding (binding.py) and
each machine's TCP port (tcpport.py) are its parts, mixed in (see the package's face)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import deque
from pathlib import Path
from collections.abc import Coroutine, Hashable
from typing import TYPE_CHECKING, Any, Callable, Iterable

from ..errors import BadRequest, Conflict, NotFound
from ..events import EventBus
from .binding import BindingMixin
from .console import Console
from .limits import (
    EVENT_HZ,
    MAX_CONSOLES,
    UNKNOWN_RING,
    WARN_BURST,
    WARN_INTERVAL,
    WRITE_MAX,
)
from .logstore import LogBudget, RotatingLog
from .netconsole import NetconsoleMixin
from .policy import ConsolePolicy
from .sources import SourcesMixin
from .streams import DeviceState, Stream
from .tcpport import TcpPortMixin
from .viewers import Subscriber

if TYPE_CHECKING:
    from ...drivers.serial import DeviceSource

log = logging.getLogger(__package__)


# --------------------------------------------------------------------------- hub
class ConsoleHub(NetconsoleMixin, BindingMixin, SourcesMixin, TcpPortMixin):
    def __init__(
        self,
        bus: EventBus,
        log_dir: Path,
        ring_bytes: int,
        log_max_bytes: int,
        log_backups: int,
        *,
        store: Any = None,
        tcp_host: str | None = "127.0.0.1",
        tcp_base: int = 0,
        device_sources: Iterable[DeviceSource] = (),
        known_machine: Callable[[str], bool] | None = None,
        api_writer_timeout: float = 60.0,
        machine_address: Callable[[str], str | None] | None = None,
        policy: ConsolePolicy | None = None,
        settings: Any = None,
    ) -> None:
        from ..trust import Trust

        self.bus = bus
        self.log_dir = log_dir
        self.ring_bytes = ring_bytes
        self.log_max_bytes = log_max_bytes
        self.log_backups = log_backups
        self.store = store
        self.tcp_host = tcp_host
        self.tcp_base = tcp_base
        self.sources = list(device_sources)
        self.known_machine = known_machine or (lambda mac: False)
        self.machine_address = machine_address or (lambda mac: None)  # a machine's registered ip_address
        self.api_writer_timeout = api_writer_timeout
        self.policy = policy or (ConsolePolicy.from_settings(settings) if settings is not None else ConsolePolicy())
        self.notes = list(getattr(settings, "notes", ()))  # settings that fell back (logged at start)
        self.local = Trust(self.policy.local_sources)  # sources that are the gateway itself
        self.budget = LogBudget(log_dir, self.policy.logs_max_bytes)
        self._free_indexes: list[int] = []  # TCP indexes of removed provisional consoles (never a machine's)
        self._per_source: dict[str, int] = {}  # netconsole connections per peer address
        self._warned: dict[Hashable, tuple[float, int]] = {}  # rate-limited warnings: key -> (last, suppressed)
        self._warn_times: deque[float] = deque()  # when the warnings of the last minute were logged
        self._machine_sub: Any = None
        self._log_check: asyncio.TimerHandle | None = None
        self.refused_connections = 0
        self.consoles: dict[str, Console] = {}
        self.streams: set[Stream] = set()
        self.devices: dict[str, DeviceState] = {}  # device identity -> state (present devices)
        self.device_owner: dict[str, str] = {}  # device identity -> MAC (stored)
        self._by_node: dict[str, str] = {}  # device node -> identity (for removals)
        self._remotes: dict[str, asyncio.Task[None]] = {}
        self._next_index = 0
        self._server: asyncio.base_events.Server | None = None
        self._flush_handle: asyncio.TimerHandle | None = None
        self._conn_tasks: set[asyncio.Task[None]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._saves: set[asyncio.Task[None]] = set()
        # links being closed (a serial port closes in a thread)
        self._closing: set[asyncio.Future[Exception | None]] = set()
        self._stopping = False
        self.state = "starting"
        self.reason: str | None = None
        self.address: tuple[str, int] | None = None

    # ---------------------------------------------------------------- lifecycle
    async def start(self, sock: socket.socket | None) -> None:
        for note in self.notes:
            log.warning("%s", note)
        if sock is not None:
            self._server = await asyncio.start_server(self._on_connection, sock=sock)
            self.address = sock.getsockname()[:2]
        if self.store is not None:
            await self._load()
        if self.budget.max_bytes:
            await asyncio.to_thread(self.budget.scan)
            if self.budget.total > self.budget.max_bytes:
                self._enforce_log_cap()
        self._machine_sub = self.bus.subscribe(["machine"])
        self._spawn(self._follow_machines(self._machine_sub), "console-machines")
        self._spawn(self._housekeeping(), "console-housekeeping")
        for source in self.sources:
            try:
                await source.start()
            except Exception as exc:  # noqa: BLE001 - one broken source must not stop the others
                log.error("serial device source %s failed to start: %s", getattr(source, "name", source), exc)
                self.reason = f"serial discovery {getattr(source, 'name', '?')}: {exc}"
                continue
            self._spawn(self._consume(source), f"console-source-{getattr(source, 'name', '?')}")
        for console in self.consoles.values():
            if console.remote:
                self._start_remote(console)
        self.state = "ok"

    async def _load(self) -> None:
        from sqlmodel import select

        from ..models import MachineConsole

        rows = await self.store.run(lambda s: list(s.exec(select(MachineConsole)).all()))
        for row in rows:
            self._next_index = max(self._next_index, row.tcp_index + 1)
        # Consoles of machines that never registered (and that the operator did not configure) are
        # provisional: the most recent console_unknown_max are kept, the others (a marker flood's) go.
        unknown = sorted(
            (r for r in rows if not self._configured(r.mac_address, r.remote_url, r.device_set_by)),
            key=lambda r: r.updated_at,
            reverse=True,
        )
        dropped = unknown[self.policy.unknown_max :]
        if dropped:
            await self._forget_rows([r.mac_address for r in dropped])
            await asyncio.to_thread(self._remove_log_files, [r.mac_address for r in dropped])
            log.warning(
                "removed %d stored consoles of machines that never registered (console_unknown_max is %d)",
                len(dropped),
                self.policy.unknown_max,
            )
        gone = {r.mac_address for r in dropped}
        provisional = {r.mac_address for r in unknown}
        for row in sorted((r for r in rows if r.mac_address not in gone), key=lambda r: r.tcp_index):
            console = self._new_console(row.mac_address, provisional=row.mac_address in provisional)
            console.tcp_index = row.tcp_index
            console.device = row.device
            console.remote = row.remote_url
            if row.device:
                self.device_owner[row.device] = row.mac_address
        for console in list(self.consoles.values()):
            self._open_share(console, starting=True)

    def _configured(self, mac: str, remote: str | None, device_set_by: str | None) -> bool:
        """A console that is not provisional: its machine registered, or the operator configured it."""
        return bool(self.known_machine(mac) or remote or device_set_by == "operator")

    def _remove_log_files(self, macs: list[str]) -> None:
        for mac in macs:
            RotatingLog(self.log_dir / f"{mac}.log", self.log_max_bytes, self.log_backups).remove()

    async def _forget_rows(self, macs: list[str]) -> None:
        from sqlmodel import col, delete

        from ..models import MachineConsole

        def run(session: Any) -> None:
            for i in range(0, len(macs), 500):
                session.exec(delete(MachineConsole).where(col(MachineConsole.mac_address).in_(macs[i : i + 500])))

        await self.store.run(run)

    async def stop(self) -> None:
        self._stopping = True
        if self._machine_sub is not None:
            self._machine_sub.close()
        if self._log_check is not None:
            self._log_check.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for source in self.sources:
            with contextlib.suppress(Exception):
                await source.stop()
        tasks = [s.task for s in self.devices.values() if s.task is not None] + list(self._remotes.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._closing:
            await asyncio.wait(list(self._closing), timeout=2)
        if self._server is not None:
            self._server.close()
        for task in list(self._conn_tasks):
            task.cancel()
        await asyncio.gather(*self._conn_tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        servers = []
        for console in self.consoles.values():
            if console._share_retry is not None:
                console._share_retry.cancel()
            if console.server is not None:
                console.server.close()
                servers.append(console.server)
            for viewer in list(console.viewers):
                viewer.close()
            for sub in console.subscribers:
                sub.close()
            console.log.close()
        for server in servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2)
        if self._saves:
            await asyncio.gather(*self._saves, return_exceptions=True)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ---------------------------------------------------------------- consoles
    def _new_console(self, mac: str, provisional: bool = False) -> Console:
        logfile = RotatingLog(self.log_dir / f"{mac}.log", self.log_max_bytes, self.log_backups)
        ring = min(self.ring_bytes, UNKNOWN_RING) if provisional else self.ring_bytes
        console = self.consoles[mac] = Console(mac, ring, logfile)
        console.provisional = provisional
        console.on_pending = self._schedule_flush
        console.on_writer_change = lambda: self._changed(console)
        console.on_logged = self._logged
        console.api_writer_timeout = self.api_writer_timeout
        return console

    def _create(self, mac: str, provisional: bool, origin: str | None = None) -> Console:
        """A new console with its TCP index (a provisional one may reuse a removed provisional's), stored."""
        console = self._new_console(mac, provisional)
        console.origin = origin
        if provisional and self._free_indexes:
            console.tcp_index = self._free_indexes.pop(0)
        else:
            console.tcp_index = self._next_index
            self._next_index += 1
        self._save(console)
        self._open_share(console)
        self._changed(console)
        return console

    def _promote(self, console: Console) -> None:
        """The machine registered (or the operator configured its console): a console like any other."""
        if console.provisional:
            console.provisional = False
            console.origin = None
            console.ring_bytes = self.ring_bytes
            log.info("console %s belongs to a registered machine now", console.mac)
            self._changed(console)

    def _provisional(self) -> list[Console]:
        return [c for c in self.consoles.values() if c.provisional]

    def console(self, mac: str, create: bool = True) -> Console:
        console = self.consoles.get(mac)
        if console is None:
            if not create:
                raise NotFound(f"no console for machine {mac}")
            if sum(1 for c in self.consoles.values() if not c.provisional) >= MAX_CONSOLES:
                raise Conflict(f"too many consoles ({MAX_CONSOLES}); not creating one for {mac}")
            console = self._create(mac, provisional=False)
        elif console.provisional and create and self.known_machine(mac):
            self._promote(console)
        return console

    def get(self, mac: str) -> Console:
        """The console of a known machine or an existing console (created for a machine if need be)."""
        if mac in self.consoles:
            return self.console(mac)
        if self.known_machine(mac):
            return self.console(mac)
        raise NotFound(f"no machine or console {mac}")

    def subscribe(self, mac: str, who: str | None = None) -> Subscriber:
        sub = Subscriber(who=who)
        console = self.get(mac)
        console.subscribers.add(sub)
        self._changed(console)
        return sub

    def unsubscribe(self, mac: str, sub: Subscriber) -> None:
        console = self.consoles.get(mac)
        if console is not None and sub in console.subscribers:
            console.subscribers.discard(sub)
            if not self._stopping:
                self._changed(console)

    def list_json(self) -> dict[str, Any]:
        return {mac: c.to_json() for mac, c in sorted(self.consoles.items())}

    def devices_json(self) -> dict[str, Any]:
        """Every serial device present, with the machine it is bound to and whether it is open."""
        result = {}
        for ident, state in sorted(self.devices.items()):
            info = state.info.to_json()
            info["identity"] = ident
            info["machine"] = self.device_owner.get(ident)
            info["open"] = state.stream is not None
            info["error"] = state.error
            result[ident] = info
        return result

    def _changed(self, console: Console) -> None:
        if not self._stopping:
            self.bus.publish("console", {"mac": console.mac, "text": "", "console": console.to_json()})

    # ---------------------------------------------------------------- input
    def _send(self, console: Console, data: bytes) -> int:
        stream = console.stream
        if stream is None:
            raise Conflict(f"the console of {console.mac} is not connected: nothing to type into")
        waiting = stream.buffered()
        if waiting > WRITE_MAX:
            raise Conflict(f"{stream.name} is not taking input: {waiting} bytes are still waiting to be sent")
        try:
            stream.write(data)
        except (OSError, ConnectionError) as exc:
            raise Conflict(f"writing to {stream.name} failed: {exc}") from None
        return len(data)

    def input(self, mac: str, data: bytes, writer: str | None = None, takeover: bool = False) -> int:
        """Input from the API. ``writer`` names the client (None: the anonymous API writer)."""
        console = self.console(mac, create=False)
        if console.stream is None:
            raise Conflict(f"the console of {mac} is not connected: nothing to type into")
        who = f"api:{writer}" if writer else "api"
        before = console.current_writer()
        holder = console.claim(who, None, takeover)
        if holder is not None:
            raise Conflict(f"{mac} already has a writer ({holder.who}); send takeover=true to take over")
        console._watch_api_writer()
        if before is None or before.who != who:
            self._changed(console)
        return self._send(console, data)

    def write(self, mac: str, data: bytes) -> int:
        return self.input(mac, data)

    def release_writer(self, mac: str, writer: str | None = None) -> dict[str, Any]:
        console = self.console(mac, create=False)
        who = f"api:{writer}" if writer else "api"
        current = console.current_writer()
        released = current is not None and current.who == who and current.viewer is None
        if released:
            console.writer = None
            self._changed(console)
        return {"released": released, "writer": console.writer.who if console.writer else None}

    # ---------------------------------------------------------------- settings (stored)
    def _save(self, console: Console, set_by: str | None = None) -> None:
        if self.store is None or console.tcp_index is None:
            return
        from ..models import MachineConsole, now
        from ..store import upsert_row

        mac, index, device, remote = console.mac, console.tcp_index, console.device, console.remote

        def upsert(session: Any) -> None:
            values = {"device": device, "remote_url": remote, "updated_at": now()}
            if set_by is not None:
                values["device_set_by"] = set_by
            upsert_row(session, MachineConsole, values, mac, on_insert={"mac_address": mac, "tcp_index": index})

        async def run() -> None:
            try:
                await self.store.run(upsert)
            except Exception as exc:  # noqa: BLE001 - the operator hears of it; memory stays right
                log.error("cannot store the console settings of %s: %s", mac, exc)

        task = asyncio.get_running_loop().create_task(run())
        self._saves.add(task)
        task.add_done_callback(self._saves.discard)

    def _assign_device(self, ident: str, mac: str | None, set_by: str) -> None:
        """Record that device ``ident`` is the console of ``mac`` (None: of no machine)."""
        old_mac = self.device_owner.get(ident)
        if old_mac == mac:
            return
        if old_mac is not None:
            del self.device_owner[ident]
            old = self.consoles.get(old_mac)
            if old is not None and old.device == ident:
                old.device = None
                self._save(old, set_by)
                self._changed(old)
        if mac is not None:
            console = self.console(mac)
            if console.device is not None and console.device != ident:
                previous = console.device
                self.device_owner.pop(previous, None)
                state = self.devices.get(previous)
                if state is not None and state.stream is not None and state.stream.machine == mac:
                    self.unbind(state.stream)
            console.device = ident
            self.device_owner[ident] = mac
            self._save(console, set_by)
            self._changed(console)

    async def set_device(self, mac: str, device: str | None) -> dict[str, Any]:
        """The operator binds a serial device identity to a machine (or unbinds it with None)."""
        console = self.get(mac)
        if device is not None:
            device = device.strip()
            if not device or len(device) > 255 or any(ord(c) < 32 or ord(c) == 127 for c in device):
                raise BadRequest("a device identity is 1-255 printable characters (see GET /api/v1/consoles)")
        if device is None:
            if console.device is not None:
                ident = console.device
                self._assign_device(ident, None, "operator")
                state = self.devices.get(ident)
                if state is not None and state.stream is not None and state.stream.machine == mac:
                    self.unbind(state.stream)
        else:
            self._promote(console)  # the operator configured it
            self._assign_device(device, mac, "operator")
            state = self.devices.get(device)
            if state is not None and state.stream is not None:
                self.bind(state.stream, mac)
        log.info("console %s: serial device set to %s by the operator", mac, device or "none")
        return console.to_json()

    async def set_remote(self, mac: str, url: str | None) -> dict[str, Any]:
        """The operator points a machine's console at a console server (ser2net), or at none."""
        from ...drivers.serial.remote import parse_console_url

        console = self.get(mac)
        if url is not None:
            try:
                url = parse_console_url(url).url
            except ValueError as exc:
                raise BadRequest(str(exc)) from None
        if url is not None:
            self._promote(console)  # the operator configured it
        if url != console.remote:
            console.remote = url
            self._save(console)
            task = self._remotes.pop(mac, None)
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            if url is not None:
                self._start_remote(console)
            log.info("console %s: remote console set to %s", mac, url or "none")
            self._changed(console)
        return console.to_json()

    # ---------------------------------------------------------------- housekeeping
    async def _housekeeping(self) -> None:
        """Once a second: time limits of unbound streams and provisional consoles, and late bindings."""
        while True:
            await asyncio.sleep(self.policy.sweep_interval)
            try:
                self._sweep(time.monotonic())
            except Exception:  # noqa: BLE001 - the next sweep tries again
                log.exception("console housekeeping failed")

    def _sweep(self, now: float) -> None:
        for stream in list(self.streams):
            if stream.kind != "netconsole" or stream.machine is not None or self._is_local(stream):
                continue  # a local source is the gateway itself (QEMU reconnects): only the total cap applies
            if stream.announced is None and now - stream.last_bytes > self.policy.marker_timeout:
                log.info("%s closed: no machine announced in %g s", stream.name, self.policy.marker_timeout)
                stream.close()
            elif now - stream.unbound_since > self.policy.unbound_ttl:
                log.info("%s closed: unbound for %g s", stream.name, self.policy.unbound_ttl)
                stream.close()
        for console in self._provisional():
            if self._configured(console.mac, console.remote, None):
                self._promote(console)
            elif console.stream is None and now - console.unbound_at > self.policy.unknown_ttl and not any(
                sub.who is None for sub in console.subscribers
            ):
                log.info("console %s removed: its machine never registered and it was unused for %g s",
                         console.mac, self.policy.unknown_ttl)
                self._remove(console)
        self._retry_waiting()

    async def _follow_machines(self, sub: Any) -> None:
        """A machine registered or changed: its provisional console is promoted, its waiting streams bind."""
        async for event in sub:
            mac = event.data.get("mac") or (event.data.get("machine") or {}).get("mac_address")
            if not mac:
                continue
            console = self.consoles.get(mac)
            if console is not None and console.provisional and self.known_machine(mac):
                self._promote(console)
            self._retry_waiting(mac)

    def _warn(self, key: Hashable, message: str) -> None:
        """A warning logged at most once a minute per ``key`` (with how many were left out), and at most
        WARN_BURST a minute in all: many hostile streams must not flood the journal either."""
        now = time.monotonic()
        last, suppressed = self._warned.get(key, (float("-inf"), 0))
        while self._warn_times and now - self._warn_times[0] > WARN_INTERVAL:
            self._warn_times.popleft()
        if now - last < WARN_INTERVAL or len(self._warn_times) >= WARN_BURST:
            self._warned[key] = (last, suppressed + 1)
            return
        self._warn_times.append(now)
        if len(self._warned) > 4096:
            self._warned = {k: v for k, v in self._warned.items() if now - v[0] < WARN_INTERVAL}
        self._warned[key] = (now, 0)
        log.warning("%s%s", message, f" ({suppressed} more like it in the last minute)" if suppressed else "")

    def remove(self, mac: str) -> dict[str, Any]:
        """The operator removes a machine's console: its port, logs, stored settings and device binding."""
        console = self.console(mac, create=False)
        if any(sub.who is None for sub in console.subscribers):
            raise Conflict(f"a job is reading the console of {mac}: cancel it first")
        self._remove(console)
        log.info("console %s removed by the operator", mac)
        return {"removed": mac}

    def _remove(self, console: Console) -> None:
        mac = console.mac
        self.consoles.pop(mac, None)
        stream = console.stream
        if stream is not None:
            console.stream = None
            stream.machine = None
            stream.unbound_since = time.monotonic()
            stream.pinned = stream.announced = None  # it does not come straight back with its next marker
            if stream.kind == "netconsole":
                stream.close()
            elif stream.kind == "remote":
                self.close_stream(stream)
        task = self._remotes.pop(mac, None)
        if task is not None:
            task.cancel()
        if console.device is not None and self.device_owner.get(console.device) == mac:
            del self.device_owner[console.device]
        for handle in (console._share_retry, console._writer_expiry):
            if handle is not None:
                handle.cancel()
        if console.server is not None:
            console.server.close()
        for viewer in list(console.viewers):
            viewer.close()
        for sub in list(console.subscribers):
            sub.close()
        console.subscribers.clear()
        try:
            console.log.remove()
        except OSError as exc:
            log.warning("console %s: cannot delete its log: %s", mac, exc.strerror or exc)
        index = console.tcp_index
        if self.store is not None and index is not None:
            self._spawn_save(self._forget_rows([mac]))
        if console.provisional and index is not None:
            self._free_indexes.append(index)  # never a registered machine's: another provisional one may have it
            self._free_indexes.sort()
        if not self._stopping:
            self.bus.publish("console", {"mac": mac, "text": "", "console": {"mac": mac, "removed": True}})

    def _spawn_save(self, coro: Any) -> None:
        async def run() -> None:
            try:
                await coro
            except Exception as exc:  # noqa: BLE001 - the operator hears of it; memory stays right
                log.error("console settings: %s", exc)

        task = asyncio.get_running_loop().create_task(run())
        self._saves.add(task)
        task.add_done_callback(self._saves.discard)

    # ---------------------------------------------------------------- the farm-wide log cap
    def _logged(self, n: int) -> None:
        if self.budget.add(n) and self._log_check is None and not self._stopping:
            self._log_check = asyncio.get_running_loop().call_later(self.budget.delay(), self._enforce_log_cap)

    def _enforce_log_cap(self) -> None:
        self._log_check = None
        by_path = {c.log.path: c for c in self.consoles.values()}
        protected = {c.log.path for c in self.consoles.values() if c.stream is not None}

        def discard(path: Path) -> int | None:
            console = by_path.get(path)
            return console.log.discard_current() if console is not None else None

        before = self.budget.evicted_files
        self.budget.enforce(protected, discard)
        if self.budget.evicted_files != before:
            self._warn(
                "log-cap",
                f"console logs above console_logs_max_bytes ({self.budget.max_bytes}): deleted the oldest, "
                f"{self.budget.evicted_files} files ({self.budget.evicted_bytes} bytes) so far",
            )

    def _schedule_flush(self) -> None:
        """Console output becomes ``console`` events at most EVENT_HZ times a second, only when there is some."""
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(1 / EVENT_HZ, self._flush_events)

    def _flush_events(self) -> None:
        self._flush_handle = None
        subs = getattr(self.bus, "_subs", None)  # anyone listening to console events (the TUI, an API stream)?
        listening = subs is None or any(sub.types is None or "console" in sub.types for sub in subs)
        for console in self.consoles.values():
            if console.pending_event:
                if not listening:  # nobody to tell: skip the decoding
                    console.pending_event.clear()
                    continue
                text = console.decoder.decode(bytes(console.pending_event))
                console.pending_event.clear()
                if text:
                    self.bus.publish("console", {"mac": console.mac, "text": text})


