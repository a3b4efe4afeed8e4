"""The parse worker process (``worker_main``): renders and parses jobs under a CPU budget (RLIMIT_CPU) and a
memory limit (RLIMIT_DATA), requests and answers pickled over its stdin and stdout."""

from __future__ import annotations

import os
from typing import Any, Optional

from .errors import JobError
from .schema import Job, peek_target
from .source import _stage

WORKER_READY = b"R"


class _OverBudget(BaseException):
    """Raised by SIGXCPU in the worker; a BaseException so that no ``except Exception`` swallows it."""


_worker_busy = [False]


def _on_cpu_limit(signum: int, frame: Any) -> None:
    if _worker_busy[0]:
        _worker_busy[0] = False  # once: the unwinding code must not be interrupted again
        raise _OverBudget()


def _set_cpu_budget(seconds: Optional[float]) -> None:
    """Let this process use ``seconds`` more CPU (whole seconds, rounded up); None: no limit."""
    import math
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    if seconds is None:
        resource.setrlimit(resource.RLIMIT_CPU, (hard, hard))
        return
    usage = resource.getrusage(resource.RUSAGE_SELF)
    soft = math.ceil(usage.ru_utime + usage.ru_stime + seconds)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _work(kind: str, args: dict[str, Any]) -> Any:
    if kind == "peek":
        return peek_target(args["text"], variables=args.get("variables"))
    if kind == "parse":
        return Job.parse(
            args["text"], args.get("machine"), variables=args.get("variables"), defaults=args.get("defaults"),
            target=args.get("target"), strict=bool(args.get("strict")),
        )
    if kind == "ping":
        return "pong"
    raise ValueError(f"unknown request {kind!r}")


def _serve_request(kind: str, args: dict[str, Any], cpu_seconds: float, memory_bytes: int) -> tuple[str, Any]:
    """One request: ``("ok", result)``, ``("job", [(line, field, message), ...])`` for a JobError, or
    ``("limit", message)`` (the worker then exits: a fresh one replaces it)."""
    _stage[0] = "render"
    _worker_busy[0] = True
    _set_cpu_budget(cpu_seconds)
    try:
        return "ok", _work(kind, args)
    except _OverBudget:
        what = "render (Jinja2)" if _stage[0] == "render" else "parse (YAML)"
        return "limit", f"the job template took more than {cpu_seconds:g} s of CPU to {what}"
    except MemoryError:
        what = "render (Jinja2)" if _stage[0] == "render" else "parse (YAML)"
        return "limit", f"the job template needed more than {memory_bytes >> 20} MiB of memory to {what}"
    except JobError as exc:
        return "job", [(issue.line, issue.field, issue.message) for issue in exc.issues]
    except Exception as exc:  # noqa: BLE001 - any other failure of the parser is still the job's fault
        return "job", [(None, None, f"invalid job: {type(exc).__name__}: {exc}")]
    finally:
        _worker_busy[0] = False
        _set_cpu_budget(None)


def worker_main(memory_bytes: int) -> None:
    """The parse worker process: requests ``(kind, args, cpu_seconds)`` until stdin closes."""
    import pickle
    import resource
    import signal
    import struct
    import sys

    requests, answers = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but answers goes to the pipe
    signal.signal(signal.SIGXCPU, _on_cpu_limit)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the backend stops its workers (stdin EOF, or a kill)
    os.nice(10)  # the backend's event loop comes first when the CPU is short
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard == resource.RLIM_INFINITY or hard > memory_bytes:
        resource.setrlimit(resource.RLIMIT_DATA, (memory_bytes, hard))
    answers.write(WORKER_READY)
    answers.flush()
    while True:
        head = requests.read(4)
        if len(head) < 4:
            return
        (size,) = struct.unpack("!I", head)
        kind, args, cpu_seconds = pickle.loads(requests.read(size))
        outcome = _serve_request(kind, args, cpu_seconds, memory_bytes)
        try:
            body = pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # noqa: BLE001 - an answer that cannot be sent is said in words
            body = pickle.dumps(("job", [(None, None, f"invalid job: {type(exc).__name__}: {exc}")]))
        answers.write(struct.pack("!I", len(body)) + body)
        answers.flush()
        if outcome[0] == "limit":
            return
