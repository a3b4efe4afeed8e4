"""The farm as the screens see it: the last state fetched from the API plus the events applied since.

The app keeps one ``FarmModel``. Events are not applied one by one: the event feed appends them to a
``Changes`` buffer (changes.py) and a timer applies the whole buffer to the model and hands it to every
screen. Plain data: no Textual.
"""

from __future__ import annotations

import copy
import time
from typing import Any

from .changes import Changes


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
