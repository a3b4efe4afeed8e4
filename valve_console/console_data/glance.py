"""The farm at a glance, as plain data: what each DUT's tile says, and jobs per hour and pass rate.

The Overview's widgets draw these; no Textual here.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..contract import Job, Machine, Training
from .model import FarmModel, outlet_of
from .power import outlet_watts

PASSED = frozenset({"PASS", "WARN", "COMPLETE"})


@dataclass(frozen=True)
class Tile:
    """One DUT's tile: every field already in words or numbers (the widget only lays them out)."""

    mac: str
    name: str
    state: str
    since: float | None  # when it entered ``state`` (wall clock)
    doing: str  # "job <id>", its training loop, or "" (nothing to say)
    last: str | None  # its last job's status (PASS, FAIL...), None: none yet
    watts: float | None  # its outlet's latest reading (None: not metered)
    outlet: str  # "vpdu1/3" or "no outlet"
    ip: str
    flagged: bool  # it is in the attention list


def training_words(training: Training | None) -> str:
    """A machine's training in a few characters: ``train 3/20``, ``register``, ``backoff 2``..."""
    if training is None:
        return ""
    state = training.state
    if state == "looping":
        return f"train {training.loop}/{training.loops}"
    if state == "registering":
        return "train: register"
    if state == "cooldown":
        return f"backoff #{training.attempt}"
    return ""


def running_jobs(model: FarmModel) -> dict[str, Job]:
    """The job each machine runs now (user jobs and Sgt. Hartman's)."""
    return {job.machine: job for job in model.jobs.values() if job.status == "RUNNING" and job.machine}


def tile_of(model: FarmModel, machine: Machine, running: Job | None, last: Job | None, flagged: bool) -> Tile:
    pdu, port = outlet_of(machine)
    watts = None
    if pdu is not None and port is not None:
        outlet = model.outlet(pdu, port)
        watts = outlet_watts(outlet) if outlet is not None else None
    doing = ""
    if machine.state == "TRAINING":
        doing = training_words(machine.training)
    elif running is not None and not running.training:
        doing = f"job {running.id}"
    elif machine.state == "QUEUED":
        queued = sum(1 for j in model.jobs.values() if j.machine == machine.mac_address and j.status == "QUEUED")
        doing = f"{queued} queued"
    return Tile(
        mac=machine.mac_address, name=machine.full_name or machine.mac_address, state=machine.state or "?",
        since=machine.state_since, doing=doing, last=last.status if last is not None else None, watts=watts,
        outlet=f"{pdu}/{port}" if pdu is not None and port is not None else "no outlet",
        ip=machine.ip_address or "-", flagged=flagged,
    )


def job_rates(model: FarmModel, now: float, hours: int = 12) -> tuple[list[float], list[float | None]]:
    """Over the last ``hours`` hours, oldest first: user jobs ended per hour, and the share of them that
    passed (None for an hour with none)."""
    ended = [0.0] * hours
    passed = [0] * hours
    start = now - hours * 3600.0
    for job in model.jobs.values():
        if job.ended_at is None or job.training or job.ended_at < start or job.ended_at > now:
            continue
        slot = min(hours - 1, int((job.ended_at - start) // 3600))
        ended[slot] += 1
        if job.status in PASSED:
            passed[slot] += 1
    rates = [passed[i] / ended[i] if ended[i] else None for i in range(hours)]
    return ended, rates
