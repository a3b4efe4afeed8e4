"""The farm as the screens see it: the last state fetched from the API plus the events applied since.

The app keeps one ``FarmModel``. Events are not applied one by one: the event feed appends them to a
``Changes`` buffer (changes.py) and a timer applies the whole buffer to the model and hands it to every
screen. Plain data: no Textual.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from ..contract import (
    Console,
    ConsoleRemoved,
    DiscoveryCurrent,
    DiscoveryEvent,
    DiscoveryStatus,
    FarmSettings,
    Health,
    Job,
    Machine,
    NetworkInterface,
    Outlet,
    Pdu,
    SerialDevice,
)
from .changes import Changes
from .power import PowerHistory


FEED_SIZE = 200
TERMINAL = frozenset({"PASS", "WARN", "COMPLETE", "FAIL", "INCOMPLETE", "UNKNOWN", "SETUP_FAIL"})


@dataclass(frozen=True)
class FeedItem:
    """A line of the recent-events feed: when (wall clock), what, and how bad."""

    at: float
    text: str
    severity: str = "information"  # information, warning, error


def placeholder_console(mac: str) -> Console:
    """A console known only from its text (its state not fetched yet): connected unknown (None)."""
    return Console.model_construct(
        mac=mac, source=None, connected=None, device=None, remote=None, baud=None, tcp_host=None, tcp_port=None,
        tcp_error=None, writer=None, viewers=0, bytes=0, buffered=0, last_activity=None, log_path="",
        provisional=False,
    )


class FarmModel:
    """The latest known state of the farm, as the contract's models (valve_console.contract)."""

    def __init__(self) -> None:
        self.loaded = False
        self.health: Health | None = None
        self.gateway: list[NetworkInterface] = []
        self.machines: dict[str, Machine] = {}
        self.pdus: dict[str, Pdu] = {}
        self.consoles: dict[str, Console] = {}
        self.devices: dict[str, SerialDevice] = {}
        self.discovery = DiscoveryStatus()
        self.discovery_at = time.monotonic()  # when ``discovery.current.remaining`` was true
        self.jobs: dict[str, Job] = {}  # job id -> job (GET /api/v1/jobs, job events)
        self.settings: FarmSettings | None = None  # GET /api/v1/settings (the Settings view), settings events
        self.fetched_at = time.monotonic()
        self.power = PowerHistory()  # recent watts per outlet (sparklines) and ON changes (boot marks)
        self.clock: Callable[[], float] = time.time  # the wall clock (tests freeze it)
        self.console_seen: dict[str, float] = {}  # mac -> when its console last printed (wall clock)
        self.recent: deque[FeedItem] = deque(maxlen=FEED_SIZE)  # what happened lately, oldest first

    # ---------------------------------------------------------------- applying
    def apply(self, changes: Changes) -> None:
        snap = changes.snapshot
        if snap is not None:
            changes.old_outlets.update({mac: outlet_of(m) for mac, m in self.machines.items()})
            self.loaded = True
            self.health = snap.health.model_copy(deep=True)
            self.gateway = list(snap.gateway)
            self.machines = dict(snap.machines)
            self.pdus = {name: pdu.model_copy(deep=True) for name, pdu in snap.pdus.items()}
            for name, pdu in self.pdus.items():
                self.power.add_pdu(name, pdu)
            self.consoles = dict(snap.consoles)
            self.devices = dict(snap.devices)
            if snap.discovery is not None:
                self.set_discovery(snap.discovery, snap.fetched_at)
            if snap.jobs is not None:
                self.jobs = {j.id: j for j in snap.jobs if j.id}
            self.fetched_at = snap.fetched_at
        if snap is None:
            self._note_recent(changes)
        for mac, machine in changes.machines.items():
            old = self.machines.get(mac)
            changes.old_outlets.setdefault(mac, outlet_of(old) if old else (None, None))
            self.machines[mac] = machine
        for name, pdu in changes.pdus.items():
            if pdu is None:
                self.pdus.pop(name, None)
                self.power.forget_pdu(name)
            else:
                self.pdus[name] = pdu.model_copy(deep=True)
                self.power.add_pdu(name, self.pdus[name])
        for (name, port), outlet in changes.outlets.items():
            pdu = self.pdus.get(name)
            if pdu is None:
                continue
            for seen in changes.outlet_events.get((name, port), [])[:-1]:  # the readings before the latest
                self.power.add(name, port, Outlet.model_validate(seen.model_dump(exclude={"pdu", "port_id"})))
            pdu.ports[port] = Outlet.model_validate(outlet.model_dump(exclude={"pdu", "port_id"}))
            self.power.add(name, port, pdu.ports[port])
        if changes.health and self.health is not None:
            self.health.services.update(changes.health)
        for mac, info in changes.console_info.items():
            if isinstance(info, ConsoleRemoved):
                self.consoles.pop(mac, None)
            else:
                self.consoles[mac] = info
        if changes.console_text:
            now = self.clock()
            for mac, texts in changes.console_text.items():
                if any(texts):
                    self.console_seen[mac] = now
        for mac in changes.console_text:
            if mac not in self.consoles:
                self.consoles[mac] = placeholder_console(mac)
        for event in changes.discovery:
            self._apply_discovery_event(event)
        self.jobs.update(changes.jobs)
        if changes.settings is not None:
            self.settings = changes.settings

    def _note_recent(self, changes: Changes) -> None:
        """The feed's lines for what this batch changes (before it is applied): machines that registered
        or changed state, PDUs that were lost or came back, outlets switched, jobs that ended."""
        now = self.clock()
        add = self.recent.append
        for mac, machine in changes.machines.items():
            old = self.machines.get(mac)
            name = machine.full_name or mac
            if old is None:
                add(FeedItem(now, f"{name} registered ({machine.state})"))
            elif old.state != machine.state:
                add(FeedItem(now, f"{name} {old.state} -> {machine.state}"))
        for name, pdu in changes.pdus.items():
            before = self.pdus.get(name)
            if pdu is None:
                add(FeedItem(now, f"PDU {name} removed"))
            elif before is None:
                add(FeedItem(now, f"PDU {name} added ({pdu.state})"))
            elif before.state != pdu.state:
                bad = pdu.state == "unreachable"
                add(FeedItem(now, f"PDU {name} {pdu.state}" + (f": {pdu.error}" if bad and pdu.error else ""),
                             "error" if bad else "information"))
        for (name, port), outlet in changes.outlets.items():
            before_outlet = self.outlet(name, port)
            if before_outlet is not None and before_outlet.state != outlet.state:
                machine = self.machine_on(name, port)
                on = f" ({machine.full_name})" if machine is not None else ""
                add(FeedItem(now, f"outlet {name}/{port}{on} {outlet.state}"))
            if outlet.mismatch and (before_outlet is None or before_outlet.mismatch != outlet.mismatch):
                add(FeedItem(now, f"outlet {name}/{port}: {outlet.mismatch}", "error"))
        for job_id, job in changes.jobs.items():
            before_job = self.jobs.get(job_id)
            if job.status in TERMINAL and (before_job is None or before_job.status not in TERMINAL):
                severity = "information" if job.status in ("PASS", "WARN", "COMPLETE") else "warning"
                what = "training job" if job.training else "job"
                add(FeedItem(now, f"{what} {job_id} on {self.job_machine_name(job)}: {job.status}", severity))

    # ---------------------------------------------------------------- discovery
    def set_discovery(self, status: DiscoveryStatus, at: float | None = None) -> None:
        """The discovery status as ``GET /api/v1/machine/discover`` returns it."""
        self.discovery = DiscoveryStatus(current=status.current, queue=list(status.queue))
        self.discovery_at = time.monotonic() if at is None else at

    def _apply_discovery_event(self, event: DiscoveryEvent) -> None:
        """Follow a ``discovery`` event (the app refetches the status after it for the queue)."""
        pdu, port = event.pdu, event.port_id
        current = self.discovery.current
        queue = [q for q in self.discovery.queue if (q.pdu, q.port_id) != (pdu, port)]
        if event.state == "started":
            timeout = float(event.timeout or (current.timeout if current else 0) or 0)
            started = DiscoveryCurrent(pdu=pdu, port_id=port, timeout=timeout, remaining=timeout)
            self.discovery = DiscoveryStatus(current=started, queue=queue)
            self.discovery_at = time.monotonic()
        elif current is not None and (current.pdu, current.port_id) == (pdu, port):
            self.discovery = DiscoveryStatus(current=None, queue=[] if event.state == "cancelled" else queue)

    def discovery_remaining(self) -> float | None:
        """Seconds left for the running discovery, or None when none runs."""
        current = self.discovery.current
        if not current:
            return None
        return max(0.0, float(current.remaining or 0) - (time.monotonic() - self.discovery_at))

    # ---------------------------------------------------------------- queries
    def machine_name(self, mac: str) -> str:
        machine = self.machines.get(mac)
        return (machine.full_name if machine else "") or mac

    def job_machine_name(self, job: Job) -> str:
        return self.machine_name(job.machine) if job.machine else "-"

    def machine_on(self, pdu: str, port: str) -> Machine | None:
        for machine in self.machines.values():
            if outlet_of(machine) == (pdu, port):
                return machine
        return None

    def outlet(self, pdu: str, port: str) -> Outlet | None:
        found = self.pdus.get(pdu)
        return found.ports.get(port) if found else None

    def free_ports(self, pdu: str, keep: str | None = None) -> list[str]:
        """The outlets of ``pdu`` no machine uses and that are not reserved (plus ``keep``)."""
        found = self.pdus.get(pdu)
        ports = found.ports if found else {}
        used = {outlet_of(m)[1] for m in self.machines.values() if outlet_of(m)[0] == pdu}
        result = []
        for port, info in ports.items():
            if port == keep or (port not in used and not info.reserved):
                result.append(port)
        if keep is not None and keep not in result:
            result.append(keep)
        return sorted(result, key=port_sort_key)

    def counts(self) -> dict[str, Any]:
        duts: dict[str, int] = {}
        for machine in self.machines.values():
            state = machine.state or "?"
            duts[state] = duts.get(state, 0) + 1
        outlets = {"ON": 0, "OFF": 0, "other": 0}
        for pdu in self.pdus.values():
            for info in pdu.ports.values():
                state = str(info.state or "").upper()
                outlets[state if state in ("ON", "OFF") else "other"] += 1
        connected = sum(1 for c in self.consoles.values() if c.connected)
        typing = sum(1 for c in self.consoles.values() if c.writer)
        return {
            "duts": duts,
            "machines": len(self.machines),
            "outlets": outlets,
            "pdus": len(self.pdus),
            "consoles": len(self.consoles),
            "consoles_connected": connected,
            "consoles_typing": typing,
            "jobs": sum(1 for j in self.jobs.values() if j.status == "RUNNING"),
            "jobs_queued": sum(1 for j in self.jobs.values() if j.status == "QUEUED"),
        }


def outlet_of(machine: Machine | None) -> tuple[str | None, str | None]:
    if not machine:
        return (None, None)
    port = machine.pdu.port_id
    return (machine.pdu.name, None if port is None else str(port))


def port_sort_key(port: str) -> tuple[int, int | str]:
    return (0, int(port)) if str(port).isdigit() else (1, str(port))
