"""The machine as the API shows it, assembled in one place from the services that know a part of it.

The registry (``registration.py``) holds the stored row; the executor knows whether the machine has jobs;
Sgt. Hartman (``training.py``) its training; the GitLab service its runners; power the farm's default
off delay. :class:`MachineView` reads each through a small Protocol and writes the machine's JSON (the
shape of ``contract.Machine``). It is also the one place a ``machine`` event is published: a service that
changed something a machine shows calls the ``changed(mac, action)`` it was given (the farm routes it
here), and everything in-process that reacts to machines (boot, consoles, training) follows those events
on the bus.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional, Protocol

from .events import EventBus
from .models import Machine
from .registration import MachineService


class JobActivity(Protocol):
    def machine_state(self, mac: str) -> Optional[str]:
        """"QUEUED"/"RUNNING" while the machine has jobs, else None."""


class TrainingView(Protocol):
    def machine_state(self, mac: str) -> Optional[str]:
        """"TRAINING" while the machine trains, else None."""

    def to_json(self, mac: str) -> Optional[dict[str, Any]]:
        """The machine's training (None: never trained)."""


class RunnerView(Protocol):
    def runner_info(self, mac: str) -> list[dict[str, Any]]:
        """The machine's GitLab runners."""


class PowerHealth(Protocol):
    def power_flag(self, mac: str) -> Optional[dict[str, Any]]:
        """What the outlet's power draw says of the machine ({kind, reason, since}), or None."""


class MachineView:
    def __init__(
        self,
        registry: MachineService,
        bus: EventBus,
        *,
        default_off_delay: float,
        jobs: JobActivity,
        training: TrainingView,
        runners: RunnerView,
        power: Optional[PowerHealth] = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        self.clock = clock
        # mac -> (state, since when): the first time this backend saw the machine in its state (a state
        # from before the backend started counts from when it was first shown)
        self._since: dict[str, tuple[str, float]] = {}
        self.bus = bus
        self.default_off_delay = default_off_delay
        self.jobs = jobs
        self.training = training
        self.runners = runners
        self.power = power

    def activity(self, mac: str) -> Optional[str]:
        """What keeps a machine busy (its jobs, else its training), or None."""
        return self.jobs.machine_state(mac) or self.training.machine_state(mac)

    def state(self, m: Machine) -> str:
        if m.is_retired:
            return "RETIRED"
        if not m.pdu or m.pdu_port_id is None:
            return "WAIT_FOR_CONFIG"
        running = self.jobs.machine_state(m.mac_address)
        if running is not None:
            return running
        if not m.ready_for_service and self.training.machine_state(m.mac_address) is not None:
            return "TRAINING"
        return "IDLE" if m.ready_for_service else "NOT_READY"

    def state_since(self, mac: str, state: str) -> float:
        """Since when the machine has been in ``state`` (Unix time), as far as this backend saw."""
        seen = self._since.get(mac)
        if seen is None or seen[0] != state:
            seen = self._since[mac] = (state, self.clock())
        return seen[1]

    def json(self, m: Machine) -> dict[str, Any]:
        delay = m.pdu_off_delay if m.pdu_off_delay is not None else self.default_off_delay
        return {
            "mac_address": m.mac_address,
            "base_name": m.base_name,
            "full_name": self.registry.full_name(m),
            # valve-infra's "tags" are what the DUT registered: `machine_registration check` compares them
            # with what it detects. Job matching uses all_tags (those and the operator's manual tags).
            "tags": list(m.tags),
            "registered_tags": list(m.tags),
            "manual_tags": list(m.manual_tags),
            "all_tags": list(dict.fromkeys([*m.tags, *m.manual_tags])),
            "ip_address": m.ip_address,
            "local_tty_device": m.local_tty_device,
            "pdu": {"name": m.pdu, "port_id": m.pdu_port_id},
            "has_pdu_assigned": bool(m.pdu and m.pdu_port_id is not None),
            "pdu_off_delay": delay,
            "pdu_off_delay_is_default": m.pdu_off_delay is None,
            "ready_for_service": m.ready_for_service,
            "is_retired": m.is_retired,
            "available": m.ready_for_service and not m.is_retired,
            "comment": m.comment,
            "state": (state := self.state(m)),
            "state_since": self.state_since(m.mac_address, state),
            "training": self.training.to_json(m.mac_address),
            "training_loops": m.training_loops,
            "training_qualify": m.training_qualify,
            "gitlab_exposed": m.gitlab_exposed,
            "runners": self.runners.runner_info(m.mac_address),
            # A registration held for the operator: {changes, source, reasons, at, attempts}, or null.
            "pending_registration": dict(m.pending_registration) if m.pending_registration else None,
            "first_seen": m.first_seen,
            "last_seen": m.last_seen,
            "power_flag": self.power.power_flag(m.mac_address) if self.power is not None else None,
        }

    def machine(self, mac: str) -> dict[str, Any]:
        """One machine's JSON (``NotFound`` in words for an unknown MAC)."""
        return self.json(self.registry.get(mac))

    def machines(self) -> dict[str, dict[str, Any]]:
        return {mac: self.json(m) for mac, m in sorted(self.registry.machines.items())}

    def publish(self, mac: str, action: str) -> None:
        """The ``machine`` event of a change: the machine as it is now (None once removed)."""
        m = self.registry.machines.get(mac)
        if m is None and action != "removed":
            return
        if m is None:
            self._since.pop(mac, None)
        self.bus.publish("machine", {"action": action, "mac": mac, "machine": None if m is None else self.json(m)})
