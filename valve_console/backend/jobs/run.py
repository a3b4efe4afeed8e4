"""JobRun: one job's run on one machine in explicit phases (prepare, take the machine, the boot loop, teardown,
release, finish), on the JobService's power, consoles and boot config."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Optional

from ...drivers.pdu.base import PortState
from ..boot.cache import BootCacheError
from ..errors import FarmError
from .errors import JobConsoleState, JobError, JobStatus
from .schema import Target
from .templating import MachineInfo

if TYPE_CHECKING:
    from .executor import JobService, RunningJob
    from .timeouts import Timeout


POLL = 0.1  # seconds: the shortest wait of the boot loop (it never wakes faster than 10 Hz when idle)
IDLE_WAKE = 1.0  # seconds: the longest wait without console bytes, timeout or cancel


class JobRun:
    """One job's run on one machine, in explicit phases (valve-infra's executor session):

    ``prepare`` (mark it running, check the machine may run it, render and parse the job), ``take_machine``
    (lock the outlet, follow the console), then ``boot_loop`` (power off, then per boot: ``deploy`` the boot
    config, power on, ``watch`` the console until the session ends, a reboot is asked for or a timeout
    expires, power off, ``judge`` the boot: retry or abort), ``teardown`` (drain the console after the
    session ended), ``release`` (always: power off, unlock) and ``finish`` (the status and why).
    A phase that ends the job early (setup failure) finishes it and returns False.
    """

    def __init__(self, service: "JobService", job: RunningJob, mac: str) -> None:
        self.service = service
        self.job = job
        self.mac = mac
        self.training = job.id in service.training_jobs
        self.machine: Any = None
        self.parsed: Any = None  # the parsed Job
        self.pdu = self.port = ""
        self.sub: Any = None
        self.timeouts: Any = None
        self.jc: Any = None  # the JobConsole
        self.boot = 0
        # how the run ended (none of them: as the job console says)
        self.cancelled = False
        self.aborted: Optional[str] = None
        self.setup_fail: Optional[str] = None

    def _log(self, msg: str, severity: int = 1) -> None:
        self.service._log(self.job, msg, severity)

    async def _power(self, state: PortState) -> None:
        await self.service._set_power(self.job, self.pdu, self.port, state)

    async def _setup_failed(self, message: str, why: str) -> bool:
        self._log(f"ERROR: {message}", severity=3)
        await self.service._finish(self.job, JobStatus.SETUP_FAIL, "done", why)
        return False

    async def run(self) -> None:
        if not await self.prepare() or not await self.take_machine():
            return
        try:
            await self.boot_loop()
            await self.teardown()
        finally:
            await self.release()
        await self.finish()

    # ------------------------------------------------------------------------------------------ phases
    async def prepare(self) -> bool:
        """Mark the job running, check the machine may run it, render and parse it."""
        service, job, mac, row = self.service, self.job, self.mac, self.job.row
        self.machine = machine = service.machines.machines.get(mac)
        row.status, row.state, row.started_at = "RUNNING", "running", time.time()
        job.t0 = time.monotonic()
        service._queue_changed(mac)
        service._machine_event(mac)
        await service._save(job)
        service._job_event(job)
        if machine is None or service._eligible(mac, self.training) is not None:
            why = "the machine is gone" if machine is None else service._eligible(mac, self.training)
            return await self._setup_failed(f"cannot run the job: {why}", str(why))
        try:
            target = Target.model_validate(row.target) if row.target else None
            self.parsed = await service.parser.parse(
                row.job_text,
                MachineInfo.from_machine(machine, service.machines.full_name(machine)),
                target=target,
                variables=service.share_variables(job.id, mac),
                defaults=service.template_defaults(),
                strict=self.training,  # Sgt. Hartman's own templates define every variable they use
            )
        except (JobError, ValueError) as exc:
            return await self._setup_failed(f"invalid job: {exc}", str(exc))
        except FarmError as exc:  # no parser (503): the job could not be set up
            return await self._setup_failed(exc.message, exc.message)
        if self.parsed.undefined_names:
            self._log(
                "WARNING: the job template uses undefined variables, rendered empty as valve-infra's Jinja2 "
                f"did: {', '.join(self.parsed.undefined_names)}",
                severity=2,
            )
        job.teardown = min(self.parsed.timeouts.infra_teardown.duration.total_seconds(), 86400.0)
        return True

    async def take_machine(self) -> bool:
        """Lock the machine's outlet for the job and follow its console."""
        service, job, mac = self.service, self.job, self.mac
        self.pdu, self.port = str(self.machine.pdu), str(self.machine.pdu_port_id)
        try:
            service.power.lock(self.pdu, self.port, job.id)
        except FarmError as exc:
            return await self._setup_failed(exc.message, exc.message)
        job.outlet = (self.pdu, self.port)  # its energy: the outlet's meter from here to the end
        job.energy_start = service.power.outlet_energy_j(self.pdu, self.port)
        console = service.consoles.console(mac)
        self.sub = job.sub = service.consoles.subscribe(mac)
        job.row.console_start = console.mark()
        await service._save(job)
        job.input_ok = True
        self.timeouts = self.parsed.make_timeouts()
        self.jc = self.parsed.make_console(self.timeouts)
        return True

    async def boot_loop(self) -> None:
        """Power off, then boot until the session ends, the job is cancelled or aborted, or setup fails."""
        self.timeouts.overall.start()
        self._log("Power the machine off at the start of the session")
        await self._power(PortState.OFF)
        self.boot = 0
        while not self._over() and await self.boot_once():
            self.timeouts.stop_boot()
            self.boot += 1

    def _over(self) -> bool:
        """Whether no further boot starts (cancel, overall timeout, session ended)."""
        timeouts = self.timeouts
        if self.job.cancel.is_set():
            self.cancelled = True
            return True
        if timeouts.overall.has_expired() or (timeouts.deadline and timeouts.deadline.has_expired()):
            self.aborted = "the overall timeout expired"
            return True
        return bool(self.jc.session_ended)

    async def boot_once(self) -> bool:
        """One boot: deploy, power on, watch, power off, judge. True: boot again."""
        await self._power(PortState.OFF)
        if not await self.deploy():
            return False
        self._log(
            f"Power up the machine, enforcing {self.service.power.min_off_time(self.pdu, self.port):g} seconds "
            "of down time",
        )
        await self._power(PortState.ON)
        self.jc.start_boot()
        expired = await self.watch()
        await self._power(PortState.OFF)
        if self.cancelled:
            return False
        return self.judge(expired)

    async def deploy(self) -> bool:
        """Publish this boot's config (artefacts localised by the boot cache), drop the console bytes of the
        previous boot. False: cancelled or the artefacts could not be had (setup failure)."""
        service, job = self.service, self.job
        config = self.parsed.deployment_for_boot(self.boot)
        if service.boot_cache is not None:
            try:
                config = await service._localise(job, config)
            except (BootCacheError, ValueError, OSError) as exc:
                if job.cancel.is_set():
                    self.cancelled = True
                    return False
                self.setup_fail = str(exc)
                self._log(f"ERROR: {self.setup_fail}", severity=3)
                return False
        service._boot[self.mac] = config
        while self.sub.chunks:  # bytes from before this boot belong to the previous one
            await service._pump(job, self.jc, self.sub, 0)
        return True

    async def watch(self) -> list[Timeout]:
        """Feed the console to the job console until a cancel, the session's end, a reboot asked for, or
        expired timeouts (returned)."""
        service, job, jc = self.service, self.job, self.jc
        while True:
            await service._pump(job, jc, self.sub, _next_wake(self.timeouts))
            if job.cancel.is_set():
                self.cancelled = True
                return []
            if jc.session_ended or jc.needs_reboot:
                return []
            expired: list[Timeout] = self.timeouts.expired()
            if expired:
                return expired

    def judge(self, expired: list[Timeout]) -> bool:
        """After a boot: retry its expired timeouts or abort; count a reboot. True: boot again."""
        jc, timeouts = self.jc, self.timeouts
        for timeout in expired:
            if timeout.retry():
                self._log(f"Hit the timeout {timeout.name} --> Try again!", severity=2)
            else:
                self._log(f"Hit the timeout {timeout.name} --> Abort!", severity=3)
                self.aborted = f"the timeout {timeout.name} expired"
        if not self.aborted and jc.needs_reboot and not jc.session_ended:
            if timeouts.boot_cycle.retry():
                self._log(f"Boot cycle {timeouts.boot_cycle.retried}/{timeouts.boot_cycle.retries}, go ahead!")
            else:
                self._log("Exceeded boot loop count, aborting!", severity=3)
                self.aborted = "too many reboots"
        if self.aborted:
            jc.advance(JobConsoleState.DUT_DONE)
            return False
        return True

    async def teardown(self) -> None:
        """After a session that ended on its own: the console drained for a moment, then the teardown."""
        service, job, jc = self.service, self.job, self.jc
        if not self.cancelled and jc.session_ended and not self.aborted:
            job.row.state = "teardown"
            service._job_event(job)
            if service.drain_delay:
                await service._pump(job, jc, self.sub, service.drain_delay, once=False)
            jc.tear_down()
        else:
            self._log("The job is over, skipping the teardown")

    async def release(self) -> None:
        """Always, once the outlet is locked: stop following the console, power off, unlock."""
        service, job, row = self.service, self.job, self.job.row
        job.input_ok = False
        job.sub = None
        service._boot.pop(self.mac, None)
        service.consoles.unsubscribe(self.mac, self.sub)
        try:
            await asyncio.shield(self._power(PortState.OFF))
        except Exception as exc:  # noqa: BLE001 - reported, the job still ends
            self._log(f"ERROR: could not power the machine off: {exc}", severity=3)
        service.power.unlock(self.pdu, self.port, job.id)
        row.console_end = row.console_start + job.fed if row.console_start is not None else None

    async def finish(self) -> None:
        """The job's status and why: cancelled, setup failure, unfit for service, or the job console's."""
        service, job, mac, jc = self.service, self.job, self.mac, self.jc
        if self.cancelled:
            await service._finish(job, job.cancel_status or JobStatus.INCOMPLETE, "cancelled",
                                  job.cancel_reason or "cancelled")
        elif self.setup_fail is not None:
            await service._finish(job, JobStatus.SETUP_FAIL, "done", self.setup_fail)
        elif jc.unfit_for_service:
            # valve-infra §13.1 fixed: only a match counts, and it ends the session; the job says why.
            status = jc.job_status
            if status in (JobStatus.PASS, JobStatus.WARN, JobStatus.COMPLETE):
                status = JobStatus.INCOMPLETE
            why = "the machine is unfit for service (machine_unfit_for_service matched): sent back to training"
            self._log(f"The DUT reported it is unfit for service: {mac} is taken out of service", severity=3)
            await service._unfit(job, mac)
            await service._finish(job, status, "done", why)
        else:
            status = jc.job_status
            why = self.aborted or ("the session ended" if jc.session_ended else "stopped")
            await service._finish(job, status, "done", why)


def _next_wake(timeouts: Any) -> float:
    """How long the boot loop may wait for console bytes: until the next timeout, within POLL..IDLE_WAKE."""
    now = timeouts.clock()
    left = [r for r in (t.remaining(now) for t in timeouts) if r is not None]
    return min(max(min(left, default=IDLE_WAKE), POLL), IDLE_WAKE)
