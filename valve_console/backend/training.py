"""Sgt. Hartman: pre-service training of new machines (valve-infra reference §3.2).

A machine with a PDU port that is neither ready for service nor retired trains: one registration job
(built-in ``register``), then N boot-loop jobs (built-in ``bootloop``), run by the executor on that
machine's queue like any job. Every step's result (job id, status, why) is kept in the machine's
``Training`` row. When at least ``qualify`` loops passed the machine becomes ready for service (through
:class:`MachineService`, so the ``machine`` event and everything listening to it fire). Otherwise it
stays not ready, its failures are listed, and it trains again after a back-off that doubles with each
failed training (``training_retry_delay`` × 2^(failures-1), at most ``training_retry_max``) instead of
valve-infra's endless loop. A training stops early once qualifying has become impossible.

The operator may start (also: retrain a ready machine, or retry now during a back-off), stop (the
machine stays not ready and does not train until started again) or skip (ready for service without
loops; logged) a training. Ticking "ready for service" in the machine form is a skip. A user job for a
machine in training is refused (409, "not ready for service (in training ...)"), like valve-infra.
A job whose console matches ``machine_unfit_for_service`` takes its machine out of service and back here.

It watches the ``machine`` events on the bus (a new, changed or removed machine: train, halt or skip),
within the change that publishes them;
what it shows of a machine reaches the machine view through ``to_json``/``machine_state``, and a change
of it is told through ``changed(mac, action)``. Training ``state`` values: registering, looping,
cooldown, qualified, stopped, skipped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Callable, Optional

from sqlmodel import select

from .errors import BadRequest, Conflict
from .jobs import JobStatus, MachineInfo, builtin_job
from .models import Machine, Training

if TYPE_CHECKING:
    from ..config import Settings
    from .events import Event, EventBus
    from .jobs.executor import JobService
    from .registration import MachineService
    from .store import Store

log = logging.getLogger(__name__)

ACTIVE = ("registering", "looping", "cooldown")
RESULTS_SHOWN = 50  # results of the current run in the machine JSON (the row keeps them all)


class TrainingService:
    def __init__(
        self,
        store: "Store",
        bus: "EventBus",
        machines: "MachineService",
        jobs: "JobService",
        settings: "Settings",
        boot_urls: Callable[[], tuple[str, str, str]],
        changed: Callable[[str, str], None] = lambda mac, action: None,
    ) -> None:
        self.store = store
        self.bus = bus
        self.machines = machines
        self.jobs = jobs
        self.changed = changed
        self.settings = settings
        self.boot_urls = boot_urls  # (default kernel URL, initramfs URL, API host:port as DUTs reach it)
        self.enabled = settings.training
        self.base_delay = settings.training_retry_delay
        self.max_delay = max(settings.training_retry_max, 0.0)
        self.rows: dict[str, Training] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.current_job: dict[str, str] = {}  # mac -> the training job it waits for
        self._reason: dict[str, str] = {}  # mac -> why its next training starts (set before ready goes False)
        self._stopping = False
        self._unwatch: Callable[[], None] = lambda: None
        self.state = "starting"
        self.reason: Optional[str] = None

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        rows = await self.store.run(lambda s: list(s.exec(select(Training)).all()))
        self.rows = {row.mac_address: row for row in rows}
        self._unwatch = self.bus.watch(["machine"], self._on_machine)
        for mac in list(self.machines.machines):
            self._reconcile(mac)
        self.state = "ok"

    async def stop(self) -> None:
        self._stopping = True
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.tasks.clear()
        self._unwatch()

    # ---------------------------------------------------------------- queries
    def _eligible(self, m: Machine) -> bool:
        return self.enabled and bool(m.pdu) and m.pdu_port_id is not None and not m.is_retired

    def machine_state(self, mac: str) -> Optional[str]:
        row = self.rows.get(mac)
        machine = self.machines.machines.get(mac)
        if row is None or machine is None or row.state not in ACTIVE or not self._eligible(machine):
            return None
        return "TRAINING"

    def note(self, mac: str) -> Optional[str]:
        """Why a not-ready machine takes no user job, in words (None: no training to speak of)."""
        row = self.rows.get(mac)
        if row is None:
            return None
        if row.state == "registering":
            return "in training: registration"
        if row.state == "looping":
            return f"in training: boot loop {row.loop}/{row.loops}"
        if row.state == "cooldown":
            return f"training failed ({row.passes}/{row.loops} passed, {row.qualify} needed), retried {_at(row)}"
        if row.state == "stopped":
            return "training stopped by the operator: start or skip it"
        return None

    def to_json(self, mac: str) -> Optional[dict[str, Any]]:
        row = self.rows.get(mac)
        if row is None:
            return None
        loops = [r for r in row.results if r.get("loop", 0) > 0 and "power_flag" not in r]
        statuses: dict[str, int] = {}
        for r in loops:
            statuses[str(r.get("status"))] = statuses.get(str(r.get("status")), 0) + 1
        return {
            # valve-infra's keys (its dashboard shows "TRAINING current_loop_count/boot_loop_counts")
            "is_active": row.state in ("registering", "looping"),
            "is_registered": row.loop > 0,
            "boot_loop_counts": row.loops,
            "qualifying_rate": row.qualify,
            "current_loop_count": row.loop,
            "statuses": statuses,
            # ours
            "state": row.state,
            "loop": row.loop,
            "loops": row.loops,
            "qualify": row.qualify,
            "passes": row.passes,
            "results": list(row.results[-RESULTS_SHOWN:]),
            "failures": [r for r in row.results if r.get("status") != JobStatus.PASS.name],
            "attempt": row.attempt,
            "next_attempt_at": row.next_attempt_at,
            "reason": row.reason,
            "job": self.current_job.get(mac),
            "started_at": row.started_at,
            "updated_at": row.updated_at,
        }

    # ---------------------------------------------------------------- reacting to machine changes
    def _on_machine(self, event: "Event") -> None:
        """A ``machine`` event (bus watcher: within the change): make its machine's training follow."""
        mac = event.data.get("mac")
        if mac and event.data.get("action") != "training" and not self._stopping:  # not our own notices
            self._reconcile(str(mac))

    def _reconcile(self, mac: str) -> None:
        """Make the training of ``mac`` what the machine asks for now (idempotent)."""
        m = self.machines.machines.get(mac)
        row = self.rows.get(mac)
        if m is None:  # removed
            self._halt(mac)
            self.rows.pop(mac, None)
            return
        if m.ready_for_service:
            if row is not None and row.state in (*ACTIVE, "stopped"):
                # the operator ticked "ready for service" (machine form or PATCH): that is a skip
                self._halt(mac)
                log.warning("training of %s skipped: ready for service was set by the operator", mac)
                self._set(row, state="skipped", next_attempt_at=None)
                self._spawn_save(row)
            return
        if not self._eligible(m):
            self._halt(mac)  # retired, no outlet or training off: an active training resumes when eligible
            return
        if row is None or row.state in ("qualified", "skipped"):
            if row is None:
                why = self._reason.pop(mac, "a new machine")
            else:
                why = self._reason.pop(mac, "taken out of service")
            row = self._new_run(mac, why, attempt=0)
            log.info("machine %s starts training (%s)", mac, why)
            self._spawn_save(row)
        if row.state == "stopped":
            return
        self._ensure_task(mac)

    def _new_run(self, mac: str, reason: str, attempt: int) -> Training:
        m = self.machines.machines[mac]
        loops, qualify = self.machines.training_counts(m)
        row = Training(mac_address=mac, state="registering", loops=loops, qualify=qualify, attempt=attempt,
                       reason=reason)
        self.rows[mac] = row
        return row

    def _ensure_task(self, mac: str) -> None:
        task = self.tasks.get(mac)
        if task is None or task.done():
            self.tasks[mac] = asyncio.create_task(self._run(mac), name=f"training-{mac}")

    def _halt(self, mac: str) -> None:
        """Stop a machine's training task and cancel the training job it runs."""
        task = self.tasks.pop(mac, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        job_id = self.current_job.pop(mac, None)
        if job_id is not None:
            job = self.jobs.jobs.get(job_id)
            if job is not None and not job.done.is_set():
                asyncio.create_task(self._cancel_job(job_id))

    def _cancel_submitted(self, submitted: "asyncio.Future[Any]") -> None:
        if not submitted.cancelled() and submitted.exception() is None:
            asyncio.create_task(self._cancel_job(submitted.result().id))

    async def _cancel_job(self, job_id: str) -> None:
        try:
            await self.jobs.cancel(job_id)
        except Exception as exc:  # noqa: BLE001 - it may have ended meanwhile
            log.debug("cancelling training job %s: %s", job_id, exc)

    # ---------------------------------------------------------------- the training itself
    async def _run(self, mac: str) -> None:
        try:
            while not self._stopping:
                row = self.rows[mac]
                if row.state == "cooldown":
                    wait = (row.next_attempt_at or 0) - time.time()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    row = self._new_run(mac, f"retry {row.attempt} after a failed training", attempt=row.attempt)
                    log.info("machine %s trains again (attempt %d)", mac, row.attempt + 1)
                elif row.state != "registering" or row.results:
                    # resumed (gateway restart, re-activated machine): start the run over
                    row = self._new_run(mac, row.reason or "resumed", attempt=row.attempt)
                await self._save(row)
                if await self._train_once(mac, row):
                    return
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - logged; the machine stays not ready
            log.exception("training of %s crashed", mac)
        finally:
            if self.tasks.get(mac) is asyncio.current_task():
                del self.tasks[mac]

    async def _train_once(self, mac: str, row: Training) -> bool:
        """One training run; True when the machine qualified (the task ends), False after a failure."""
        status, job_id, why = await self._step(mac, "register")
        self._record(row, 0, job_id, status, why)
        if status != JobStatus.PASS.name:
            await self._failed(mac, row, f"the registration job ended {status}: {why}")
            return False
        self._set(row, state="looping")
        for loop in range(1, row.loops + 1):
            self._set(row, loop=loop)
            await self._save(row)
            log.info("machine %s: boot loop %d/%d (%d passed so far)", mac, loop, row.loops, row.passes)
            status, job_id, why = await self._step(mac, "bootloop")
            self._record(row, loop, job_id, status, why)
            if status == JobStatus.PASS.name:
                self._set(row, passes=row.passes + 1)
            failed = loop - row.passes
            if failed > row.loops - row.qualify:
                await self._failed(mac, row, f"{failed} boot loop(s) failed, at most {row.loops - row.qualify} may")
                return False
        if row.passes >= row.qualify:
            self._set(row, state="qualified", attempt=0, next_attempt_at=None)
            await self._save(row)
            log.info("machine %s qualified: %d/%d boot loops passed", mac, row.passes, row.loops)
            await self.machines.set_ready(mac, True, f"trained: {row.passes}/{row.loops} boot loops passed")
            return True
        await self._failed(mac, row, f"{row.passes}/{row.loops} boot loops passed, {row.qualify} needed")
        return False

    async def _step(self, mac: str, kind: str) -> tuple[str, Optional[str], str]:
        """Run one training job to its end: (status name, job id, why)."""
        machine = self.machines.machines.get(mac)
        if machine is None:
            return JobStatus.SETUP_FAIL.name, None, "the machine is gone"
        kernel, initrd, api_host = self.boot_urls()
        host = api_host.rsplit(":", 1)[0].strip("[]") if ":" in api_host else api_host
        try:
            job = builtin_job(
                kind,
                MachineInfo.from_machine(machine, self.machines.full_name(machine)),
                default_kernel_url=kernel,
                default_initramfs_url=initrd,
                variables={"mars_host": api_host, "ntp_peer": host},
            )
            submitted = asyncio.ensure_future(self.jobs.submit_training(mac, kind, job.rendered))
            try:
                running = await asyncio.shield(submitted)
            except asyncio.CancelledError:  # stopped while queueing: the queued job goes too
                submitted.add_done_callback(self._cancel_submitted)
                raise
        except (ValueError, BadRequest, Conflict) as exc:
            return JobStatus.SETUP_FAIL.name, None, f"cannot queue the {kind} job: {exc}"
        self.current_job[mac] = running.id
        try:
            await running.done.wait()
        finally:
            if self.current_job.get(mac) == running.id:
                del self.current_job[mac]
        return running.row.status, running.id, running.row.result

    def power_flagged(self, mac: str, flag: dict[str, Any]) -> None:
        """A power flag raised while the machine trains goes into its results (not counted as a loop)."""
        row = self.rows.get(mac)
        if row is None or self.machine_state(mac) is None:
            return
        entry = {"loop": row.loop, "job": self.current_job.get(mac), "status": "POWER", "why": flag["reason"],
                 "at": flag["since"], "power_flag": flag["kind"]}
        self._set(row, results=[*row.results, entry])
        self._spawn_save(row)

    def _record(self, row: Training, loop: int, job_id: Optional[str], status: str, why: str) -> None:
        entry = {"loop": loop, "job": job_id, "status": status, "why": why, "at": time.time()}
        self._set(row, results=[*row.results, entry])

    async def _failed(self, mac: str, row: Training, why: str) -> None:
        attempt = row.attempt + 1
        delay = min(self.base_delay * 2 ** min(attempt - 1, 40), self.max_delay)  # no float overflow, ever
        self._set(row, state="cooldown", attempt=attempt, next_attempt_at=time.time() + delay)
        await self._save(row)
        log.warning("machine %s did not qualify (%s); training again in %g s (failed trainings: %d)",
                    mac, why, delay, attempt)

    # ---------------------------------------------------------------- operator actions
    def _machine(self, mac: str) -> Machine:
        return self.machines.get(mac)

    async def start_training(self, mac: str) -> Machine:
        m = self._machine(mac)
        mac = m.mac_address
        if not self.enabled:
            raise Conflict("training is turned off on this farm (setting training=false)")
        if m.is_retired:
            raise Conflict(f"machine {mac} is retired: activate it first")
        if not m.pdu or m.pdu_port_id is None:
            raise Conflict(f"machine {mac} has no PDU port (WAIT_FOR_CONFIG): give it an outlet first")
        row = self.rows.get(mac)
        if row is not None and row.state in ("registering", "looping") and not m.ready_for_service:
            raise Conflict(f"machine {mac} is already training ({self.note(mac)})")
        self._halt(mac)
        log.info("training of %s started by the operator", mac)
        if m.ready_for_service:
            if row is not None and row.state not in ("qualified", "skipped"):
                self._set(row, state="skipped")
            self._reason[mac] = "started by the operator"
            try:  # out of service first: _reconcile then starts the new run and its task
                await self.machines.set_ready(mac, False, "training started by the operator")
            finally:
                self._reason.pop(mac, None)
        else:
            row = self._new_run(mac, "started by the operator", attempt=0)
            await self._save(row)
            self._ensure_task(mac)
        return self.machines.machines[mac]

    async def stop_training(self, mac: str) -> Machine:
        m = self._machine(mac)
        mac = m.mac_address
        row = self.rows.get(mac)
        if row is None or row.state not in ACTIVE or m.ready_for_service:
            state = row.state if row is not None else "never trained"
            raise Conflict(f"machine {mac} is not training ({state})")
        self._halt(mac)
        self._set(row, state="stopped", next_attempt_at=None)
        await self._save(row)
        log.warning("training of %s stopped by the operator: it stays not ready for service", mac)
        return self.machines.machines[mac]

    async def skip_training(self, mac: str) -> Machine:
        m = self._machine(mac)
        mac = m.mac_address
        if m.is_retired:
            raise Conflict(f"machine {mac} is retired: activate it first")
        if m.ready_for_service:
            raise Conflict(f"machine {mac} is already ready for service")
        self._halt(mac)
        row = self.rows.get(mac) or Training(mac_address=mac)
        self.rows[mac] = row
        self._set(row, state="skipped", next_attempt_at=None)
        await self._save(row)
        log.warning("training of %s skipped by the operator: ready for service without boot loops", mac)
        return await self.machines.set_ready(mac, True, "training skipped by the operator")

    async def unfit(self, mac: str, job_id: str) -> None:
        """A job found the machine unfit for service: out of service, and back to training."""
        m = self.machines.machines.get(mac)
        if m is None:
            return
        why = f"unfit for service (job {job_id})"
        if not m.ready_for_service:
            log.warning("machine %s: %s, but it was not in service", mac, why)
            return
        self._reason[mac] = why
        row = self.rows.get(mac)
        if row is not None and row.state not in ("qualified", "skipped"):
            self._set(row, state="skipped")  # so that _reconcile starts a new run
        try:
            await self.machines.set_ready(mac, False, why)
        finally:
            self._reason.pop(mac, None)

    # ---------------------------------------------------------------- storage
    def _set(self, row: Training, **values: Any) -> None:
        for key, value in values.items():
            setattr(row, key, value)
        row.updated_at = time.time()

    def _spawn_save(self, row: Training) -> None:
        asyncio.create_task(self._save(row))

    async def _save(self, row: Training) -> None:
        try:
            await self.store.upsert(Training, row.model_dump())
        except Exception:  # noqa: BLE001 - in memory it goes on; the next save retries
            log.exception("cannot store the training of %s", row.mac_address)
        if row.mac_address in self.machines.machines:
            self.changed(row.mac_address, "training")  # its own action: _follow does not react to it


def _at(row: Training) -> str:
    if row.next_attempt_at is None:
        return "later"
    left = row.next_attempt_at - time.time()
    return "now" if left <= 0 else f"in {left:.0f} s"
