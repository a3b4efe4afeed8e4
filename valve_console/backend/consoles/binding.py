"""Streams and their binding to machines: lines and SALAD markers, the binding a stream earns (ConsolePolicy),
bind/unbind, and the operator's hand on unbound streams.

A part of ConsoleHub (hub.py): its methods, on the hub's state."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from ..errors import BadRequest, Conflict, NotFound
from ..rules import MAC_PREFIX, normalise_mac
from .console import Console
from .limits import (
    MARKER,
    MAX_CONSOLES,
    MAX_LINE,
    PENDING_MAX,
    WRITE_MAX,
)
from .policy import same_address
from .streams import Stream

if TYPE_CHECKING:
    from .host import HubHost
else:
    HubHost = object  # a part of ConsoleHub: its host's interface is for the type checker only

log = logging.getLogger(__package__)


class BindingMixin(HubHost):
    """Streams and their binding to machines: lines and SALAD markers, the binding a stream earns (ConsolePolicy),"""

    # ---------------------------------------------------------------- streams
    def feed(self, stream: Stream, data: bytes) -> None:
        """Process bytes from a stream: store them, and act on association markers and pings."""
        stream.last_bytes = time.monotonic()
        stream.bytes += len(data)
        if stream.machine is not None:
            self.consoles[stream.machine].feed(data)
        else:
            stream.pending += data
            if len(stream.pending) > PENDING_MAX:
                del stream.pending[: len(stream.pending) - PENDING_MAX]
        buf = stream.line + data if stream.line else data
        if b"SALAD." not in buf:
            # The common case: no marker. Keep only the unfinished line (a marker may straddle chunks).
            nl = buf.rfind(b"\n")
            tail = buf[nl + 1 :] if nl >= 0 else buf
            stream.line = tail[-256:] if len(tail) > MAX_LINE else tail
            return
        lines = buf.split(b"\n")
        tail = lines.pop()
        stream.line = tail[-256:] if len(tail) > MAX_LINE else tail
        for line in lines:
            if b"SALAD." in line:
                self._on_line(stream, line)

    def _on_line(self, stream: Stream, line: bytes) -> None:
        if line.rstrip(b"\r \t").endswith(b"SALAD.ping"):
            try:
                if stream.buffered() <= WRITE_MAX:
                    stream.write(b"SALAD.pong\n")
            except Exception as exc:  # noqa: BLE001 - a closing stream may refuse writes
                log.debug("pong to %s failed: %s", stream.name, exc)
        match = MARKER.search(line)
        if match:

            token = match.group(1)
            try:
                mac = normalise_mac(token.decode("ascii", "replace"))
            except ValueError:
                prefix = MAC_PREFIX.match(token)  # a MAC followed by garbage, e.g. "...:07\x00"
                try:
                    mac = normalise_mac(prefix.group(0).decode()) if prefix else ""
                except ValueError:
                    mac = ""
                if not mac:
                    self._warn(("invalid", stream.id), f"{stream.name} announced an invalid machine id {token[:40]!r}")
                    return
            if stream.pinned is not None and mac != stream.pinned:
                self._warn(
                    ("pinned", stream.id),
                    f"{stream.name} (the console of {stream.pinned}) announced machine {mac}; ignored",
                )
                return
            stream.announced = mac
            reason = self._claim(stream, mac)
            if reason is not None:
                self._warn(("refused", stream.id), f"{stream.name} announced {mac}, not bound: {reason}")

    # ---------------------------------------------------------------- earning a binding
    def _is_local(self, stream: Stream) -> bool:
        """A netconsole peer that is the gateway itself (QEMU, Vivian), per console_local_sources."""
        return stream.host is not None and self.local.is_trusted(stream.host)

    def _origin(self, stream: Stream) -> str | None:
        """Whom a provisional console created by ``stream`` is counted against (None: nobody)."""
        if stream.kind == "serial":
            return f"serial:{stream.device}"
        if stream.kind == "netconsole" and not self._is_local(stream):
            return stream.host or stream.name
        return None

    def _claim(self, stream: Stream, mac: str) -> str | None:
        """A marker (or a stored serial binding) asks for ``mac``: bind when plausible; else say why not."""
        if stream.machine == mac:
            stream.waiting = None
            if stream.device is not None and self.device_owner.get(stream.device) != mac:
                self._assign_device(stream.device, mac, "marker")
            return None
        reason = self._refusal(stream, mac)
        stream.waiting = reason
        if reason is None:
            self.bind(stream, mac, origin=self._origin(stream))
        return reason

    def _refusal(self, stream: Stream, mac: str) -> str | None:
        """Why ``stream`` may not bind ``mac`` now (None: it may)."""
        if stream.kind == "netconsole" and stream.machine is not None:
            # A connection is one DUT's console (QEMU keeps it across the guest's reboots): code running on
            # that DUT must not carry it to another machine. Wires may move (a marker re-plugs them).
            return f"{stream.name} is the console of {stream.machine}; only the operator moves it"
        console = self.consoles.get(mac)
        if console is not None and console.stream is not None and console.stream is not stream:
            return (
                f"the console of {mac} is live on {console.stream.name}; a live binding is never taken over "
                "(the operator may bind this stream by hand)"
            )
        if stream.kind == "netconsole" and self.policy.bind != "free" and not self._is_local(stream):
            registered = self.machine_address(mac)
            if registered is None:
                return f"{mac} is not registered: it waits for a registration from {stream.host} or the operator"
            if not same_address(stream.host, registered):
                return f"its source {stream.host} is not the registered address of {mac} ({registered})"
        if console is None:
            if self.known_machine(mac):
                if sum(1 for c in self.consoles.values() if not c.provisional) >= MAX_CONSOLES:
                    return f"too many consoles ({MAX_CONSOLES})"
                return None
            provisional = self._provisional()
            if len(provisional) >= self.policy.unknown_max:
                return (
                    f"{len(provisional)} consoles of machines that never registered exist already "
                    f"(console_unknown_max); it waits for the registration of {mac}"
                )
            origin = self._origin(stream)
            if origin is not None:
                mine = sum(1 for c in provisional if c.origin == origin)
                if mine >= self.policy.unknown_per_source:
                    return (
                        f"{origin} created {mine} consoles of machines that never registered already "
                        f"(console_unknown_per_source); it waits for the registration of {mac}"
                    )
        return None

    def _retry_waiting(self, mac: str | None = None) -> None:
        """Unbound streams that announced ``mac`` (None: any machine) try again, oldest first."""
        if self._stopping:
            return
        waiting = sorted(
            (s for s in self.streams if s.machine is None and s.announced and (mac is None or s.announced == mac)),
            key=lambda s: s.opened_at,
        )
        for stream in waiting:
            if stream in self.streams and stream.machine is None and stream.announced is not None:
                self._claim(stream, stream.announced)

    def bind(self, stream: Stream, mac: str, persist: bool = True, origin: str | None = None) -> None:
        """Make ``stream`` the console of ``mac`` (no questions asked: callers decided it may)."""
        if stream.machine == mac:
            if persist and stream.device is not None and self.device_owner.get(stream.device) != mac:
                self._assign_device(stream.device, mac, "marker")
            return
        console = self.consoles.get(mac)
        if console is None:
            console = self._create(mac, provisional=not self.known_machine(mac), origin=origin)
        elif console.provisional and self.known_machine(mac):
            self._promote(console)
        if stream.machine is not None:
            log.info("%s moves from machine %s to %s", stream.name, stream.machine, mac)
            old = self.consoles.get(stream.machine)
            if old is not None and old.stream is stream:
                self._lost_stream(old)
        previous = console.stream
        if previous is not None and previous is not stream:
            log.warning("console of %s moves from %s to %s", mac, previous.name, stream.name)
            previous.machine = None
            previous.unbound_since = time.monotonic()
            previous.waiting = f"the console of {mac} was given to {stream.name}"
        stream.machine = mac
        stream.waiting = None
        console.stream = stream
        if persist and stream.device is not None:
            self._assign_device(stream.device, mac, "marker")
        if stream.pending:
            console.feed(bytes(stream.pending))
            stream.pending.clear()
        log.info("%s is the console of %s", stream.name, mac)
        self._changed(console)

    def _lost_stream(self, console: Console) -> None:
        """``console`` has no stream any more: free its log file, let a waiting stream have it."""
        console.stream = None
        console.unbound_at = time.monotonic()
        console.log.close()  # reopened with the next byte: a console without a stream holds no descriptor
        self._changed(console)
        if not self._stopping:
            asyncio.get_running_loop().call_soon(self._retry_waiting, console.mac)

    def unbind(self, stream: Stream) -> None:
        if stream.machine is None:
            return
        console = self.consoles.get(stream.machine)
        stream.machine = None
        stream.unbound_since = time.monotonic()
        if console is not None and console.stream is stream:
            self._lost_stream(console)

    def close_stream(self, stream: Stream) -> None:
        self.streams.discard(stream)
        if stream.machine is not None:
            console = self.consoles.get(stream.machine)
            if console is not None and console.stream is stream:
                self._lost_stream(console)

    # ---------------------------------------------------------------- the operator: unbound streams, removal
    def unbound_json(self) -> dict[str, Any]:
        """Streams bound to no machine (netconsole connections, serial devices), oldest first."""
        streams = sorted((s for s in self.streams if s.machine is None), key=lambda s: s.opened_at)
        return {s.id: s.to_json() for s in streams}

    def _stream(self, stream_id: str) -> Stream:
        for stream in self.streams:
            if stream.id == stream_id:
                return stream
        raise NotFound(f"no console stream {stream_id} (see GET /api/v1/consoles/unbound)")

    def bind_by_hand(self, stream_id: str, mac: str, replace: bool = False) -> dict[str, Any]:
        """The operator binds a stream to a machine: it stays there (its markers no longer move it)."""
        stream = self._stream(stream_id)
        if stream.kind == "remote":
            raise BadRequest(f"{stream.name} is the console server of {stream.pinned}: set that machine's source")
        console = self.consoles.get(mac)
        if console is not None and console.stream is not None and console.stream is not stream and not replace:
            raise Conflict(
                f"the console of {mac} is live on {console.stream.name}: send replace=true to give it {stream.name}"
            )
        console = self.console(mac)  # created (or promoted): the operator's choice
        self._promote(console)
        if stream.kind == "serial" and stream.device is not None:
            self._assign_device(stream.device, mac, "operator")
        else:
            stream.pinned = mac
        self.bind(stream, mac, persist=False)
        log.info("%s bound to %s by the operator", stream.name, mac)
        return console.to_json()

    def close_unbound(self, stream_id: str) -> dict[str, Any]:
        """The operator drops a netconsole connection."""
        stream = self._stream(stream_id)
        if stream.kind != "netconsole":
            raise BadRequest(f"{stream.name} is a {stream.kind} console: unplug it or change the machine's source")
        log.info("%s closed by the operator", stream.name)
        stream.close()
        return {"closed": stream_id}
