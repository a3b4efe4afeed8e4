"""JobParser: job templates rendered and parsed in reused worker processes (``worker.worker_main``), never on
the event loop: each request under a CPU budget (``PARSE_CPU_SECONDS``), a worker under ``PARSE_MEMORY_BYTES``
and a wall-clock limit; over a limit the submission is a 400 (or the job ends SETUP_FAIL) saying which."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import struct
import sys
from typing import Any, Optional, TypeVar

from ..errors import Conflict, FarmError
from .errors import JobError, JobIssue
from .schema import Job, Target
from .templating import MachineInfo
from .worker import WORKER_READY

log = logging.getLogger("valve_console.backend.executor")
PARSE_WORKERS = 2  # processes rendering and parsing jobs (the gateway has few cores; each is ~50 MB)
PARSE_CPU_SECONDS = 2.0  # CPU a job may take to render and parse (a normal one takes a few ms)
PARSE_MEMORY_BYTES = 512 * 1024 * 1024  # RLIMIT_DATA of a worker
PARSE_MAX_WAITING = 64  # requests waiting for a worker beyond this are refused (503)
PARSE_START_TIMEOUT = 60.0  # seconds a new worker has to import its modules
_R = TypeVar("_R")
_WORKER_CODE = "import sys; from valve_console.backend.jobs.worker import worker_main; worker_main(int(sys.argv[1]))"


class _ParseWorker:
    """One worker process (jobs.worker_main) and its pipes; one request at a time."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.alive = True

    @classmethod
    async def start(cls, memory_bytes: int) -> "_ParseWorker":
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _WORKER_CODE, str(memory_bytes),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )
        worker = cls(proc)
        try:
            assert proc.stdout is not None
            ready = await asyncio.wait_for(proc.stdout.readexactly(1), PARSE_START_TIMEOUT)
            if ready != WORKER_READY:
                raise OSError(f"the job parser process said {ready!r} at start")
        except BaseException:
            await worker.kill()
            raise
        return worker

    async def call(self, request: bytes, wall: float) -> tuple[str, Any]:
        """Send one pickled request, read its answer within ``wall`` seconds (else the worker is killed)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        async with asyncio.timeout(wall):
            self.proc.stdin.write(struct.pack("!I", len(request)) + request)
            await self.proc.stdin.drain()
            (size,) = struct.unpack("!I", await self.proc.stdout.readexactly(4))
            answer = await self.proc.stdout.readexactly(size)
        # Unpickling a job compiles its console patterns again (bounded by jobs.MAX_PATTERN_CHARS): in a
        # thread, so that the loop keeps its turns.
        # The answer's shape is worker._serve_request's: (status, value), the value depending on the status.
        outcome: tuple[str, Any] = await asyncio.to_thread(pickle.loads, answer)
        if outcome[0] == "limit":  # the worker exits after a limit: a fresh one takes its place
            self.alive = False
        return outcome

    def kill(self) -> asyncio.Future[None]:
        """Kill it (if it runs); the future is done once it is reaped and its pipes are closed."""
        self.alive = False
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        return asyncio.ensure_future(self._reap())

    async def _reap(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.proc.communicate(), PARSE_START_TIMEOUT)  # to EOF: its pipes close


class JobParser:
    """Renders and parses job templates in worker processes, never on the event loop.

    At most ``workers`` processes, started at the first request and reused (a round trip costs well under
    a millisecond more than the parse itself). Each request gets ``cpu_seconds`` of CPU (RLIMIT_CPU in the
    worker) and a wall-clock limit (``wall_seconds``: the worker is killed); a worker has
    ``memory_bytes`` (RLIMIT_DATA). Over a limit, the job is refused in words (``JobError``); with more
    than ``max_waiting`` requests waiting, ``FarmError`` 503.
    """

    def __init__(
        self,
        workers: int = PARSE_WORKERS,
        cpu_seconds: float = PARSE_CPU_SECONDS,
        memory_bytes: int = PARSE_MEMORY_BYTES,
        max_waiting: int = PARSE_MAX_WAITING,
        wall_seconds: Optional[float] = None,
    ) -> None:
        self.cpu_seconds = cpu_seconds
        self.memory_bytes = memory_bytes
        self.max_waiting = max_waiting
        self.wall_seconds = wall_seconds if wall_seconds is not None else 5 * cpu_seconds + 5
        self._slots = asyncio.Semaphore(workers)
        self._idle: list[_ParseWorker] = []
        self._busy: set[_ParseWorker] = set()
        self._waiting = 0
        self._closed = False
        self._reaping: set[asyncio.Future[None]] = set()
        self.requests = 0  # answered requests, for tests and figures
        self.spawned = 0

    async def peek_target(self, text: str, variables: Optional[dict[str, Any]] = None) -> Target:
        return await self._call("peek", {"text": text, "variables": variables}, Target)

    async def parse(
        self,
        text: str,
        machine: Optional[MachineInfo],
        *,
        target: Optional[Target] = None,
        variables: Optional[dict[str, Any]] = None,
        defaults: Optional[dict[str, Any]] = None,
        strict: bool = False,
    ) -> Job:
        args = {"text": text, "machine": machine, "target": target, "variables": variables,
                "defaults": defaults, "strict": strict}
        return await self._call("parse", args, Job)

    async def _call(self, kind: str, args: dict[str, Any], result: type[_R]) -> _R:
        if self._closed:
            raise Conflict("the gateway is stopping")
        request = pickle.dumps((kind, args, self.cpu_seconds), protocol=pickle.HIGHEST_PROTOCOL)
        if self._waiting >= self.max_waiting:
            raise FarmError(f"the job parser is busy ({self._waiting} jobs wait for it); try again later", 503)
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        try:
            outcome = await self._on_a_worker(request)
        finally:
            self._slots.release()
        self.requests += 1
        status, value = outcome
        if status == "ok":
            assert isinstance(value, result), f"the job parser answered {kind!r} with a {type(value).__name__}"
            return value
        if status == "limit":
            raise JobError(value)
        raise JobError(issues=[JobIssue(line, where, message) for line, where, message in value])

    async def _on_a_worker(self, request: bytes) -> tuple[str, Any]:
        """The answer of an idle worker (or a new one). A reused worker that died meanwhile is replaced
        and the request sent again; a new worker that dies on the request is the job's doing (400)."""
        while True:
            reused = bool(self._idle)
            worker = self._idle.pop() if reused else await self._start_worker()
            self._busy.add(worker)
            done = False
            try:
                outcome = await worker.call(request, self.wall_seconds)
                done = True
                return outcome
            except TimeoutError:
                raise JobError(f"the job template took more than {self.wall_seconds:g} s to render and parse "
                               "(its worker was stopped)") from None
            except (OSError, asyncio.IncompleteReadError, pickle.UnpicklingError) as exc:
                if not reused:
                    why = f"exit status {worker.proc.returncode}" if worker.proc.returncode is not None else exc
                    raise JobError(f"the job template stopped the job parser ({why})") from None
                log.warning("a job parse worker had gone (%s); starting another", exc or type(exc).__name__)
            finally:
                self._busy.discard(worker)
                if done and worker.alive and not self._closed:
                    self._idle.append(worker)
                else:  # a limit, a timeout, a cancel mid-request (its answer would come to the next one)
                    self._kill(worker)

    async def _start_worker(self) -> _ParseWorker:
        try:
            worker = await _ParseWorker.start(self.memory_bytes)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as exc:
            raise FarmError(f"the job parser cannot start: {exc or type(exc).__name__}", 503) from None
        self.spawned += 1
        return worker

    def _kill(self, worker: _ParseWorker) -> None:
        reaped = worker.kill()
        self._reaping.add(reaped)
        reaped.add_done_callback(self._reaping.discard)

    async def close(self) -> None:
        self._closed = True
        for worker in [*self._idle, *self._busy]:
            self._kill(worker)
        self._idle.clear()
        if self._reaping:
            await asyncio.wait(list(self._reaping), timeout=PARSE_START_TIMEOUT)
