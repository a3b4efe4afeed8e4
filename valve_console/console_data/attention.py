"""What needs the operator, from the farm model: the Overview's attention list and the console's notifications.

Each item says what is wrong in words, how bad (``error`` or ``warning``) and where to go to deal with it
(a console mode and the machine, outlet, PDU, job or runner to select there). Items have stable keys, so
the console notifies an item once, when it appears, and it stays listed until what caused it is resolved.
Plain data: no Textual.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

from ..contract import Job, Machine
from .model import FarmModel, port_sort_key

SILENT_AFTER = 300.0
"""A console that printed nothing for this long while its machine runs a job is "silent" (seconds)."""

# The kinds, in the order the list shows them (most urgent first)
PDU_UNREACHABLE = "pdu_unreachable"
READBACK_MISMATCH = "readback_mismatch"
DISK_LOW = "disk_low"
TRAINING_FAILING = "training_failing"
UNFIT = "unfit"
JOB_INFRA = "job_infra"
CONSOLE_SILENT = "console_silent"
POWER = "power"
RUNNER_REFUSED = "runner_refused"
KINDS = (PDU_UNREACHABLE, READBACK_MISMATCH, DISK_LOW, TRAINING_FAILING, UNFIT, JOB_INFRA, CONSOLE_SILENT,
         POWER, RUNNER_REFUSED)
NOTIFIED = frozenset({PDU_UNREACHABLE, READBACK_MISMATCH, DISK_LOW, TRAINING_FAILING, UNFIT, JOB_INFRA,
                      RUNNER_REFUSED})
"""The kinds that raise a notification when they appear (the others are only listed)."""

# A short word for each kind, at the start of its line (the Linux console has no icons)
LABELS = {
    PDU_UNREACHABLE: "PDU", READBACK_MISMATCH: "OUTLET", DISK_LOW: "DISK", TRAINING_FAILING: "TRAINING",
    UNFIT: "UNFIT", JOB_INFRA: "JOB", CONSOLE_SILENT: "SILENT", POWER: "POWER", RUNNER_REFUSED: "RUNNER",
}


@dataclass(frozen=True)
class Target:
    """Where an item takes the operator: a console mode and what to select there."""

    mode: str
    mac: str | None = None
    pdu: str | None = None
    port: str | None = None
    job: str | None = None
    instance: str | None = None


@dataclass(frozen=True)
class Attention:
    key: str  # stable while the cause lasts: "<kind>:<what>"
    kind: str
    severity: Literal["error", "warning"]
    title: str  # what, in a few words ("PDU bench unreachable")
    reason: str  # why, in words
    target: Target
    mac: str | None = None  # the machine it is about, if any (its tile carries a mark)

    @property
    def label(self) -> str:
        return LABELS.get(self.kind, self.kind.upper())

    @property
    def message(self) -> str:
        return f"{self.title}: {self.reason}" if self.reason else self.title


def infra_failure(job: Job) -> bool:
    """A job that failed for the farm's sake, not its own: SETUP_FAIL, or INCOMPLETE not cancelled."""
    return job.status == "SETUP_FAIL" or (job.status == "INCOMPLETE" and job.state != "cancelled")


def last_jobs(model: FarmModel, user_only: bool = True) -> dict[str, Job]:
    """Each machine's last ended job (by end time); Sgt. Hartman's jobs left out when ``user_only``."""
    last: dict[str, Job] = {}
    for job in model.jobs.values():
        if job.ended_at is None or not job.machine or (user_only and job.training):
            continue
        seen = last.get(job.machine)
        if seen is None or (seen.ended_at or 0) < job.ended_at:
            last[job.machine] = job
    return last


def console_silence(model: FarmModel, mac: str, now: float) -> float | None:
    """Seconds since the machine's console last printed (None: it never did, as far as the console knows)."""
    console = model.consoles.get(mac)
    last = max((console.last_activity or 0.0) if console else 0.0, model.console_seen.get(mac, 0.0))
    return None if last <= 0 else max(0.0, now - last)


def ago(seconds: float) -> str:
    """A duration in a few characters: 45s, 12m, 3h05, 2d04."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}"


def _machine_items(model: FarmModel, machine: Machine, last: Job | None, now: float,
                   silent_after: float) -> list[Attention]:
    mac, name = machine.mac_address, machine.full_name or machine.mac_address
    duts = Target("duts", mac=mac)
    items = []
    training = machine.training
    if training is not None and not machine.is_retired and not machine.ready_for_service:
        reason = (training.reason or "").strip()
        if reason.startswith("unfit for service") and machine.state == "TRAINING":
            said = reason.removeprefix("unfit for service").strip(" ()") or "a job"
            items.append(Attention(f"{UNFIT}:{mac}", UNFIT, "error", f"{name} unfit for service",
                                   f"said {said}; back in training", duts, mac))
        if training.state == "cooldown":
            wait = ""
            if training.next_attempt_at is not None:
                wait = f", next try in {ago(training.next_attempt_at - now)}"
            failure = training.failures[-1].why if training.failures else None
            why = f"attempt {training.attempt} failed" + (f" ({failure})" if failure else "") + wait
            items.append(Attention(f"{TRAINING_FAILING}:{mac}", TRAINING_FAILING, "error",
                                   f"{name} failing training", f"backing off: {why}", duts, mac))
        elif training.state == "looping" and training.failures:
            # failing loops that already make qualifying impossible in this run
            fails = len(training.failures)
            if training.loops - fails < training.qualify:
                why = training.failures[-1].why or training.failures[-1].status or "failed"
                items.append(Attention(f"{TRAINING_FAILING}:{mac}", TRAINING_FAILING, "error",
                                       f"{name} failing training",
                                       f"{fails} of {training.loops} loops failed (last: {why})", duts, mac))
    if last is not None and infra_failure(last):
        items.append(Attention(f"{JOB_INFRA}:{last.id}", JOB_INFRA, "warning", f"job on {name} {last.status}",
                               f"{last.id}: {last.result or last.state}", Target("jobs", mac=mac, job=last.id),
                               mac))
    if machine.state == "RUNNING":
        silence = console_silence(model, mac, now)
        if silence is not None and silence >= silent_after:
            items.append(Attention(f"{CONSOLE_SILENT}:{mac}", CONSOLE_SILENT, "warning", f"{name} console silent",
                                   f"nothing printed for {ago(silence)} while a job runs",
                                   Target("consoles", mac=mac), mac))
    flag = machine.power_flag
    if flag is not None:
        items.append(Attention(f"{POWER}:{mac}:{flag.kind}", POWER, "warning", f"{name} power",
                               flag.reason, duts, mac))
    for runner in machine.runners:
        if runner.error:
            items.append(Attention(f"{RUNNER_REFUSED}:{runner.instance}:{mac}", RUNNER_REFUSED, "error",
                                   f"{name} runner on {runner.instance}", runner.error,
                                   Target("gitlab", mac=mac, instance=runner.instance), mac))
    return items


def attention(model: FarmModel, now: float | None = None, silent_after: float = SILENT_AFTER) -> list[Attention]:
    """Everything that needs the operator now, most urgent kind first (then by name)."""
    now = time.time() if now is None else now
    items: list[Attention] = []
    for name, pdu in sorted(model.pdus.items()):
        if pdu.state == "unreachable":
            items.append(Attention(f"{PDU_UNREACHABLE}:{name}", PDU_UNREACHABLE, "error", f"PDU {name} unreachable",
                                   pdu.error or "it does not answer", Target("pdus", pdu=name,
                                   port=min(pdu.ports, key=port_sort_key, default=None))))
        for port in sorted(pdu.ports, key=port_sort_key):
            outlet = pdu.ports[port]
            if outlet.mismatch:
                machine = model.machine_on(name, port)
                on = f" ({machine.full_name})" if machine is not None else ""
                items.append(Attention(f"{READBACK_MISMATCH}:{name}/{port}", READBACK_MISMATCH, "error",
                                       f"outlet {name}/{port}{on}", outlet.mismatch,
                                       Target("pdus", pdu=name, port=port),
                                       machine.mac_address if machine is not None else None))
    storage = model.health.services.get("storage") if model.health else None
    if storage is not None and storage.state in ("degraded", "failed"):
        items.append(Attention(f"{DISK_LOW}:storage", DISK_LOW, "error", "data volume low",
                               storage.reason or storage.state, Target("journal")))
    last = last_jobs(model)
    for machine in model.machines.values():
        items.extend(_machine_items(model, machine, last.get(machine.mac_address), now, silent_after))
    order = {kind: i for i, kind in enumerate(KINDS)}
    items.sort(key=lambda item: (order.get(item.kind, len(order)), item.title))
    return items
