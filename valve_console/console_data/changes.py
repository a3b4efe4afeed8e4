"""The latest-wins buffer: what changed since the console last flushed, and the snapshot fetched at (re)connection.

The event feed appends every event here (the latest state wins per machine, outlet, PDU, service and
job; console text and log lines are kept in order up to a bound); the app's timer takes the buffer and
applies it to the ``FarmModel`` in one batch. Plain data: no Textual.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ..contract import (
    Console,
    ConsoleEvent,
    ConsoleRemoved,
    DiscoveryEvent,
    DiscoveryStatus,
    Dropped,
    Event,
    FarmSettings,
    Health,
    HealthEvent,
    Job,
    JournalEntry,
    LogEntry,
    Machine,
    MachineEvent,
    NetworkInterface,
    OutletOf,
    Pdu,
    PduEvent,
    SerialDevice,
    ServiceHealth,
)

MAX_PENDING_CONSOLE = 1024 * 1024  # characters kept per console between two flushes
MAX_PENDING_LINES = 5000  # log/journal entries kept between two flushes
MAX_PENDING_OUTLET = 64  # outlet events kept per outlet between two flushes (readings and ON changes)


@dataclass
class Snapshot:
    """Everything fetched at (re)connection."""

    health: Health
    gateway: list[NetworkInterface]
    machines: dict[str, Machine]
    pdus: dict[str, Pdu]
    consoles: dict[str, Console]
    backend_log: list[LogEntry]
    fetched_at: float = field(default_factory=time.monotonic)
    devices: dict[str, SerialDevice] = field(default_factory=dict)  # serial devices seen (identity -> info)
    discovery: DiscoveryStatus | None = None  # GET /api/v1/machine/discover (None: not known)
    jobs: list[Job] | None = None  # GET /api/v1/jobs (None: a backend without jobs)


@dataclass
class Changes:
    """What changed since the last flush. Keys are the domain ids; values the latest state."""

    snapshot: Snapshot | None = None
    machines: dict[str, Machine] = field(default_factory=dict)
    pdus: dict[str, Pdu | None] = field(default_factory=dict)  # None: removed
    outlets: dict[tuple[str, str], OutletOf] = field(default_factory=dict)
    # every outlet event in order (bounded per outlet): the readings and ON changes in between the latest
    outlet_events: dict[tuple[str, str], list[OutletOf]] = field(default_factory=dict)
    health: dict[str, ServiceHealth] = field(default_factory=dict)
    console_text: dict[str, list[str]] = field(default_factory=dict)
    console_info: dict[str, Console | ConsoleRemoved] = field(default_factory=dict)
    logs: list[LogEntry] = field(default_factory=list)
    journal: list[JournalEntry] = field(default_factory=list)
    discovery: list[DiscoveryEvent] = field(default_factory=list)  # discovery events, in order
    jobs: dict[str, Job] = field(default_factory=dict)  # job id -> latest job
    settings: FarmSettings | None = None  # the latest ``settings`` event (after a run-time change)
    # filled in by FarmModel.apply: where machines were before this batch (mac -> (pdu, port))
    old_outlets: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(
            self.snapshot is not None
            or self.machines
            or self.pdus
            or self.outlets
            or self.health
            or self.console_text
            or self.console_info
            or self.logs
            or self.journal
            or self.discovery
            or self.jobs
            or self.settings is not None
        )

    # ---------------------------------------------------------------- collecting events
    def add_event(self, event: Event) -> bool:
        """Buffer one event. Returns True when the event asks for a full refetch (``dropped``)."""
        data = event.parsed()
        if isinstance(data, MachineEvent):
            mac = data.mac or (data.machine.mac_address if data.machine else "")
            if mac and data.machine:
                self.machines[mac] = data.machine
            elif mac and data.action == "removed":
                return True  # rare: refetch everything rather than unpick a machine from every view
        elif isinstance(data, PduEvent):
            if data.name:
                removed = data.action == "removed"
                self.pdus[data.name] = None if removed else data.pdu
                if removed:
                    for key in [k for k in self.outlets if k[0] == data.name]:
                        del self.outlets[key]
                    for key in [k for k in self.outlet_events if k[0] == data.name]:
                        del self.outlet_events[key]
        elif isinstance(data, OutletOf):
            key = (data.pdu, data.port_id)
            self.outlets[key] = data
            seen = self.outlet_events.setdefault(key, [])
            seen.append(data)
            if len(seen) > MAX_PENDING_OUTLET:
                del seen[: len(seen) - MAX_PENDING_OUTLET]
        elif isinstance(data, ConsoleEvent):
            mac = data.mac
            if mac:
                if data.text:
                    chunks = self.console_text.setdefault(mac, [])
                    chunks.append(data.text)
                    total = sum(len(c) for c in chunks)
                    while total > MAX_PENDING_CONSOLE and len(chunks) > 1:
                        total -= len(chunks.pop(0))
                if data.console is not None:
                    self.console_info[mac] = data.console
        elif isinstance(data, HealthEvent):
            if data.service:
                self.health[data.service] = ServiceHealth(state=data.state, reason=data.reason)
        elif isinstance(data, Job):
            if data.id:
                self.jobs[data.id] = data
        elif isinstance(data, FarmSettings):
            self.settings = data
        elif isinstance(data, Dropped):
            return True
        elif isinstance(data, LogEntry):
            self._append(self.logs, data)
        elif isinstance(data, JournalEntry):
            self._append(self.journal, data)
        elif isinstance(data, DiscoveryEvent):
            if data.state:
                self.discovery.append(data)
        return False

    def _append(self, target: list[Any], entry: Any) -> None:
        target.append(entry)
        if len(target) > MAX_PENDING_LINES:
            del target[: len(target) - MAX_PENDING_LINES]
