"""Executor: the job queue and one asyncio task per machine that runs its jobs (valve-infra §4.4).

Pure job logic lives in :mod:`jobs` (parsing, timeouts, console patterns); this module does the I/O:
power through :class:`PowerService` (the outlet is locked by the job), console bytes from the
:class:`ConsoleHub`, the boot config the DUT fetches (``boot_config(mac)``), the job history in the
database, and per-job streams: SSE for our job client, and for valve-infra's clients the gateway connects
back to their callback port (callback.py).

Public API
----------
``JobService(store, bus, machines, power, consoles, settings)``: ``await start()`` / ``await stop()``;
``await submit(text, target=None, job_id=None, share=None, callback=None) -> dict`` (raises ``FarmError``
400/404/406/409; a given ``job_id`` is a prefix made unique); ``list_json()``, ``get(job_id)``,
``job_json(job)``, ``await cancel(job_id, reason=None, status=None)``, ``boot_config(mac)``,
``machine_state(mac) -> "QUEUED" | "RUNNING" | None``, ``listen(job)``/``unlisten(job, queue)``,
``console_slice(job, start=None)``, ``input(job_id, data)``.
``submit(..., share=<tar.gz bytes>)`` unpacks the client's share; ``shares`` (share.py) holds every job's
share, removed with the history; ``share_variables(job_id, mac)`` gives ``job_bucket``/``job_share_url``;
``template_defaults()`` the variables every template has (``minio_url``, the registries, settings).
``await submit_training(mac, kind, text) -> RunningJob`` queues a Sgt. Hartman job (``register``/``bootloop``)
on a machine that is not ready for service; ``training_jobs`` maps those job ids to their kind. A user job for
a machine in training is refused (409). A job whose console matches ``machine_unfit_for_service`` ends
INCOMPLETE (unless it failed already) and calls ``on_unfit(mac, job_id)`` (Sgt. Hartman's, given by the farm).

Templates are never rendered or parsed on the event loop: ``JobService.parser`` (``JobParser``) does it in
up to ``PARSE_WORKERS`` reused worker processes (jobs.worker_main), each request under a CPU budget
(``PARSE_CPU_SECONDS``, RLIMIT_CPU), a worker under ``PARSE_MEMORY_BYTES`` (RLIMIT_DATA) and a wall-clock
limit; over a limit the submission is a 400 (or the job ends SETUP_FAIL) saying which. ``await
parser.peek_target(text, variables)``, ``await parser.parse(text, machine, target=, variables=, defaults=,
strict=)``, ``await parser.close()``.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import logging
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Optional

from sqlmodel import Session, col, select

from ...drivers.pdu.base import PortState
from ..boot.cache import BootCache, BootCacheError
from ..boot.ipxe import BootConfig
from ..errors import BadRequest, Conflict, FarmError, NotFound
from ..models import JobRow
from ..rules import normalise_mac
from ..share import ShareError, ShareStore, bucket_name
from .errors import JobError, JobStatus
from .parser import JobParser
from .run import JobRun
from .schema import Target
from .templating import MachineInfo

if TYPE_CHECKING:
    from ...config import Settings
    from ..consoles.hub import ConsoleHub
    from ..events import EventBus
    from ..power import PowerService
    from ..registration import MachineService
    from ..store import Store
    from ..submission import Callback

log = logging.getLogger("valve_console.backend.executor")
HISTORY = 500  # finished jobs kept in memory (all are in the database)
CTRL_KEEP = 2000  # control messages kept per job for late stream readers
_JOB_ID_CHARS = re.compile(r"[^A-Za-z0-9_.:+-]+")
DEFAULT_TEMPLATE_VARIABLES = {  # valve-infra's ansible set these as EXECUTOR_JOB__* on every gateway
    "fdo_proxy_registry": "ci-gateway:8002",
    "local_registry": "ci-gateway:8004",
}
FINAL = {s.name for s in JobStatus}


class NotAcceptable(FarmError):
    def __init__(self, message: str) -> None:
        super().__init__(message, 406)


LISTENER_MAX_BYTES = 32 << 20  # console bytes (base85) one reader of a job may fall behind by


class ListenerOverflow(Exception):
    """A job's reader fell more than its budget behind: it must resume from the stored console."""


class JobListener:
    """A job's messages for one reader (SSE stream, callback relay), bounded in bytes.

    A reader that falls ``max_bytes`` behind stops getting messages: its next ``get`` raises
    :class:`ListenerOverflow` (an SSE reader reconnects with its offsets; a callback client is let go).
    """

    def __init__(self, max_bytes: int = LISTENER_MAX_BYTES) -> None:
        self._items: collections.deque[tuple[str, dict[str, Any]]] = collections.deque()
        self._ready = asyncio.Event()
        self.max_bytes = max_bytes
        self.bytes = 0
        self.overflowed = False

    @staticmethod
    def _size(item: tuple[str, dict[str, Any]]) -> int:
        data = item[1]
        return len(data.get("data", "")) + len(data.get("msg", "")) + 64

    def put(self, item: tuple[str, dict[str, Any]]) -> None:
        if self.overflowed:
            return
        size = self._size(item)
        if self.bytes + size > self.max_bytes:
            self.overflowed = True
            self._items.clear()
            self.bytes = 0
        else:
            self._items.append(item)
            self.bytes += size
        self._ready.set()

    put_nowait = put  # asyncio.Queue's name, for readers written against one

    async def get(self) -> tuple[str, dict[str, Any]]:
        while not self._items:
            if self.overflowed:
                raise ListenerOverflow(f"the reader fell more than {self.max_bytes} bytes behind")
            self._ready.clear()
            await self._ready.wait()
        item = self._items.popleft()
        self.bytes -= self._size(item)
        return item


@dataclass
class RunningJob:
    """A job in memory: its row, and what its readers need (control log, live listeners)."""

    row: JobRow
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    ctrl: collections.deque[dict[str, Any]] = field(default_factory=lambda: collections.deque(maxlen=CTRL_KEEP))
    listeners: set[JobListener] = field(default_factory=set)
    sub: Any = None  # the console subscription while it runs (poked on cancel)
    fed: int = 0  # console bytes of this job given to the job console (and streamed)
    t0: float = field(default_factory=time.monotonic)
    input_ok: bool = False
    # Why and how a cancel ends the job (None: an operator's cancel, INCOMPLETE "cancelled").
    cancel_reason: Optional[str] = None
    cancel_status: Optional[JobStatus] = None
    teardown: float = 600.0  # seconds a callback client has to close after session_end (infra_teardown)
    relay: Any = None  # the CallbackRelay of a valve-infra client (callback.py)
    outlet: Optional[tuple[str, str]] = None  # (pdu, port) it locked
    energy_start: Optional[float] = None  # the outlet's energy (J, PowerMeter) when the job took it

    @property
    def id(self) -> str:
        return self.row.id

    @property
    def over(self) -> bool:
        """The job has ended. ``_finish`` sets the end (status, ``ended_at``) before it stores the row (an
        await) and ``done`` after: a job whose end is being written is over already for everyone who asks
        (cancel, its share), who may see its final status in that window."""
        return self.done.is_set() or self.row.ended_at is not None


class JobService:
    def __init__(
        self,
        store: "Store",
        bus: "EventBus",
        machines: "MachineService",
        power: "PowerService",
        consoles: "ConsoleHub",
        settings: "Settings",
        api_host: Optional[Callable[[], str]] = None,
        boot_cache: Optional[BootCache] = None,
        changed: Callable[[str, str], None] = lambda mac, action: None,
        training_note: Callable[[str], Optional[str]] = lambda mac: None,
        on_unfit: Optional[Callable[[str, str], Awaitable[None]]] = None,
    ) -> None:
        """``api_host()``: host:port of the API as DUTs reach it (known once the farm bound its socket);
        ``boot_cache``: where boot artefacts are fetched to (settings.boot_cache), None to pass URLs on;
        ``changed(mac, action)``: told when a machine's job state (its ``state``) changed;
        ``training_note(mac)``: why a machine in training takes no user job (None: not training);
        ``on_unfit(mac, job_id)``: a job's console matched machine_unfit_for_service (None: the machine
        is just taken out of service)."""
        self.store = store
        self.bus = bus
        self.machines = machines
        self.power = power
        self.consoles = consoles
        self.settings = settings
        self.jobs: dict[str, RunningJob] = {}
        self.queues: dict[str, collections.deque[str]] = {}
        self.running: dict[str, str] = {}  # mac -> job id
        self._boot: dict[str, BootConfig] = {}
        self._wakeups: dict[str, asyncio.Event] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stopping = False
        self.drain_delay = settings.job_console_drain
        self.boot_cache = boot_cache
        self.training_jobs: dict[str, str] = {}  # job id -> "register" | "bootloop" (Sgt. Hartman's jobs)
        self.changed = changed
        self.training_note = training_note
        self.on_unfit = on_unfit
        # Job shares (share.py): <data_dir>/jobs/<id>/share; api_host() is host:port of the API for the DUTs.
        self.shares = ShareStore(
            settings.data_dir / "jobs", settings.job_share_max_bytes, settings.job_shares_max_total_bytes
        )
        self.api_host: Callable[[], str] = api_host or (lambda: default_boot_urls(settings, None)[2])
        self._share_tasks: set[asyncio.Future[None]] = set()
        self._reserved_ids: set[str] = set()  # ids being submitted (between their check and their queueing)
        # Templates are rendered and parsed in worker processes (a CPU budget each), never on the loop.
        self.parser = JobParser()
        self._parsing: collections.Counter[str] = collections.Counter()  # mac -> jobs picked, being parsed

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        def recover(session: Session) -> list[JobRow]:
            for row in session.exec(select(JobRow).where(col(JobRow.status).in_(("QUEUED", "RUNNING")))).all():
                row.status = JobStatus.INCOMPLETE.name
                row.state = "cancelled"
                row.ended_at = row.ended_at or time.time()
                row.result = "the gateway restarted while the job was queued or running"
                session.add(row)
            rows = session.exec(select(JobRow).order_by(col(JobRow.submitted_at).desc()).limit(HISTORY)).all()
            return list(rows)

        for row in reversed(await self.store.run(recover)):
            job = RunningJob(row)
            job.done.set()
            self.jobs[row.id] = job
        await asyncio.to_thread(self.shares.prune, set(self.jobs))  # shares go with the job history

    async def stop(self) -> None:
        self._stopping = True
        for job in self.jobs.values():
            if not job.done.is_set():
                job.cancel.set()
                if job.sub is not None:
                    job.sub.put(b"")
        for wakeup in self._wakeups.values():
            wakeup.set()
        tasks = list(self._tasks.values())
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        await self.parser.close()
        relays = [j.relay.task for j in self.jobs.values() if j.relay is not None and j.relay.task is not None]
        if relays:  # session_end went out; give the clients a moment to read it, then close
            await asyncio.wait(relays, timeout=2)
            for task in relays:
                task.cancel()
            await asyncio.gather(*relays, return_exceptions=True)

    # ---------------------------------------------------------------- queries
    def boot_config(self, mac: str) -> Optional[BootConfig]:
        return self._boot.get(mac)

    def machine_state(self, mac: str) -> Optional[str]:
        """RUNNING/QUEUED for user jobs; Sgt. Hartman's jobs show as the machine state TRAINING instead."""
        running = self.running.get(mac)
        if running is not None and running not in self.training_jobs:
            return "RUNNING"
        if any(job_id not in self.training_jobs for job_id in self.queues.get(mac) or ()):
            return "QUEUED"
        return None

    def get(self, job_id: str) -> RunningJob:
        job = self.jobs.get(job_id)
        if job is None:
            raise NotFound(f"unknown job {job_id!r}")
        return job

    def position(self, job: RunningJob) -> int:
        """Jobs ahead of this one on its machine (0: running or next)."""
        row = job.row
        if row.status != "QUEUED" or row.machine is None:
            return 0
        queue = self.queues.get(row.machine) or collections.deque()
        try:
            index = list(queue).index(row.id)
        except ValueError:
            return 0
        return index + (1 if row.machine in self.running else 0)

    def job_json(self, job: RunningJob, with_text: bool = False) -> dict[str, Any]:
        row = job.row
        data = {
            "id": row.id,
            "machine": row.machine,
            "status": row.status,
            "state": row.state,
            "position": self.position(job),
            "submitted_at": row.submitted_at,
            "started_at": row.started_at,
            "ended_at": row.ended_at,
            "target": row.target,
            "result": row.result,
            "console_start": row.console_start,
            "console_end": row.console_end,
            "training": self.training_jobs.get(row.id) or _training_kind(row.id),
            "energy_j": row.energy_j if row.energy_j is not None else self._energy_so_far(job),
        }
        if with_text:
            data["job"] = row.job_text
        return data

    def list_json(self) -> list[dict[str, Any]]:
        jobs = sorted(self.jobs.values(), key=lambda j: j.row.submitted_at, reverse=True)
        return [self.job_json(j) for j in jobs]

    # ---------------------------------------------------------------- submission
    def _eligible(self, mac: str, training: bool = False) -> Optional[str]:
        """Why a machine cannot take jobs (None: it can). Training jobs run on machines not ready for service."""
        m = self.machines.machines[mac]
        if m.is_retired:
            return f"machine {mac} is retired"
        if not m.pdu or m.pdu_port_id is None:
            return f"machine {mac} has no PDU port (WAIT_FOR_CONFIG)"
        if training:
            return None
        if not m.ready_for_service:
            note = self.training_note(mac)
            return f"machine {mac} is not ready for service" + (f" ({note})" if note else "")
        return None

    def _load(self, mac: str) -> int:
        """Jobs queued, running, or picked for it and still being parsed."""
        return len(self.queues.get(mac) or ()) + (1 if mac in self.running else 0) + self._parsing[mac]

    def _pick(self, target: Target) -> str:
        tags = set(target.tags or [])
        if target.id:
            try:
                mac = normalise_mac(target.id)
            except ValueError:
                raise NotFound(f"Unknown machine ID '{target.id}'") from None
            machine = self.machines.machines.get(mac)
            if machine is None:
                raise NotFound(f"Unknown machine ID '{mac}'")
            have = set(machine.tags) | set(machine.manual_tags)
            if not tags <= have:
                raise NotAcceptable(f"machine {mac} lacks the tags {sorted(tags - have)}")
            why = self._eligible(mac)
            if why is not None:
                raise Conflict(why)
            return mac
        candidates = [
            mac for mac, m in sorted(self.machines.machines.items()) if tags <= (set(m.tags) | set(m.manual_tags))
        ]
        if not candidates:
            raise NotAcceptable(f"no machine has the tags {sorted(tags)}")
        usable = [mac for mac in candidates if self._eligible(mac) is None]
        if not usable:
            raise Conflict(
                f"all {len(candidates)} machine(s) with the tags {sorted(tags)} are retired, not ready for "
                "service or without a PDU port"
            )
        return min(usable, key=lambda mac: (self._load(mac), usable.index(mac)))

    async def _unique_id(self, given: Optional[str]) -> str:
        """A job id from the client's (a prefix made unique, as valve-infra did) or a new one.

        Characters outside letters, digits and ``_.:+-`` become ``-`` (CI job names have spaces and
        brackets); a taken id gets ``-<time>-<random>`` appended, so a repeated id is never refused.
        """
        if given is None:
            base = f"job-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        else:
            base = _JOB_ID_CHARS.sub("-", str(given)).strip("-.:+_")[:100]
            if not base:
                raise BadRequest(f"job_id {str(given)[:40]!r} has no letter or digit to make an id of")
            if base.startswith("train-"):  # Sgt. Hartman's ids
                base = f"job-{base}"
        candidate = base
        for _ in range(8):
            if candidate not in self.jobs and candidate not in self._reserved_ids:
                def exists(session: Session, job_id: str = candidate) -> bool:
                    return session.get(JobRow, job_id) is not None

                taken = await self.store.run(exists)
                if not taken and candidate not in self.jobs and candidate not in self._reserved_ids:
                    return candidate
            candidate = f"{base}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        raise Conflict(f"cannot make a unique job id from {base!r}")

    def template_defaults(self) -> dict[str, Any]:
        """Template variables a gateway always has (lowest precedence, under EXECUTOR_JOB__* and the
        job's own): valve-infra's registries, ``minio_url`` (the gateway as the DUTs reach it: its
        ``/boot/`` serves the default kernel and initramfs as MinIO's boot bucket did) and the
        settings' ``job_variables``."""
        values: dict[str, Any] = {**DEFAULT_TEMPLATE_VARIABLES, "minio_url": f"http://{self.api_host()}"}
        values.update(self.settings.job_variables)
        if self.settings.minio_url:
            values["minio_url"] = self.settings.minio_url.rstrip("/")
        return values

    async def submit(
        self,
        text: str,
        target: Optional[dict[str, Any]] = None,
        job_id: Optional[str] = None,
        share: "Optional[bytes | Path]" = None,
        callback: Optional["Callback"] = None,
    ) -> dict[str, Any]:
        if self._stopping:
            raise Conflict("the gateway is stopping")
        if not isinstance(text, str) or not text.strip():
            raise BadRequest("the job is empty")
        override: Optional[Target] = None
        try:
            if target:
                override = Target.model_validate(target)
            tgt = override if override is not None else await self.parser.peek_target(
                text, variables=self.template_defaults()
            )
        except JobError as exc:
            raise BadRequest(str(exc)) from None
        except ValueError as exc:  # pydantic's ValidationError of the metadata target
            raise BadRequest(f"invalid target: {exc}") from None
        job_id = await self._unique_id(job_id)
        self._reserved_ids.add(job_id)
        try:
            return await self._submit(text, tgt, override, job_id, share, callback)
        finally:
            self._reserved_ids.discard(job_id)

    async def _submit(
        self,
        text: str,
        tgt: Target,
        override: Optional[Target],
        job_id: str,
        share: "Optional[bytes | Path]",
        callback: Optional["Callback"],
    ) -> dict[str, Any]:
        # The share is unpacked first. The picked machine counts the job in its load while the job is
        # parsed (in a worker process), so concurrent submissions spread as if it were queued already.
        key = self.shares.new_key()
        staged = await self._stage_share(key, share)
        mac: Optional[str] = None
        try:
            if self._stopping:
                raise Conflict("the gateway is stopping")
            mac = self._pick(tgt)
            self._parsing[mac] += 1
            machine = self.machines.machines[mac]
            try:
                await self.parser.parse(
                    text, MachineInfo.from_machine(machine, self.machines.full_name(machine)), target=override,
                    variables=self.share_variables(job_id, mac, key), defaults=self.template_defaults(),
                )
            except JobError as exc:
                raise BadRequest(str(exc)) from None
            if self._stopping:
                raise Conflict("the gateway is stopping")
            if mac not in self.machines.machines:
                raise Conflict(f"machine {mac} was removed while the job was parsed")
            self.shares.adopt(staged, job_id, key)
        except BaseException:
            self._remove_shares([], staged)
            raise
        finally:
            if mac is not None:  # no await from here to the queue: the load stays right
                self._parsing[mac] -= 1
                if self._parsing[mac] <= 0:
                    del self._parsing[mac]
        try:
            job = await self._enqueue(
                job_id, mac, text, tgt.model_dump(exclude_none=True), self.machines.full_name(machine), callback
            )
        except Exception:
            self._remove_shares([job_id])
            raise
        return {"id": job.id, "status": "QUEUED", "position": job.row.position, "machine": mac}

    async def submit_training(self, mac: str, kind: str, text: str) -> RunningJob:
        """Queue one of Sgt. Hartman's jobs (already rendered for ``mac``) on a machine that is not ready."""
        if self._stopping:
            raise Conflict("the gateway is stopping")
        why = self._eligible(mac, training=True)
        if why is not None:
            raise Conflict(why)
        job_id = f"train-{kind}-{mac.replace(':', '')}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
        self.training_jobs[job_id] = kind
        name = self.machines.full_name(self.machines.machines[mac])
        try:
            return await self._enqueue(job_id, mac, text, {"id": mac}, name)
        except Exception:
            self.training_jobs.pop(job_id, None)
            raise

    async def _enqueue(
        self, job_id: str, mac: str, text: str, target: dict[str, Any], name: str,
        callback: Optional["Callback"] = None,
    ) -> RunningJob:
        ahead = self._load(mac)
        row = JobRow(
            id=job_id,
            machine=mac,
            job_text=text,
            target=target,
            position=ahead,
        )
        job = RunningJob(row)
        # Queue it before the first await: concurrent submissions must see this machine's load.
        self.jobs[job_id] = job
        queue = self.queues.setdefault(mac, collections.deque())
        queue.append(job_id)
        try:
            await self.store.run(lambda s: s.add(JobRow(**row.model_dump())))
        except Exception:
            with contextlib.suppress(ValueError):
                queue.remove(job_id)
            self.jobs.pop(job_id, None)
            raise
        self._trim()
        if callback is not None:  # listening before the first message, so the client hears them all
            from ..callback import CallbackRelay

            job.relay = CallbackRelay(self, job, callback)
            job.relay.start()
        self._log(job, f"Job queued for {name} ({mac}), {ahead} job(s) ahead")
        self._job_event(job)
        self._machine_event(mac)
        self._ensure_runner(mac)
        self._wakeups[mac].set()
        return job

    def _trim(self) -> None:
        done = [j for j in self.jobs.values() if j.done.is_set()]
        if len(done) > HISTORY:
            done.sort(key=lambda j: j.row.submitted_at)
            gone = done[: len(done) - HISTORY]
            self._remove_shares([j.id for j in gone])
            for j in gone:
                del self.jobs[j.id]
                self.training_jobs.pop(j.id, None)

    async def cancel(
        self, job_id: str, reason: Optional[str] = None, status: Optional[JobStatus] = None
    ) -> dict[str, Any]:
        """Cancel a job: a queued one leaves its queue, a running one stops (the DUT is powered off).

        ``reason``/``status`` say why and how it ends (default: INCOMPLETE, "cancelled").
        """
        job = self.get(job_id)
        row = job.row
        if job.over:
            raise Conflict(f"job {job_id} is over ({row.status})")
        job.cancel_reason = job.cancel_reason or reason
        job.cancel_status = job.cancel_status or status
        if row.status == "QUEUED" and row.machine is not None:
            queue = self.queues.get(row.machine)
            if queue is not None and job_id in queue:
                queue.remove(job_id)
                why = reason or "cancelled while queued"
                await self._finish(job, status or JobStatus.INCOMPLETE, "cancelled", why)
                self._machine_event(row.machine)
                self._queue_changed(row.machine)
                return self.job_json(job)
        job.cancel.set()
        if job.sub is not None:
            job.sub.put(b"")  # wake the boot loop now
        self._log(job, f"The job was cancelled{': ' + reason if reason else ''}", severity=2)
        return self.job_json(job)

    # ---------------------------------------------------------------- valve-infra clients (callback.py)
    async def end_for_client(self, job: RunningJob, why: str, setup_fail: bool = False) -> None:
        """A callback client is gone or unreachable: its job ends (SETUP_FAIL when it was never reached)."""
        if job.done.is_set():
            return
        log.warning("job %s: %s", job.id, why)
        with contextlib.suppress(Conflict):
            await self.cancel(job.id, why, JobStatus.SETUP_FAIL if setup_fail else None)

    def client_input(self, job: RunningJob, data: bytes) -> None:
        """Keystrokes from a callback client: written to the DUT while the job runs, dropped otherwise."""
        if job.input_ok and job.row.machine is not None and not job.done.is_set():
            try:
                self.consoles.input(job.row.machine, data, writer=f"job:{job.id}", takeover=True)
            except FarmError as exc:
                log.info("job %s: input from the client dropped: %s", job.id, exc.message)

    def elapsed(self, job: RunningJob) -> float:
        return time.monotonic() - job.t0

    def input(self, job_id: str, data: bytes) -> int:
        job = self.get(job_id)
        if job.row.status != "RUNNING" or job.row.machine is None:
            raise Conflict(f"job {job_id} is not running ({job.row.status})")
        return self.consoles.input(job.row.machine, data, writer=f"job:{job_id}", takeover=True)

    # ---------------------------------------------------------------- streams
    def listen(self, job: RunningJob, max_bytes: int = LISTENER_MAX_BYTES) -> "JobListener":
        listener = JobListener(max_bytes)
        job.listeners.add(listener)
        return listener

    def unlisten(self, job: RunningJob, listener: "JobListener") -> None:
        job.listeners.discard(listener)

    def console_slice(self, job: RunningJob, start: int = 0) -> bytes:
        """The job's console [console_start + start, end or what the executor has fed so far)."""
        row = job.row
        if row.console_start is None or row.machine is None:
            return b""
        end = row.console_end if row.console_end is not None else row.console_start + job.fed
        console = self.consoles.consoles.get(row.machine)
        if console is None:
            return b""
        return console.slice(row.console_start + max(start, 0), end)

    def _emit(self, job: RunningJob, kind: str, data: dict[str, Any]) -> None:
        for listener in list(job.listeners):
            listener.put((kind, data))

    def _log(self, job: RunningJob, msg: str, severity: int = 1) -> None:
        text = f"+{time.monotonic() - job.t0:.3f}s: {msg}"
        entry = {"msg": text, "severity": severity}
        job.ctrl.append(entry)
        self._emit(job, "ctrl", entry)
        log.info("job %s: %s", job.id, msg)

    def _job_event(self, job: RunningJob) -> None:
        self.bus.publish("job", self.job_json(job))

    def _machine_event(self, mac: str) -> None:
        if mac in self.machines.machines:
            self.changed(mac, "updated")

    def _queue_changed(self, mac: str) -> None:
        for job_id in list(self.queues.get(mac) or ()):
            job = self.jobs.get(job_id)
            if job is not None:
                self._emit(job, "queue", {"position": self.position(job)})
                self._job_event(job)

    # ---------------------------------------------------------------- runner
    def _ensure_runner(self, mac: str) -> None:
        self._wakeups.setdefault(mac, asyncio.Event())
        task = self._tasks.get(mac)
        if task is None or task.done():
            self._tasks[mac] = asyncio.create_task(self._runner(mac), name=f"executor-{mac}")

    async def _runner(self, mac: str) -> None:
        wakeup = self._wakeups[mac]
        while not self._stopping:
            queue = self.queues.get(mac)
            if not queue:
                wakeup.clear()
                await wakeup.wait()
                continue
            job = self.jobs.get(queue.popleft())
            if job is None or job.done.is_set():
                continue
            self.running[mac] = job.id
            try:
                await JobRun(self, job, mac).run()
            except asyncio.CancelledError:
                if not job.done.is_set():
                    await asyncio.shield(self._finish(job, JobStatus.INCOMPLETE, "cancelled", "the gateway stopped"))
                raise
            except Exception as exc:  # noqa: BLE001 - one job's crash must not stop the machine's runner
                log.exception("job %s failed", job.id)
                if not job.done.is_set():
                    self._log(job, f"ERROR: {type(exc).__name__}: {exc}", severity=3)
                    await self._finish(job, JobStatus.INCOMPLETE, "done", f"executor error: {exc}")
            finally:
                self.running.pop(mac, None)
                self._boot.pop(mac, None)
                self._machine_event(mac)
                self._queue_changed(mac)

    async def _set_power(self, job: RunningJob, pdu: str, port: str, state: PortState) -> None:
        await self.power.set_outlet(pdu, port, state, source=f"job:{job.id}", owner=job.id)

    async def _unfit(self, job: RunningJob, mac: str) -> None:
        try:
            if self.on_unfit is not None:
                await self.on_unfit(mac, job.id)
            elif mac in self.machines.machines:
                await self.machines.set_ready(mac, False, f"unfit for service (job {job.id})")
        except Exception:  # noqa: BLE001 - the job is over either way; the failure is logged
            log.exception("cannot take %s out of service after job %s", mac, job.id)

    async def _localise(self, job: RunningJob, config: BootConfig) -> BootConfig:
        """The config with cached artefact URLs; a cancel of the job stops the download."""
        assert self.boot_cache is not None
        fetch = asyncio.ensure_future(self.boot_cache.localise(config))
        cancelled = asyncio.ensure_future(job.cancel.wait())
        try:
            await asyncio.wait({fetch, cancelled}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            cancelled.cancel()
            if not fetch.done():
                fetch.cancel()
                await asyncio.gather(fetch, return_exceptions=True)
        if fetch.cancelled():
            raise BootCacheError("the job was cancelled while its boot artefacts were downloaded")
        return fetch.result()

    async def _pump(self, job: RunningJob, jc: Any, sub: Any, timeout: float, once: bool = True) -> None:
        """Feed the console bytes that arrive within ``timeout`` to the job console and its readers."""
        deadline = time.monotonic() + timeout
        while True:
            left = max(deadline - time.monotonic(), 0)
            data = await sub.get(left if left > 0 else 0.001) if (sub.chunks or left > 0) else b""
            if data is None:  # the console hub is stopping: just wait
                await asyncio.sleep(left)
                return
            if data:
                job.fed += len(data)
                self._emit(job, "job_io", {"data": base64.b85encode(data).decode("ascii")})
                for match in jc.feed(data):
                    self._log(job, match.message)
            if once or time.monotonic() >= deadline:
                return

    def _energy_so_far(self, job: RunningJob) -> Optional[float]:
        """Joules the job's outlet drew since the job took it (None: not metered, or not taken)."""
        if job.outlet is None or job.energy_start is None:
            return None
        now = self.power.outlet_energy_j(*job.outlet)
        return None if now is None else max(0.0, now - job.energy_start)

    async def _finish(self, job: RunningJob, status: JobStatus, state: str, why: str) -> None:
        row = job.row
        if row.energy_j is None:
            row.energy_j = self._energy_so_far(job)
        row.status, row.state, row.ended_at, row.result = status.name, state, time.time(), why
        self._log(job, f"The job ended: {status.name} ({why})")
        await self._save(job)
        job.done.set()
        self._emit(job, "session_end", {"status": status.name})
        self._job_event(job)

    async def _save(self, job: RunningJob) -> None:
        try:
            await self.store.upsert(JobRow, job.row.model_dump())
        except Exception:  # noqa: BLE001 - the history is best effort; the job goes on
            log.exception("cannot store job %s", job.id)


    # ---------------------------------------------------------------- job shares (share.py)
    def share_variables(self, job_id: str, mac: str, key: Optional[str] = None) -> dict[str, Any]:
        """Template variables of a job's share: ``job_bucket`` (valve-infra's name), ``job_share_url``
        (``http://<api>/api/v1/job/<id>/share/<key>``: GET/PUT ``<url>/<path>`` while the job runs), and
        valve-infra's ``job_bucket_access_key``/``_secret_key`` (the bucket name and the share's key: there
        is no S3 server here, so b2c's MinIO mirroring cannot use them; they keep templates rendering)."""
        key = key or self.shares.known_key(job_id)
        if key is None:  # Sgt. Hartman's jobs have no share
            return {}
        from urllib.parse import quote

        url = f"http://{self.api_host()}/api/v1/job/{quote(job_id, safe='')}/share/{key}"
        bucket = bucket_name(mac, job_id)
        return {"job_bucket": bucket, "job_share_url": url, "job_bucket_access_key": bucket,
                "job_bucket_secret_key": key}

    def finished_oldest_first(self) -> list[str]:
        """Jobs whose shares may make room for new ones (over, oldest first)."""
        done = [j for j in self.jobs.values() if j.done.is_set()]
        return [j.id for j in sorted(done, key=lambda j: j.row.ended_at or j.row.submitted_at)]

    async def _stage_share(self, key: str, tarball: Optional[bytes | Path]) -> Path:
        """Unpack the client's tarball (or make an empty share) in a staging directory."""
        try:
            return await asyncio.to_thread(self.shares.stage, key, tarball, self.finished_oldest_first())
        except ShareError as exc:
            raise FarmError(f"job share: {exc.message}", exc.status) from None
        except OSError as exc:
            raise FarmError(f"job share: cannot store it: {exc.strerror or exc}", 507) from None

    def _remove_shares(self, job_ids: list[str], staged: Optional[Path] = None) -> None:
        """Remove shares (and a staged one) in a thread, in the background (the history trim is synchronous)."""
        if not job_ids and staged is None:
            return

        async def remove() -> None:
            try:
                await asyncio.to_thread(self.shares.remove_many, job_ids)
                if staged is not None:
                    await asyncio.to_thread(self.shares.discard, staged)
            except Exception:  # noqa: BLE001 - logged; prune() at the next start catches leftovers
                log.exception("cannot remove the shares of %d job(s)", len(job_ids))

        task = asyncio.ensure_future(remove())
        self._share_tasks.add(task)
        task.add_done_callback(self._share_tasks.discard)


def _training_kind(job_id: str) -> Optional[str]:
    """The kind of a Sgt. Hartman job from the history (its id is ``train-<kind>-<mac>-...``), for display."""
    for kind in ("register", "bootloop"):
        if job_id.startswith(f"train-{kind}-"):
            return kind
    return None


def default_boot_urls(settings: "Settings", api_address: Optional[tuple[str, int]]) -> tuple[str, str, str]:
    """(kernel URL, initrd URL, api host:port) that unknown or idle DUTs boot."""
    host, port = api_address or ("127.0.0.1", 8000)
    if host in ("0.0.0.0", "::", ""):
        host = settings.private_address
    api_host = settings.boot_api_host or (f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    kernel = settings.boot_kernel_url or f"http://{api_host}/files/kernel"
    initrd = settings.boot_initrd_url or f"http://{api_host}/files/initramfs.cpio.xz"
    return kernel, initrd, api_host
