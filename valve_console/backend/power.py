"""PowerService: the only code that switches outlets.

Guarantees: one command at a time per PDU, in order (one worker task and queue per PDU); every
set is read back and a mismatch is an error; an outlet stays off for its minimum off time (the
machine's ``pdu_off_delay``), also across restarts (``OutletLog``); a reboot is off, wait, on; a
PDU that stops answering is marked unreachable with the reason and polled again with back-off
while the other PDUs keep working; outlet changes are published as ``outlet`` events.

Batching: the switch commands waiting in a PDU's queue are taken together, in arrival order, as
one batch (at most one per outlet; a second command for an outlet already in the batch starts the
next one), sent with one ``set_many`` and read back with ``get_many`` (re-read until every outlet
matches or READBACK_SETTLE passes). Each caller gets its own answer: a read-back mismatch or a
refusal of one outlet fails only that outlet's caller; a PDU that does not answer fails them all.

Cost per batch, not per outlet: the OutletLog rows of batches that finish while a write is in
flight go to the store together (one transaction, one commit for several PDUs' batches), and a
batch logs one line, not one per outlet. Callers are answered (and the outlet events published)
once their rows are committed, but the PDU's worker does not wait for that commit: it goes on
with the next batch (a reboot's ON, queued by the worker itself as soon as the OFF reads back)
while the store thread writes.

Metering (issue 18): a PDU whose driver meters (``meters(driver)``) gets a third task, its sampler,
which asks for a ``read_power`` every ``power_sample_interval`` s (the PDU config's own
``power_sample_interval`` overrides it) and hands the reading to the ``PowerMeter`` (metering.py).
Switching always goes first: the read is not a queue item but a request the worker takes only when its
queue is empty; a sample falls due while switches wait is skipped; and a switch queued while a read is
in flight preempts it (the read is cancelled, as a timeout would, and that sample skipped), so no
switch ever waits for a slow meter. A failed or timed-out read is counted and said once per kind; it
never marks the PDU unreachable (only its state polls and commands do).
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, ClassVar, TypeVar, cast

from sqlalchemy import Table, insert
from sqlmodel import Session, col, delete, func, select

from ..drivers.pdu import DriverConfigError, DriverError, Outlet, OutletError, PDUDriver, PortState, create_driver
from ..drivers.pdu.base import MeteredPDU, PowerReading, get_many, meters, set_many
from .errors import BadRequest, Conflict, FarmError, NotFound
from .events import EventBus
from .metering import PowerMeter
from .metrics import PduCommandStats
from .models import Machine, OutletLog, Pdu
from .store import Store

log = logging.getLogger(__name__)
T = TypeVar("T")

PDU_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
READBACK_SETTLE = 5.0  # seconds a PDU gets to report the state it was asked for
READBACK_PAUSE = 0.2  # seconds between read-backs that do not match yet
MAX_BACKOFF = 60.0
MAX_BATCH = 64  # switch commands sent to one PDU together
_LOG_COLUMNS = ("pdu", "port_id", "state", "at", "source")
_LogRow = tuple[str, str, str, float, str]  # an OutletLog row in _LOG_COLUMNS order
# SQLModel sets __table__ on a table=True model; its types do not declare it.
_OUTLET_LOG: Table = OutletLog.__table__  # type: ignore[attr-defined]
_LOG_INSERT = (f"INSERT INTO {_OUTLET_LOG.name} ({', '.join(_LOG_COLUMNS)}) "
               f"VALUES ({', '.join('?' * len(_LOG_COLUMNS))})")


SAMPLE_KEY = "power_sample_interval"  # a PDU config's own sampling period: the farm's, not the driver's


def driver_config(config: dict[str, Any] | None) -> dict[str, Any] | None:
    """A PDU's config as its driver takes it (without the farm's own keys)."""
    if not isinstance(config, dict) or SAMPLE_KEY not in config:
        return config
    return {k: v for k, v in config.items() if k != SAMPLE_KEY}


def sample_interval(config: dict[str, Any] | None, default: float) -> float:
    """The PDU's ``power_sample_interval`` (a number of seconds, 0.1 to 3600), else ``default``."""
    value = (config or {}).get(SAMPLE_KEY) if isinstance(config, dict) else None
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.1 <= float(value) <= 3600:
        raise DriverConfigError(f"{SAMPLE_KEY} must be a number of seconds from 0.1 to 3600")
    return float(value)


SECRET_KEYS = {"community", "read_community", "auth_key", "priv_key", "password", "token"}


def masked(config: dict[str, Any]) -> dict[str, Any]:
    """A PDU's config as the API shows it: community strings, keys and passwords hidden."""
    return {k: ("********" if k in SECRET_KEYS and v else v) for k, v in config.items()}


class BrokenDriver:
    """Stands in for a stored PDU whose driver cannot be built (e.g. a driver removed by an upgrade)."""

    name: ClassVar[str] = "broken"

    def __init__(self, reason: str) -> None:
        self.reason = reason

    async def ports(self) -> list[Outlet]:
        raise DriverError(self.reason)

    async def get(self, port_id: str) -> PortState:
        raise DriverError(self.reason)

    async def set(self, port_id: str, state: PortState) -> None:
        raise DriverError(self.reason)

    async def get_many(self, port_ids: list[str]) -> dict[str, PortState]:
        raise DriverError(self.reason)

    async def set_many(self, states: dict[str, PortState]) -> None:
        raise DriverError(self.reason)

    async def close(self) -> None:
        return None


class PowerError(FarmError):
    """A PDU did not do what it was asked (unreachable, refused, or read back the wrong state)."""

    status = 409


@dataclass
class OutletInfo:
    port_id: str
    label: str
    state: PortState = PortState.UNKNOWN
    changed_at: float | None = None


@dataclass
class _Op:
    """A queued job that is not a switch (a poll, a read): runs alone."""

    run: Callable[[], Awaitable[Any]]
    fut: asyncio.Future[Any]  # the op's result (the queue holds ops of any result type)


@dataclass(slots=True)
class _Switch:
    """A queued switch of one outlet to ON or OFF; answered with the state read back.

    ``then_on`` makes it a reboot's first half: once the outlet reads OFF, the worker queues the
    ON for the same caller (after the outlet's min-off time), without waking the caller between.
    """

    port_id: str
    target: PortState
    source: str
    fut: asyncio.Future[PortState]
    then_on: bool = False


# A caller's answer from a batch: the state read back, the error, or None (a reboot's OFF: its ON answers).
_Answer = tuple[asyncio.Future[PortState], PortState | PowerError | None]


@dataclass
class PduRuntime:
    name: str
    driver_name: str
    config: dict[str, Any]
    reserved: set[str]
    driver: PDUDriver
    outlets: dict[str, OutletInfo] = field(default_factory=dict)
    discovered: bool = False
    reachable: bool | None = None
    error: str | None = None
    queue: deque[_Op | _Switch] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    port_locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    # Power-ons waiting for their outlet's min-off time, queued when it has passed.
    delayed: dict[asyncio.TimerHandle, _Switch] = field(default_factory=dict)
    failures: int = 0
    locked_by: dict[str, str] = field(default_factory=dict)
    wake_poll: asyncio.Event = field(default_factory=asyncio.Event)
    # Metering: the sampler's pending read (taken by the worker only when its queue is empty) and period.
    sample: asyncio.Future[PowerReading | None] | None = None
    sample_interval: float = 1.0
    # Outlets whose last switch read back another state (port -> in words), until one reads back right;
    # and how many switches read back wrong, per outlet, since the start (GET /metrics)
    mismatch: dict[str, str] = field(default_factory=dict)
    mismatches: dict[str, int] = field(default_factory=dict)

    def lock(self, port_id: str) -> asyncio.Lock:
        lock = self.port_locks.get(port_id)
        if lock is None:
            lock = self.port_locks[port_id] = asyncio.Lock()
        return lock


class PowerService:
    def __init__(
        self,
        store: Store,
        bus: EventBus,
        *,
        default_off_delay: float = 5.0,
        poll_interval: float = 10.0,
        timeout: float = 3.0,
        off_delay_for: Callable[[str, str], float | None] | None = None,
        on_health_change: Callable[[], None] = lambda: None,
        meter: PowerMeter | None = None,
        sample_interval: float = 1.0,
    ) -> None:
        self.store = store
        self.meter = meter  # None: power is not sampled
        self.sample_interval = sample_interval
        self.bus = bus
        self.default_off_delay = default_off_delay
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.off_delay_for = off_delay_for or (lambda pdu, port: None)
        self.pdus: dict[str, PduRuntime] = {}
        self._last_off: dict[tuple[str, str], float] = {}
        self.state = "starting"
        self.reason: str | None = None
        self.on_health_change = on_health_change  # told when state/reason changed
        self.command_stats = PduCommandStats()  # latency of each queued command, for /metrics
        # OutletLog group commit: rows waiting for the next write, the future that write resolves.
        self._log_rows: list[_LogRow] = []
        self._log_done: asyncio.Future[None] | None = None
        self._log_task: asyncio.Task[None] | None = None
        self._answering: set[asyncio.Task[None]] = set()  # batches whose callers wait for their rows' commit

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        def load(session: Session) -> tuple[list[Pdu], list[tuple[str, str, float]]]:
            pdus = list(session.exec(select(Pdu)).all())
            offs = session.exec(
                select(OutletLog.pdu, OutletLog.port_id, func.max(OutletLog.at))
                .where(OutletLog.state == PortState.OFF.value)
                .group_by(OutletLog.pdu, OutletLog.port_id)
            ).all()
            return pdus, [(pdu, port_id, at) for pdu, port_id, at in offs]

        pdus, offs = await self.store.run(load)
        self._last_off = {(p, port): at for p, port, at in offs}
        for row in pdus:
            try:
                driver: PDUDriver = create_driver(row.driver, driver_config(row.config))
            except (DriverConfigError, DriverError) as exc:
                # Keep it listed, unreachable with the reason, rather than hiding a stored PDU.
                log.error("PDU %s cannot be loaded: %s", row.name, exc)
                driver = BrokenDriver(f"cannot load driver {row.driver!r}: {exc}")
            self._launch(PduRuntime(row.name, row.driver, row.config, set(row.reserved_ports), driver))
        self._update_health()

    async def stop(self) -> None:
        for rt in list(self.pdus.values()):
            await self._shutdown(rt)
        self.pdus.clear()
        if self._log_task is not None:  # rows already handed over are written before the store closes
            await asyncio.gather(self._log_task, return_exceptions=True)
        await asyncio.gather(*self._answering, return_exceptions=True)  # and their callers answered
        from ..drivers.pdu.snmp import close_engines

        await close_engines()  # the loop's SNMP engine, even if a driver was never closed

    def _launch(self, rt: PduRuntime) -> None:
        self.pdus[rt.name] = rt
        rt.tasks = [
            asyncio.create_task(self._worker(rt), name=f"pdu-{rt.name}-worker"),
            asyncio.create_task(self._poller(rt), name=f"pdu-{rt.name}-poll"),
        ]
        if self.meter is not None and meters(rt.driver):
            try:
                rt.sample_interval = sample_interval(rt.config, self.sample_interval)
            except DriverConfigError as exc:
                log.error("PDU %s: %s; sampling every %g s", rt.name, exc, self.sample_interval)
                rt.sample_interval = self.sample_interval
            rt.tasks.append(asyncio.create_task(self._sampler(rt), name=f"pdu-{rt.name}-sampler"))

    async def _shutdown(self, rt: PduRuntime) -> None:
        # Cancel until they end: on Python 3.11, asyncio.wait_for swallows a cancel that arrives
        # just as the command it waits for finishes, and the worker would wait for work for ever.
        pending = set(rt.tasks)
        while pending:
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.2)
        await asyncio.gather(*rt.tasks, return_exceptions=True)  # collect their outcomes
        for handle in rt.delayed:
            handle.cancel()
        waiting = [item.fut for item in (*rt.queue, *rt.delayed.values())]
        if rt.sample is not None and not rt.sample.done():
            rt.sample.cancel()
        rt.queue.clear()
        rt.delayed.clear()
        self._stopped(rt, waiting)
        try:
            await rt.driver.close()
        except Exception:  # noqa: BLE001 - closing a broken driver must not stop the farm
            log.exception("closing PDU %s", rt.name)

    # ---------------------------------------------------------------- worker
    async def _worker(self, rt: PduRuntime) -> None:
        while True:
            while not rt.queue and rt.sample is None:
                rt.wake.clear()
                await rt.wake.wait()
            if not rt.queue:  # nothing else to do: the sampler's read (it yields to any switch)
                await self._run_sample(rt)
                continue
            first = rt.queue.popleft()
            started = time.monotonic()  # for /metrics: one op, or one batch of switches
            if isinstance(first, _Op):
                if not first.fut.done():
                    await self._run_op(rt, first)
                    self.command_stats.observe(rt.name, time.monotonic() - started, rt.failures == 0)
                continue
            # The switches waiting at the head of the queue, in order, one per outlet.
            batch, ports = [first], {first.port_id}
            while rt.queue and len(batch) < MAX_BATCH:
                head = rt.queue[0]
                if not isinstance(head, _Switch) or head.port_id in ports:
                    break
                rt.queue.popleft()
                batch.append(head)
                ports.add(head.port_id)
            batch = [cmd for cmd in batch if not cmd.fut.done()]
            if batch:
                await self._run_batch(rt, batch)
                self.command_stats.observe(rt.name, time.monotonic() - started, rt.failures == 0)

    # ---------------------------------------------------------------- metering
    async def _run_sample(self, rt: PduRuntime) -> None:
        """The sampler's read, in the worker (one command at a time per PDU), given up as soon as a
        switch is queued: the read is cancelled (as its timeout would) and the sampler told None."""
        request, rt.sample = rt.sample, None
        if request is None or request.done():
            return
        ports = list(rt.outlets)

        async def read() -> PowerReading:
            async with asyncio.timeout(self.timeout * 2):
                return await cast(MeteredPDU, rt.driver).read_power(ports)

        task = asyncio.create_task(read(), name=f"pdu-{rt.name}-read-power")
        try:
            while not task.done():
                rt.wake.clear()
                if any(isinstance(item, _Switch) for item in rt.queue):
                    break
                woken = asyncio.ensure_future(rt.wake.wait())
                try:
                    await asyncio.wait({task, woken}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    woken.cancel()
        finally:
            if not task.done():  # a switch came (or the PDU is going): the read is abandoned
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                if not request.done():
                    request.set_result(None)
                if self.meter is not None:
                    self.meter.pdu(rt.name).preempted += 1
        if request.done():
            return
        if task.cancelled():
            request.set_result(None)
        elif task.exception() is not None:
            request.set_exception(task.exception())  # type: ignore[arg-type]
        else:
            request.set_result(task.result())

    async def _sampler(self, rt: PduRuntime) -> None:
        """Every ``rt.sample_interval`` s, a power read through the worker (skipped while switches wait,
        or before the outlets are known); the reading goes to the meter, outlet and pdu events follow."""
        meter = self.meter
        assert meter is not None
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            if not rt.discovered or not rt.outlets or rt.reachable is False:
                pass  # the poller finds the outlets (or the PDU) first
            elif any(isinstance(item, _Switch) for item in rt.queue):
                meter.pdu(rt.name).skipped += 1
            else:
                request: asyncio.Future[PowerReading | None] = loop.create_future()
                rt.sample = request
                rt.wake.set()
                try:
                    reading = await asyncio.shield(request)
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        request.cancel()
                        raise  # the sampler itself is cancelled (the PDU goes, or the service stops)
                    reading = None  # the request was dropped
                except Exception as exc:  # noqa: BLE001 - counted; the PDU's reachability is the polls' to say
                    meter.read_failed(rt.name, exc)
                    reading = None
                if reading is not None:
                    self._take_power(rt, reading)
            await asyncio.sleep(max(0.0, rt.sample_interval - (loop.time() - started)))

    def _take_power(self, rt: PduRuntime, reading: PowerReading) -> None:
        assert self.meter is not None
        if not isinstance(reading, PowerReading):
            self.meter.problem(rt.name, f"read_power answered a {type(reading).__name__}, not a PowerReading")
            return
        states = {port_id: info.state for port_id, info in rt.outlets.items()}
        try:
            due, pdu_due = self.meter.take(rt.name, reading, time.time(), states, rt.sample_interval)
        except Exception:  # noqa: BLE001 - a reading must never stop the sampler
            log.exception("PDU %s: a power reading could not be taken", rt.name)
            return
        for port_id in due:
            info = rt.outlets.get(port_id)
            if info is not None:
                self.bus.publish("outlet", self.outlet_json(rt, info))
        if pdu_due:
            self.bus.publish("pdu", {"action": "updated", "name": rt.name, "pdu": self.pdu_json(rt.name)})

    def outlet_energy_j(self, pdu: str, port_id: str) -> float | None:
        """Joules the outlet drew since the start (None: not metered): a job's energy is a difference."""
        return self.meter.energy_j(pdu, port_id) if self.meter is not None else None

    async def switched_on(self, pdu: str, port_id: str, since: float, limit: int = 1000) -> list[float]:
        """When the outlet went ON since ``since`` (the outlet log: commands and changes seen by polling),
        oldest first, at most ``limit`` (the latest ones): the boots a power plot marks."""

        def read(session: Session) -> list[float]:
            rows = session.exec(
                select(OutletLog.at)
                .where(col(OutletLog.pdu) == pdu, col(OutletLog.port_id) == port_id,
                       col(OutletLog.state) == PortState.ON.value, col(OutletLog.at) >= since)
                .order_by(col(OutletLog.at).desc())
                .limit(limit)
            ).all()
            return sorted(float(at) for at in rows)

        return await self.store.run(read)

    def is_metered(self, pdu: str, port_id: str | None = None) -> bool | None:
        """Whether the PDU (or one of its outlets) meters: True, False, or None (a metering PDU not read yet)."""
        rt = self._runtime(pdu)
        if self.meter is None or not meters(rt.driver):
            return False
        pm = self.meter.pdus.get(pdu)
        if pm is None or pm.metered is None:
            return None
        if port_id is None:
            return pm.metered
        return self.meter.outlet(pdu, port_id) is not None

    @staticmethod
    def _stopped(rt: PduRuntime, futs: list[asyncio.Future[Any]]) -> None:
        for fut in futs:
            if not fut.done():
                fut.set_exception(PowerError(f"PDU {rt.name} was removed, or the power service stopped"))

    def _fail(self, rt: PduRuntime, futs: list[asyncio.Future[Any]], exc: BaseException) -> PowerError:
        """Mark the PDU after ``exc`` and fail every waiting future with the reason."""
        if isinstance(exc, PowerError):  # the PDU answered, but not as asked
            self._mark(rt, None)
            error = exc
        elif isinstance(exc, asyncio.TimeoutError):
            err = DriverError(f"PDU {rt.name} did not answer in time")
            self._mark(rt, err)
            error = PowerError(str(err))
        else:
            if not isinstance(exc, DriverError):  # a driver bug must not kill the worker
                log.error("PDU %s command failed", rt.name, exc_info=exc)
            self._mark(rt, exc)
            error = PowerError(f"PDU {rt.name}: {exc}")
        for fut in futs:
            if not fut.done():
                fut.set_exception(error)
        return error

    async def _run_op(self, rt: PduRuntime, item: _Op) -> None:
        try:
            async with asyncio.timeout(self.timeout * 4 + READBACK_SETTLE):
                result = await item.run()
        except asyncio.CancelledError:  # the PDU is removed or the service stops: nobody waits for ever
            self._stopped(rt, [item.fut])
            raise
        except Exception as exc:  # noqa: BLE001 - every failure goes to the caller
            self._fail(rt, [item.fut], exc)
        else:
            self._mark(rt, None)
            if not item.fut.done():
                item.fut.set_result(result)

    async def _run_batch(self, rt: PduRuntime, batch: list[_Switch]) -> None:
        budget = self.timeout * (4 + 2 * math.ceil(len(batch) / 16)) + READBACK_SETTLE
        try:
            async with asyncio.timeout(budget):  # no task per batch, unlike wait_for
                await self._switch_batch(rt, batch)
        except asyncio.CancelledError:  # the PDU is removed or the service stops: nobody waits for ever
            self._stopped(rt, [cmd.fut for cmd in batch])
            raise
        except Exception as exc:  # noqa: BLE001 - every failure goes to the callers
            self._fail(rt, [cmd.fut for cmd in batch], exc)
        else:
            self._mark(rt, None)

    async def _switch_batch(self, rt: PduRuntime, batch: list[_Switch]) -> None:
        """One set_many for the batch, then get_many until every outlet reads its target (or time
        is up); answer each command's caller. Futures are only resolved at the end, so a
        DriverError raised here fails every caller still waiting."""
        commands = {cmd.port_id: cmd for cmd in batch}
        refused: dict[str, str] = {}
        todo = dict(commands)
        while todo:
            try:
                await set_many(rt.driver, {port_id: cmd.target for port_id, cmd in todo.items()})
                todo = {}
            except OutletError as exc:  # one outlet refused: its caller fails, the others go again
                if exc.port_id not in todo:
                    raise
                for port_id in exc.applied:
                    todo.pop(port_id, None)
                todo.pop(exc.port_id)
                refused[exc.port_id] = f"PDU {rt.name}: {exc}"
        sent = {port_id: cmd for port_id, cmd in commands.items() if port_id not in refused}
        got: dict[str, PortState] = {}
        changed: list[dict[str, Any]] = []
        written: asyncio.Future[None] | None = None
        if sent:
            waiting = list(sent)
            deadline = time.monotonic() + READBACK_SETTLE
            while True:
                got.update(await get_many(rt.driver, waiting))
                waiting = [port_id for port_id in waiting if got[port_id] != sent[port_id].target]
                if not waiting or time.monotonic() >= deadline:
                    break
                await asyncio.sleep(READBACK_PAUSE)
            flagged = self._note_mismatches(rt, {port_id: (cmd.target, got[port_id]) for port_id, cmd in sent.items()})
            changed, entries = self._take_readings(rt, [(port_id, got[port_id], cmd.source)
                                                        for port_id, cmd in sent.items()])
            told = {data["port_id"] for data in changed}
            changed += [self.outlet_json(rt, rt.outlets.get(port_id) or OutletInfo(port_id, ""))
                        for port_id in flagged if port_id not in told]
            if entries:
                written = self._hand_to_log(entries)
            if log.isEnabledFor(logging.INFO):
                log.info("PDU %s: %s", rt.name, ", ".join(
                    f"outlet {port_id} is {got[port_id].value} ({cmd.source})" for port_id, cmd in sent.items()))
        self._mark(rt, None)  # the PDU answered; before the callers resume, so they see it reachable
        # Each caller's answer (a state or an error), given once the batch's rows are committed; a
        # reboot whose OFF read back goes on with its ON at once (None here: only a failed write of
        # the OFF's row reaches its caller from this batch).
        answers: list[_Answer] = []
        for port_id, cmd in commands.items():
            if cmd.fut.done():
                continue
            if port_id in refused:
                answers.append((cmd.fut, PowerError(refused[port_id])))
            elif got[port_id] != cmd.target:
                answers.append((cmd.fut, PowerError(
                    f"outlet {port_id} of PDU {rt.name} reads {got[port_id].value} after switching {cmd.target.value}"
                )))
            elif cmd.then_on:  # a reboot: now the ON, for the same caller
                self._queue_switch(rt, _Switch(port_id, PortState.ON, cmd.source, cmd.fut))
                answers.append((cmd.fut, None))
            else:
                answers.append((cmd.fut, got[port_id]))
        if written is None:
            self._answer(rt, changed, answers, None)
        else:
            # The worker goes on with the PDU's next batch while the store commits this one: the
            # commit (another thread, another core) no longer holds up the PDU.
            task = asyncio.create_task(self._answer_when_logged(rt, changed, answers, written))
            self._answering.add(task)
            task.add_done_callback(self._answering.discard)

    @staticmethod
    def _note_mismatches(rt: PduRuntime, results: dict[str, tuple[PortState, PortState]]) -> list[str]:
        """Remember which outlets read back another state than they were switched to (and forget those
        that now read back right); the outlets whose flag changed."""
        flagged = []
        for port_id, (target, got) in results.items():
            before = rt.mismatch.get(port_id)
            if got != target:
                rt.mismatch[port_id] = f"read back {got.value} after switching {target.value}"
                rt.mismatches[port_id] = rt.mismatches.get(port_id, 0) + 1
            else:
                rt.mismatch.pop(port_id, None)
            if rt.mismatch.get(port_id) != before:
                flagged.append(port_id)
        return flagged

    async def _answer_when_logged(self, rt: PduRuntime, changed: list[dict[str, Any]],
                                  answers: list[_Answer], written: asyncio.Future[None]) -> None:
        """Answer once the batch's rows are committed. If they cannot be (a full data volume), the
        outlets were still switched: callers get the states read back, the failure is logged (and the
        storage's health says why); min-off times hold from memory until the next start."""
        try:
            await asyncio.shield(written)
        except Exception as exc:  # noqa: BLE001 - reported; the switch itself happened
            why = exc.message if isinstance(exc, FarmError) else f"{type(exc).__name__}: {exc}"
            outlets = ", ".join(f"outlet {data.get('port_id', '?')} {data.get('state', '?')}" for data in changed)
            log.error("PDU %s: the outlet log was not written (%s); switched all the same: %s",
                      rt.name, why, outlets or "no change")
        self._answer(rt, changed, answers, None)

    def _answer(self, rt: PduRuntime, changed: list[dict[str, Any]], answers: list[_Answer],
                error: PowerError | None) -> None:
        """Publish the batch's outlet changes and answer its callers (after its rows are committed)."""
        for data in changed:
            self.bus.publish("outlet", data)
        for fut, answer in answers:
            if fut.done():
                continue
            if error is not None:
                fut.set_exception(error)
            elif isinstance(answer, PowerError):
                fut.set_exception(answer)
            elif answer is not None:
                fut.set_result(answer)

    def _enqueue(self, rt: PduRuntime, item: _Op | _Switch) -> None:
        rt.queue.append(item)
        rt.wake.set()

    async def _submit(self, rt: PduRuntime, op: Callable[[], Awaitable[T]]) -> T:
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._enqueue(rt, _Op(op, fut))
        return await fut

    def _mark(self, rt: PduRuntime, error: BaseException | None) -> None:
        before = (rt.reachable, rt.error)
        if error is None:
            rt.reachable, rt.error, rt.failures = True, None, 0
        else:
            rt.reachable, rt.error = False, str(error) or type(error).__name__
            rt.failures += 1
        if (rt.reachable, rt.error) != before:
            if rt.reachable:
                log.info("PDU %s is reachable", rt.name)
            else:
                log.warning("PDU %s is unreachable: %s", rt.name, rt.error)
            self.bus.publish("pdu", {"action": "updated", "name": rt.name, "pdu": self.pdu_json(rt.name)})
            self._update_health()

    def _update_health(self) -> None:
        down = sorted(name for name, rt in self.pdus.items() if rt.reachable is False)
        state, reason = ("degraded", "unreachable: " + ", ".join(down)) if down else ("ok", None)
        if (state, reason) != (self.state, self.reason):
            self.state, self.reason = state, reason
            self.on_health_change()

    # ---------------------------------------------------------------- polling
    async def _poller(self, rt: PduRuntime) -> None:
        while True:
            try:
                await self._submit(rt, lambda: self._poll_once(rt))
            except PowerError:
                pass
            if rt.reachable is False:
                delay = min(MAX_BACKOFF, 2 ** min(rt.failures - 1, 6))
            else:
                delay = self.poll_interval
            rt.wake_poll.clear()
            try:
                await asyncio.wait_for(rt.wake_poll.wait(), delay)
            except asyncio.TimeoutError:
                pass

    async def _poll_once(self, rt: PduRuntime) -> None:
        if not rt.discovered:
            outlets: list[Outlet] = await rt.driver.ports()
            rt.outlets = {o.port_id: OutletInfo(o.port_id, o.label) for o in outlets}
            rt.discovered = True
            self.bus.publish("pdu", {"action": "updated", "name": rt.name, "pdu": self.pdu_json(rt.name)})
        if rt.outlets:
            states = await get_many(rt.driver, list(rt.outlets))
            await self._record_many(rt, [(port_id, state, "poll") for port_id, state in states.items()])

    async def _record(self, rt: PduRuntime, port_id: str, state: PortState, source: str) -> None:
        await self._record_many(rt, [(port_id, state, source)])

    async def _record_many(self, rt: PduRuntime, readings: list[tuple[str, PortState, str]]) -> None:
        """Take outlet states read from the PDU: the changes are logged (one store transaction for
        all of them) and published, one ``outlet`` event per outlet."""
        changed, entries = self._take_readings(rt, readings)
        if entries:
            try:  # shielded: a caller's timeout must not cancel the others' write
                await asyncio.shield(self._hand_to_log(entries))
            except FarmError as exc:  # the PDU answered: the storage's health reports the failure
                log.error("PDU %s: the outlet log was not written: %s", rt.name, exc.message)
        for data in changed:
            self.bus.publish("outlet", data)

    def _take_readings(self, rt: PduRuntime, readings: list[tuple[str, PortState, str]]
                       ) -> tuple[list[dict[str, Any]], list[_LogRow]]:
        """Update the outlets' states from readings; return the ``outlet`` events of those that
        changed (their JSON now: a reboot's ON may change the outlet again before the OFF's event is
        published) and the OutletLog rows to write, as tuples in _LOG_COLUMNS order (a first sight
        of an outlet known to be off since before is not one)."""
        changed: list[OutletInfo] = []
        entries: list[_LogRow] = []
        now = time.time()
        for port_id, state, source in readings:
            info = rt.outlets.get(port_id)
            if info is None:
                info = rt.outlets[port_id] = OutletInfo(port_id, "")
            if info.state == state:
                continue
            previous, info.state, info.changed_at = info.state, state, now
            changed.append(info)
            key = (rt.name, port_id)
            if previous == PortState.UNKNOWN and state == PortState.OFF and key in self._last_off:
                # First sight after a start of an outlet we saw go off before: it has been off since then.
                info.changed_at = self._last_off[key]
            else:
                if state == PortState.OFF:
                    self._last_off[key] = now
                entries.append((rt.name, port_id, state.value, now, source))
        return [self.outlet_json(rt, info) for info in changed], entries

    def _hand_to_log(self, entries: list[_LogRow]) -> asyncio.Future[None]:
        """Hand OutletLog rows to the writer; the future is done when they are committed. Rows that
        arrive while a write is in flight (other batches) are written together by the next one: one
        transaction and one commit for all of them, rows as plain tuples in one executemany (no
        ORM object per row). Writes happen in the order rows were handed over."""
        self._log_rows.extend(entries)
        done = self._log_done
        if done is None:
            done = self._log_done = asyncio.get_running_loop().create_future()
        if self._log_task is None or self._log_task.done():
            self._log_task = asyncio.create_task(self._log_writer(), name="outlet-log-writer")
        return done

    async def _log_writer(self) -> None:
        done: asyncio.Future[None] | None = None
        try:
            while self._log_rows:
                rows, done = self._log_rows, self._log_done
                self._log_rows, self._log_done = [], None
                assert done is not None
                try:
                    await self.store.run_raw(self._insert_log, rows, write=True)
                except Exception as exc:  # noqa: BLE001 - every waiting batch gets the error
                    done.set_exception(exc)
                    done.exception()  # retrieved: waiters that were cancelled must not warn
                else:
                    done.set_result(None)
                done = None
        finally:
            for fut in (done, self._log_done):  # cancelled (the service stops): nobody waits for ever
                if fut is not None and not fut.done():
                    fut.set_exception(PowerError("the outlet log was not written: the power service stopped"))
                    fut.exception()
            if self._log_done is not None and self._log_done.done():
                self._log_rows, self._log_done = [], None

    def _insert_log(self, rows: list[_LogRow]) -> None:
        """In the store thread: one executemany of plain tuples on a pooled DB-API connection, one
        commit (SQLAlchemy's Session/Core around it cost more than SQLite's own insert and commit).
        (A multi-row INSERT cost more store CPU here than executemany.) Other databases than SQLite
        go through SQLAlchemy Core."""
        engine = self.store.engine
        assert engine is not None, "store not open"
        if engine.dialect.paramstyle != "qmark":  # not SQLite: the portable way
            with engine.begin() as connection:
                values = [dict(zip(_LOG_COLUMNS, row, strict=True)) for row in rows]
                connection.execute(insert(_OUTLET_LOG), values)
            return
        conn = engine.raw_connection()
        try:
            cursor = conn.cursor()
            cursor.executemany(_LOG_INSERT, rows)
            cursor.close()
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        finally:
            conn.close()  # back to the pool

    # ---------------------------------------------------------------- commands
    def _runtime(self, name: str) -> PduRuntime:
        rt = self.pdus.get(name)
        if rt is None:
            raise NotFound(f"unknown PDU {name!r}")
        return rt

    def min_off_time(self, pdu: str, port_id: str) -> float:
        delay = self.off_delay_for(pdu, port_id)
        return self.default_off_delay if delay is None else float(delay)

    def _check_port(self, rt: PduRuntime, port_id: str) -> None:
        if rt.discovered and port_id not in rt.outlets:
            ids = list(rt.outlets)
            span = f"{ids[0]}..{ids[-1]}" if ids else "none"
            raise NotFound(f"PDU {rt.name} has no outlet {port_id!r} (outlets: {span})")

    # ---------------------------------------------------------------- locks
    def lock(self, pdu: str, port_id: str, owner: str) -> None:
        """Reserve an outlet for ``owner`` (a job): nobody else may switch it until unlock()."""
        rt = self._runtime(pdu)
        self._check_port(rt, port_id)
        holder = rt.locked_by.get(port_id)
        if holder is not None and holder != owner:
            raise Conflict(f"outlet {port_id} of PDU {pdu} is locked by {holder}")
        rt.locked_by[port_id] = owner
        self.bus.publish("outlet", self.outlet_json(rt, rt.outlets.get(port_id) or OutletInfo(port_id, "")))

    def unlock(self, pdu: str, port_id: str, owner: str) -> None:
        rt = self.pdus.get(pdu)
        if rt is not None and rt.locked_by.get(port_id) == owner:
            del rt.locked_by[port_id]
            self.bus.publish("outlet", self.outlet_json(rt, rt.outlets.get(port_id) or OutletInfo(port_id, "")))

    async def set_outlet(
        self, pdu: str, port_id: str | int, state: PortState | str, source: str = "api", owner: str | None = None
    ) -> PortState:
        """Switch an outlet and return the state read back from the PDU.

        A locked outlet can only be switched by its lock's ``owner``.
        """
        rt = self._runtime(pdu)
        port_id = str(port_id)
        holder = rt.locked_by.get(port_id)
        if holder is not None and holder != owner:
            raise Conflict(f"outlet {port_id} of PDU {pdu} is locked by {holder}")
        target = state if isinstance(state, PortState) else PortState.parse(state)
        if target == PortState.UNKNOWN:
            raise BadRequest("an outlet can be switched on, off or rebooted, not to UNKNOWN")
        self._check_port(rt, port_id)
        if port_id in rt.reserved:
            raise Conflict(f"outlet {port_id} of PDU {pdu} is reserved: the farm never switches it")
        if rt.reachable is False and not rt.discovered:
            raise PowerError(f"PDU {pdu} is unreachable: {rt.error}")
        fut: asyncio.Future[PortState] = asyncio.get_running_loop().create_future()
        async with rt.lock(port_id):
            if target == PortState.REBOOT:  # off, read back; the worker then queues the on
                self._queue_switch(rt, _Switch(port_id, PortState.OFF, source, fut, then_on=True))
            else:
                self._queue_switch(rt, _Switch(port_id, target, source, fut))
            return await fut  # the batch logged it

    def _queue_switch(self, rt: PduRuntime, item: _Switch) -> None:
        """Queue a switch now, or a power-on once its outlet has been off for its min-off time
        (the PDU's queue serves others meanwhile)."""
        if item.target == PortState.ON:
            last_off = self._last_off.get((rt.name, item.port_id))
            if last_off is not None:
                wait = last_off + self.min_off_time(rt.name, item.port_id) - time.time()
                if wait > 0:
                    log.info("outlet %s/%s: enforcing %.1f s of down time before power on",
                             rt.name, item.port_id, wait)

                    def due() -> None:
                        rt.delayed.pop(handle, None)
                        if not item.fut.done():  # the caller may have given up meanwhile
                            self._enqueue(rt, item)

                    handle = asyncio.get_running_loop().call_later(wait, due)
                    rt.delayed[handle] = item
                    return
        self._enqueue(rt, item)

    async def read_outlet(self, pdu: str, port_id: str) -> PortState:
        """Read one outlet's state from the PDU now (through its queue) and record it."""
        rt = self._runtime(pdu)
        self._check_port(rt, port_id)

        async def op() -> PortState:
            state = await rt.driver.get(port_id)
            await self._record(rt, port_id, state, source="poll")
            return state

        return await self._submit(rt, op)

    async def refresh(self, pdu: str) -> None:
        """Ask the PDU's poller to read every outlet now."""
        self._runtime(pdu).wake_poll.set()

    # ---------------------------------------------------------------- PDUs
    async def add_pdu(
        self, name: str, driver: str, config: dict[str, Any] | None, reserved: list[str] | None = None
    ) -> dict[str, Any]:
        if not isinstance(name, str) or not PDU_NAME.fullmatch(name):
            raise BadRequest("a PDU name is 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
        if name in self.pdus:
            raise Conflict(f"a PDU named {name!r} already exists")
        try:
            drv = create_driver(driver, driver_config(config))
            sample_interval(config, self.sample_interval)
        except (DriverConfigError, DriverError) as exc:
            raise BadRequest(str(exc)) from None
        reserved_ids = sorted({str(p) for p in reserved or []})
        row = Pdu(name=name, driver=driver, config=dict(config or {}), reserved_ports=reserved_ids)

        def insert(session: Session) -> None:
            if session.get(Pdu, name) is not None:
                raise Conflict(f"a PDU named {name!r} already exists")
            session.add(row)

        await self.store.run(insert)
        rt = PduRuntime(name, driver, row.config, set(reserved_ids), drv)
        self._launch(rt)
        # Give the PDU a moment to report its outlets so the answer is useful; never fail on it.
        deadline = time.monotonic() + self.timeout + 0.5
        while not rt.discovered and rt.reachable is not False and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        self.bus.publish("pdu", {"action": "added", "name": name, "pdu": self.pdu_json(name)})
        log.info("PDU %s added (driver %s)", name, driver)
        self._update_health()
        return self.pdu_json(name)

    async def reconfigure_pdu(self, name: str, config: dict[str, Any]) -> dict[str, Any]:
        """Give a PDU a new driver config (e.g. the vPDU's new port): stored, then its driver restarts."""
        rt = self._runtime(name)
        try:
            drv = create_driver(rt.driver_name, driver_config(config))
            sample_interval(config, self.sample_interval)
        except (DriverConfigError, DriverError) as exc:
            raise BadRequest(str(exc)) from None

        def update(session: Session) -> None:
            row = session.get(Pdu, name)
            if row is None:
                raise NotFound(f"unknown PDU {name!r}")
            row.config = dict(config)
            session.add(row)

        await self.store.run(update)
        self.pdus.pop(name, None)
        await self._shutdown(rt)
        fresh = PduRuntime(name, rt.driver_name, dict(config), set(rt.reserved), drv)
        self._launch(fresh)
        self.bus.publish("pdu", {"action": "updated", "name": name, "pdu": self.pdu_json(name)})
        log.info("PDU %s reconfigured", name)
        self._update_health()
        return self.pdu_json(name)

    async def remove_pdu(self, name: str) -> None:
        rt = self._runtime(name)

        def remove(session: Session) -> None:
            users = session.exec(select(Machine.mac_address).where(Machine.pdu == name)).all()
            if users:
                raise Conflict(f"PDU {name} still powers {', '.join(users)}: assign those machines elsewhere first")
            session.exec(delete(Pdu).where(col(Pdu.name) == name))

        await self.store.run(remove)
        self.pdus.pop(name, None)
        await self._shutdown(rt)
        if self.meter is not None:
            self.meter.forget(name)
        self.bus.publish("pdu", {"action": "removed", "name": name, "pdu": None})
        log.info("PDU %s removed", name)
        self._update_health()

    def outlet_ids(self, pdu: str) -> list[str] | None:
        rt = self._runtime(pdu)
        return list(rt.outlets) if rt.discovered else None

    def is_reserved(self, pdu: str, port_id: str) -> bool:
        rt = self.pdus.get(pdu)
        return rt is not None and port_id in rt.reserved

    def outlet_state(self, pdu: str, port_id: str) -> PortState:
        rt = self._runtime(pdu)
        info = rt.outlets.get(port_id)
        return info.state if info else PortState.UNKNOWN

    def outlet_json(self, rt: PduRuntime, info: OutletInfo) -> dict[str, Any]:
        return {
            "pdu": rt.name,
            "port_id": info.port_id,
            "label": info.label,
            "state": info.state.value,
            "reserved": info.port_id in rt.reserved,
            "locked_by": rt.locked_by.get(info.port_id),
            "min_off_time": self.min_off_time(rt.name, info.port_id),
            "changed_at": info.changed_at,
            "metered": self.meter is not None and self.meter.outlet(rt.name, info.port_id) is not None,
            "power": self.meter.outlet_power(rt.name, info.port_id) if self.meter is not None else None,
            "mismatch": rt.mismatch.get(info.port_id),
        }

    def pdu_json(self, name: str) -> dict[str, Any]:
        rt = self._runtime(name)
        state = "unknown" if rt.reachable is None else ("reachable" if rt.reachable else "unreachable")
        pm = self.meter.pdus.get(name) if self.meter is not None and meters(rt.driver) else None
        return {
            "name": rt.name,
            "driver": rt.driver_name,
            "pdu_model": rt.driver_name,
            "config": masked(rt.config),
            "reserved_ports": sorted(rt.reserved),
            "state": state,
            "error": rt.error,
            "ports": {
                pid: {k: v for k, v in self.outlet_json(rt, info).items() if k not in ("pdu", "port_id")}
                for pid, info in rt.outlets.items()
            },
            # A metering driver counts as metered until its first reading says otherwise.
            "metered": self.meter is not None and meters(rt.driver) and (pm is None or pm.metered is not False),
            "total_watts": pm.total_watts if pm is not None else None,
            "power_at": pm.at if pm is not None else None,
        }

    def pdus_json(self) -> dict[str, Any]:
        return {name: self.pdu_json(name) for name in sorted(self.pdus)}
