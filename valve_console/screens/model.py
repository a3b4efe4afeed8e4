"""The farm as the screens see it: the last state fetched from the API plus the events applied since.

The app keeps one ``FarmModel``. Events are not applied one by one: the event reader appends them
to a ``Changes`` buffer (latest state wins per machine, outlet, PDU and service) and a timer applies
the whole buffer to the model and hands it to every screen (``FarmView.apply_changes``).
No Textual here: this module is plain data.
"""

from __future__ import annotations

import copy
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
    dropped_lines: int = 0
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
            self.dropped_lines += 1


class FarmModel:
    """The latest known state of the farm, in the API's JSON shapes."""

    def __init__(self) -> None:
        self.loaded = False
        self.health: dict[str, Any] = {}
        self.gateway: list[dict[str, Any]] = []
        self.machines: dict[str, dict[str, Any]] = {}
        self.pdus: dict[str, dict[str, Any]] = {}
        self.consoles: dict[str, dict[str, Any]] = {}
        self.devices: dict[str, dict[str, Any]] = {}
        self.discovery: dict[str, Any] = {"current": None, "queue": []}
        self.discovery_at = time.monotonic()  # when ``discovery["current"]["remaining"]`` was true
        self.jobs: dict[str, dict[str, Any]] = {}  # job id -> job JSON (GET /api/v1/jobs, job events)
        self.fetched_at = time.monotonic()

    # ---------------------------------------------------------------- applying
    def apply(self, changes: Changes) -> None:
        snap = changes.snapshot
        if snap is not None:
            changes.old_outlets.update({mac: outlet_of(m) for mac, m in self.machines.items()})
            self.loaded = True
            self.health = copy.deepcopy(snap.health)
            self.gateway = list(snap.gateway)
            self.machines = dict(snap.machines)
            self.pdus = copy.deepcopy(snap.pdus)
            self.consoles = dict(snap.consoles)
            self.devices = dict(snap.devices)
            if snap.discovery is not None:
                self.set_discovery(snap.discovery, snap.fetched_at)
            if snap.jobs is not None:
                self.jobs = {str(j["id"]): j for j in snap.jobs if j.get("id")}
            self.fetched_at = snap.fetched_at
        for mac, machine in changes.machines.items():
            old = self.machines.get(mac)
            changes.old_outlets.setdefault(mac, outlet_of(old) if old else (None, None))
            self.machines[mac] = machine
        for name, pdu in changes.pdus.items():
            if pdu is None:
                self.pdus.pop(name, None)
            else:
                self.pdus[name] = copy.deepcopy(pdu)
        for (name, port), outlet in changes.outlets.items():
            pdu = self.pdus.get(name)
            if pdu is None:
                continue
            ports = pdu.setdefault("ports", {})
            ports[port] = {k: v for k, v in outlet.items() if k not in ("pdu", "port_id")}
        if changes.health:
            services = self.health.setdefault("services", {})
            for service, state in changes.health.items():
                services[service] = state
        for mac, info in changes.console_info.items():
            self.consoles[mac] = info
        for mac in changes.console_text:
            self.consoles.setdefault(mac, {"mac": mac, "connected": None})
        for event in changes.discovery:
            self._apply_discovery_event(event)
        self.jobs.update(changes.jobs)

    # ---------------------------------------------------------------- discovery
    def set_discovery(self, status: dict[str, Any], at: float | None = None) -> None:
        """The discovery status as ``GET /api/v1/machine/discover`` returns it."""
        self.discovery = {"current": status.get("current"), "queue": list(status.get("queue") or [])}
        self.discovery_at = time.monotonic() if at is None else at

    def _apply_discovery_event(self, event: dict[str, Any]) -> None:
        """Follow a ``discovery`` event (the app refetches the status after it for the queue)."""
        state = event.get("state")
        pdu, port = str(event.get("pdu")), str(event.get("port_id"))
        current = self.discovery.get("current")
        queue = [q for q in self.discovery.get("queue", [])
                 if (str(q.get("pdu")), str(q.get("port_id"))) != (pdu, port)]
        if state == "started":
            timeout = float(event.get("timeout") or (current or {}).get("timeout") or 0)
            self.discovery = {"current": {"pdu": pdu, "port_id": port, "timeout": timeout, "remaining": timeout},
                              "queue": queue}
            self.discovery_at = time.monotonic()
        elif current is not None and (str(current.get("pdu")), str(current.get("port_id"))) == (pdu, port):
            self.discovery = {"current": None, "queue": [] if state == "cancelled" else queue}

    def discovery_remaining(self) -> float | None:
        """Seconds left for the running discovery, or None when none runs."""
        current = self.discovery.get("current")
        if not current:
            return None
        return max(0.0, float(current.get("remaining") or 0) - (time.monotonic() - self.discovery_at))

    # ---------------------------------------------------------------- queries
    def machine_name(self, mac: str) -> str:
        machine = self.machines.get(mac)
        return (machine or {}).get("full_name") or mac

    def job_machine_name(self, job: dict[str, Any]) -> str:
        mac = job.get("machine")
        return self.machine_name(str(mac)) if mac else "-"

    def machine_on(self, pdu: str, port: str) -> dict[str, Any] | None:
        for machine in self.machines.values():
            if outlet_of(machine) == (pdu, port):
                return machine
        return None

    def outlet(self, pdu: str, port: str) -> dict[str, Any] | None:
        return (self.pdus.get(pdu) or {}).get("ports", {}).get(port)

    def free_ports(self, pdu: str, keep: str | None = None) -> list[str]:
        """The outlets of ``pdu`` no machine uses and that are not reserved (plus ``keep``)."""
        ports = (self.pdus.get(pdu) or {}).get("ports", {})
        used = {outlet_of(m)[1] for m in self.machines.values() if outlet_of(m)[0] == pdu}
        result = []
        for port, info in ports.items():
            if port == keep or (port not in used and not info.get("reserved")):
                result.append(port)
        if keep is not None and keep not in result:
            result.append(keep)
        return sorted(result, key=port_sort_key)

    def counts(self) -> dict[str, Any]:
        duts: dict[str, int] = {}
        for machine in self.machines.values():
            state = machine.get("state") or "?"
            duts[state] = duts.get(state, 0) + 1
        outlets = {"ON": 0, "OFF": 0, "other": 0}
        for pdu in self.pdus.values():
            for info in pdu.get("ports", {}).values():
                state = str(info.get("state", "")).upper()
                outlets[state if state in ("ON", "OFF") else "other"] += 1
        connected = sum(1 for c in self.consoles.values() if c.get("connected"))
        typing = sum(1 for c in self.consoles.values() if c.get("writer"))
        return {
            "duts": duts,
            "machines": len(self.machines),
            "outlets": outlets,
            "pdus": len(self.pdus),
            "consoles": len(self.consoles),
            "consoles_connected": connected,
            "consoles_typing": typing,
            "jobs": sum(1 for j in self.jobs.values() if j.get("status") == "RUNNING"),
            "jobs_queued": sum(1 for j in self.jobs.values() if j.get("status") == "QUEUED"),
        }


def outlet_of(machine: dict[str, Any] | None) -> tuple[str | None, str | None]:
    if not machine:
        return (None, None)
    pdu = machine.get("pdu") or {}
    port = pdu.get("port_id")
    return (pdu.get("name"), None if port is None else str(port))


def port_sort_key(port: str) -> tuple[int, int | str]:
    return (0, int(port)) if str(port).isdigit() else (1, str(port))
