"""The latest-wins buffer: what changed since the console last flushed, and the snapshot fetched at (re)connection.

The event feed appends every event here (the latest state wins per machine, outlet, PDU, service and
job; console text and log lines are kept in order up to a bound); the app's timer takes the buffer and
applies it to the ``FarmModel`` in one batch. Plain data: no Textual.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

MAX_PENDING_CONSOLE = 1024 * 1024  # characters kept per console between two flushes
MAX_PENDING_LINES = 5000  # log/journal entries kept between two flushes


@dataclass
class Snapshot:
    """Everything fetched at (re)connection."""

    health: dict[str, Any]
    gateway: list[dict[str, Any]]
    machines: dict[str, dict[str, Any]]
    pdus: dict[str, dict[str, Any]]
    consoles: dict[str, dict[str, Any]]
    backend_log: list[dict[str, Any]]
    fetched_at: float = field(default_factory=time.monotonic)
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)  # serial devices seen (identity -> info)
    discovery: dict[str, Any] | None = None  # GET /api/v1/machine/discover (None: not known)
    jobs: list[dict[str, Any]] | None = None  # GET /api/v1/jobs (None: a backend without jobs)


@dataclass
class Changes:
    """What changed since the last flush. Keys are the domain ids; values the latest state."""

    snapshot: Snapshot | None = None
    machines: dict[str, dict[str, Any]] = field(default_factory=dict)
    pdus: dict[str, dict[str, Any] | None] = field(default_factory=dict)  # None: removed
    outlets: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    health: dict[str, dict[str, Any]] = field(default_factory=dict)
    console_text: dict[str, list[str]] = field(default_factory=dict)
    console_info: dict[str, dict[str, Any]] = field(default_factory=dict)
    logs: list[dict[str, Any]] = field(default_factory=list)
    journal: list[dict[str, Any]] = field(default_factory=list)
    discovery: list[dict[str, Any]] = field(default_factory=list)  # discovery events, in order
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)  # job id -> latest job JSON
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
        )

    # ---------------------------------------------------------------- collecting events
    def add_event(self, event: dict[str, Any]) -> bool:
        """Buffer one event. Returns True when the event asks for a full refetch (``dropped``)."""
        kind = event.get("type")
        data = event.get("data") or {}
        if kind == "machine":
            machine = data.get("machine")
            mac = data.get("mac") or (machine or {}).get("mac_address")
            if mac and machine:
                self.machines[mac] = machine
            elif mac and data.get("action") == "removed":
                return True  # rare: refetch everything rather than unpick a machine from every view
        elif kind == "pdu":
            name = data.get("name")
            if name:
                self.pdus[name] = None if data.get("action") == "removed" else data.get("pdu")
                if data.get("action") == "removed":
                    for key in [k for k in self.outlets if k[0] == name]:
                        del self.outlets[key]
        elif kind == "outlet":
            pdu, port = data.get("pdu"), data.get("port_id")
            if pdu is not None and port is not None:
                self.outlets[(str(pdu), str(port))] = data
        elif kind == "console":
            mac = data.get("mac")
            if mac:
                text = data.get("text") or ""
                if text:
                    chunks = self.console_text.setdefault(mac, [])
                    chunks.append(text)
                    total = sum(len(c) for c in chunks)
                    while total > MAX_PENDING_CONSOLE and len(chunks) > 1:
                        total -= len(chunks.pop(0))
                if data.get("console") is not None:
                    self.console_info[mac] = data["console"]
        elif kind == "health":
            service = data.get("service")
            if service:
                self.health[service] = {"state": data.get("state"), "reason": data.get("reason")}
        elif kind == "log":
            self._append(self.logs, data)
        elif kind == "journal":
            self._append(self.journal, data)
        elif kind == "discovery":
            if data.get("state"):
                self.discovery.append(dict(data))
        elif kind == "job":
            job_id = data.get("id")
            if job_id:
                self.jobs[str(job_id)] = data
        elif kind == "dropped":
            return True
        return False

    def _append(self, target: list[dict[str, Any]], entry: dict[str, Any]) -> None:
        target.append(entry)
        if len(target) > MAX_PENDING_LINES:
            del target[: len(target) - MAX_PENDING_LINES]
