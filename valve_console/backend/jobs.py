"""Jobs: the valve-infra version 1 job description, its templating, timeouts and console state machine.

Pure code: no I/O, no threads, no event loop; every clock is injectable (except ``worker_main``, the
loop of the parse worker process that the backend runs it in: see the end of the module). The executor,
the job API and the job client build on it. valve-infra's job files keep working (reference ``valve-infra.md`` §4),
with its bugs fixed (§13): the deadline is enforced, ``continue`` deployments use their own URLs and
cmdline, ``EXECUTOR_JOB__*`` variables lose their prefix (not a set of characters), the target is read
without parsing the unrendered YAML, and ``machine_unfit_for_service`` counts only when it matched.

Public API
----------

Errors and enums
    ``JobError(ValueError)`` with ``.line`` (1-based, of the rendered job), ``.field`` (dotted path such as
    ``console_patterns.job_success.regex``), ``.message`` and ``.issues`` (every problem found, a list of
    ``JobIssue(line, field, message)``); ``str(err)`` is e.g.
    ``line 12: console_patterns.job_success.regex: invalid regex 'a(' (missing ), unterminated subpattern)``.
    ``JobStatus`` (IntEnum, also the client's exit code): PASS=0 WARN=1 COMPLETE=2 FAIL=3 INCOMPLETE=4
    UNKNOWN=5 SETUP_FAIL=6, ``JobStatus.from_str(name)`` (unknown → UNKNOWN).
    ``JobConsoleState`` (IntEnum, only moves forward): CREATED ACTIVE DUT_DONE TEAR_DOWN OVER.

Templating
    ``MachineInfo(mac_address, base_name, full_name, tags, ip_address, local_tty_device, ready_for_service)``,
    ``MachineInfo.from_json(machine_json)`` (the shape of ``MachineService.to_json``).
    ``job_variables(machine=None, env=None, variables=None, defaults=None) -> dict``: what a template sees
    (``defaults`` lowest):
    ``ready_for_service``, ``machine_id``, ``machine_tags``, ``local_tty_device``, ``machine`` (base_name,
    full_name, tags, ip_address, local_tty_device, ready_for_service), ``minio_url`` from ``MINIO_URL``, every
    ``EXECUTOR_JOB__<NAME>`` as ``<name>``, then ``variables`` (``minio_url``, ``job_bucket``,
    ``job_bucket_access_key``, ``job_bucket_secret_key``, ...) over all of these. ``env`` defaults to os.environ.
    ``render_job(text, machine=None, env=None, variables=None, *, undefined=None, defaults=None) -> str``:
    sandboxed Jinja2; without ``undefined`` an undefined variable is a ``JobError`` naming the line and the
    variable, with a list it renders empty as valve-infra's Jinja2 did and its name goes into the list.
    ``peek_target(text, env=None, variables=None) -> Target``: the target of a job not yet bound to a
    machine (machine variables undefined and rendering as empty), robust to Jinja outside quoted strings.

Schema (pydantic, unknown keys refused)
    ``Job`` (version, deadline, target, timeouts, console_patterns, deployment), ``Target(id, tags)``,
    ``TimeoutSpec``/``TimeoutsSpec``, ``Pattern`` (``.search(line: bytes) -> bool``), ``WatchdogPatterns``,
    ``ConsolePatterns``, ``Deployment`` (``start``, ``continue_`` alias ``continue``).
    ``Job.parse(text, machine=None, env=None, *, variables=None, defaults=None, target=None, now=None,
    enforce_deadline=True, strict=False)`` renders (``job.undefined_names``: what rendered empty) then loads
    (``machine=None`` uses ``PLACEHOLDER_MACHINE``: validation only).
    ``Job.load(rendered_text, *, target=None, now=None, enforce_deadline=True)`` loads YAML that is already
    rendered. ``target`` overrides the job's (the submission metadata's ``target``).
    ``job.rendered`` (the YAML text), ``job.deployment_for_boot(n) -> BootConfig`` (n = 0 for the first boot:
    ``start``; later boots: ``continue`` over ``start``), ``job.check_deadline(now=None)`` (raises ``JobError``),
    ``job.deadline_expired(now=None) -> bool``, ``job.make_timeouts(clock=time.monotonic, now=None) -> Timeouts``,
    ``job.make_console(timeouts=None, *, has_client=True, clock=None, max_line_length=...) -> JobConsole``.

Runtime
    ``Timeout(name, duration, retries=0, *, clock=time.monotonic, retryable=True)``: ``start(when=None)``,
    ``stop()``, ``reset(when=None)`` (re-base, starts it), ``is_started``, ``elapsed()``, ``remaining()``,
    ``has_expired(now=None)``, ``retry() -> bool`` (counts; True while another attempt is allowed).
    ``Timeouts(spec=None, *, clock=..., deadline=None)``: ``overall`` (never retries), ``infra_setup``,
    ``infra_teardown``, ``boot_cycle``, ``console_activity``, ``first_console_activity``, ``watchdogs``
    (name → Timeout), ``deadline`` (or None; started at creation, never retries); ``expired(now=None)``,
    ``start_boot()`` (§4.4 step 5), ``stop_boot()``, ``get(name)``, iteration.
    ``Watchdog(name, patterns, timeout)``: ``process_line(line) -> "<name>.start|reset|stop" | None``.
    ``JobConsole(patterns, timeouts=None, *, has_client=True, clock=None, max_line_length=16384)``:
    ``start_boot()``, ``feed(data) -> list[LineMatch]``, ``eof()``, ``advance(state)``, ``tear_down()``,
    ``close()``, ``job_status``, ``needs_reboot``, ``unfit_for_service``, ``session_ended``, ``state``,
    ``first_activity_at``, ``last_activity_at``; ``LineMatch(line, patterns).message`` is
    ``Matched the following patterns: ...``.

Parse worker
    ``worker_main(memory_bytes)``: the loop of a worker process (executor.JobParser starts it): requests
    ``(kind, args, cpu_seconds)`` (``peek``: peek_target, ``parse``: Job.parse) pickled on stdin, each under
    a CPU budget (RLIMIT_CPU), answers on stdout; the process under RLIMIT_DATA. A request over a limit is
    answered ``("limit", "the job template took more than 2 s of CPU to render (Jinja2)")`` and the worker
    exits. YAML composition stops after ``MAX_YAML_NODES`` nodes.

Built-in jobs (Sgt. Hartman)
    ``BUILTIN_TEMPLATES`` (``register``, ``bootloop``: Jinja2 text), ``BUILTIN_DEFAULTS`` (``registration_image``,
    ``mars_host``, ``ntp_peer``) and ``builtin_job(name, machine, *, default_kernel_url, default_initramfs_url,
    env=None, variables=None, now=None) -> Job``.
"""

from __future__ import annotations

import os
import re
import time
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from enum import IntEnum
from typing import Annotated, Any, Callable, Iterator, Mapping, NamedTuple, Optional, Sequence, Union

import jinja2
import yaml
from jinja2.sandbox import SandboxedEnvironment
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .boot import DEFAULT_REGISTRATION_IMAGE, DEFAULT_REGISTRY, BootConfig, validate_cmdline
from .rules import target_tags, validate_url

__all__ = [
    "BUILTIN_DEFAULTS",
    "BUILTIN_TEMPLATES",
    "ConsolePatterns",
    "DEFAULT_SESSION_END",
    "Deployment",
    "ENV_PREFIX",
    "Job",
    "JobConsole",
    "JobConsoleState",
    "JobError",
    "JobIssue",
    "JobStatus",
    "LineMatch",
    "MachineInfo",
    "PLACEHOLDER_MACHINE",
    "Pattern",
    "Target",
    "Timeout",
    "TimeoutSpec",
    "Timeouts",
    "TimeoutsSpec",
    "Watchdog",
    "WatchdogPatterns",
    "builtin_job",
    "job_variables",
    "peek_target",
    "render_job",
    "worker_main",
]

Clock = Callable[[], float]

ENV_PREFIX = "EXECUTOR_JOB__"
DEFAULT_SESSION_END = r"^\[[\d \.]{12}\] reboot: Power Down$"
MAX_JOB_CHARS = 1024 * 1024  # a job template or rendered job bigger than this is refused
MAX_YAML_NODES = 100_000  # nodes visited (aliases included): refuses "billion laughs" documents
MAX_PATTERN_CHARS = 4096  # a console pattern's regex (compiled again by the backend, ~2 ms per KiB)
MAX_WATCHDOGS = 32
DEFAULT_MAX_LINE_LENGTH = 16 * 1024  # console bytes kept per line for pattern matching
_stage = ["render"]  # what the parse worker is doing ("render" or "parse"), for its "took too long" message


# ------------------------------------------------------------------------------------------ errors


@dataclass(frozen=True)
class JobIssue:
    """One problem in a job: where (line of the rendered job, dotted field path) and what."""

    line: Optional[int]
    field: Optional[str]
    message: str

    def __str__(self) -> str:
        parts = []
        if self.line is not None:
            parts.append(f"line {self.line}")
        if self.field:
            parts.append(self.field)
        parts.append(self.message)
        return ": ".join(parts)


class JobError(ValueError):
    """An invalid job. ``str()`` lists every issue, one per line; ``.line``/``.field`` are the first one's."""

    def __init__(
        self,
        message: str = "",
        *,
        line: Optional[int] = None,
        field: Optional[str] = None,
        issues: Sequence[JobIssue] = (),
    ) -> None:
        self.issues: list[JobIssue] = list(issues) or [JobIssue(line, field, message)]
        first = self.issues[0]
        self.line: Optional[int] = first.line
        self.field: Optional[str] = first.field
        self.message: str = first.message
        super().__init__("\n".join(str(issue) for issue in self.issues))


class JobStatus(IntEnum):
    """The outcome of a job; the numbers are the job client's exit codes."""

    PASS = 0
    WARN = 1
    COMPLETE = 2
    FAIL = 3
    INCOMPLETE = 4
    UNKNOWN = 5
    SETUP_FAIL = 6

    @classmethod
    def from_str(cls, value: object) -> "JobStatus":
        """``"PASS"`` (any case) → PASS; anything unknown → UNKNOWN."""
        try:
            return cls[str(value).strip().upper()]
        except KeyError:
            return cls.UNKNOWN


class JobConsoleState(IntEnum):
    """Where a job's console is; it only ever moves forward."""

    CREATED = 0
    ACTIVE = 1
    DUT_DONE = 2
    TEAR_DOWN = 3
    OVER = 4


# ------------------------------------------------------------------------------------------ YAML with lines

_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"


class _JobLoader(yaml.SafeLoader):
    """SafeLoader without YAML 1.1 base-60 numbers: ``52:54:00:11:22:33`` stays a string (a MAC).

    It counts the nodes it composes (aliases included) and stops at ``MAX_YAML_NODES``: a 1 MiB flow
    list of 300,000 items is refused after a third of it, not composed whole first."""

    _composed = 0

    def compose_node(self, parent: Optional[yaml.Node], index: Any) -> Optional[yaml.Node]:
        self._composed += 1
        if self._composed > MAX_YAML_NODES:
            mark = self.peek_event().start_mark
            raise JobError(f"the job has more than {MAX_YAML_NODES} YAML nodes", line=mark.line + 1)
        return super().compose_node(parent, index)


_JobLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_INT, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_JobLoader.add_implicit_resolver(
    _INT,
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)
_JobLoader.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)

Path_ = tuple[Union[str, int], ...]


def _field_name(path: Sequence[Union[str, int]]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "job"


def _yaml_error(exc: yaml.YAMLError, text: str) -> JobError:
    line = None
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        if mark is not None:
            line = mark.line + 1
        problem = exc.problem or exc.context or "syntax error"
        if exc.context and exc.problem:
            where = exc.context_mark
            if where is not None and mark is not None and where.line != mark.line:
                problem = f"{exc.problem} ({exc.context} started on line {where.line + 1})"
            else:
                problem = f"{exc.problem} ({exc.context})"
    elif isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, max(exc.position, 0)) + 1
        problem = f"unacceptable character {chr(exc.character)!r}" if isinstance(exc.character, int) else str(exc)
    else:
        problem = str(exc)
    return JobError(f"invalid YAML: {problem}", line=line)


def _walk(node: yaml.Node, path: Path_, lines: dict[Path_, int], budget: list[int]) -> None:
    budget[0] += 1
    if budget[0] > MAX_YAML_NODES:
        raise JobError("the job has too many YAML nodes (aliases?)", line=node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else f"<{key_node.id}>"
            line = key_node.start_mark.line + 1
            sub = path + (key,)
            if key != "<<" and key in seen:
                raise JobError(f"duplicate key {key!r} (first on line {seen[key]})", line=line, field=_field_name(sub))
            seen[key] = line
            lines.setdefault(sub, line)
            _walk(value_node, sub, lines, budget)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            sub = path + (index,)
            lines.setdefault(sub, item.start_mark.line + 1)
            _walk(item, sub, lines, budget)


def _load_yaml(text: str) -> tuple[Any, dict[Path_, int]]:
    """Parse one YAML document; returns the data and the line (1-based) of every key/item path."""
    _stage[0] = "parse"
    try:
        loader = _JobLoader(text)  # reads the start of the stream: may raise ReaderError already
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, text) from None
    try:
        try:
            node = loader.get_single_node()
            if node is None:
                raise JobError("the job is empty", line=1)
            lines: dict[Path_, int] = {(): node.start_mark.line + 1}
            _walk(node, (), lines, [0])
            data = loader.construct_document(node)
        except yaml.YAMLError as exc:
            raise _yaml_error(exc, text) from None
        except RecursionError:
            raise JobError("the job's YAML is nested too deeply", line=1) from None
    finally:
        loader.dispose()
    return data, lines


def _line_for(path: Sequence[Union[str, int]], lines: Mapping[Path_, int]) -> Optional[int]:
    parts = tuple(path)
    while True:
        if parts in lines:
            return lines[parts]
        if not parts:
            return None
        parts = parts[:-1]


def _issue_message(err: Mapping[str, Any]) -> str:
    kind = err.get("type")
    if kind == "missing":
        return "field required"
    if kind == "extra_forbidden":
        return "unknown field (not in the version 1 job schema)"
    if kind in ("value_error", "assertion_error"):
        ctx = err.get("ctx") or {}
        if "error" in ctx:
            return str(ctx["error"])
    return str(err.get("msg", "invalid value"))


def _from_validation(exc: ValidationError, lines: Mapping[Path_, int], prefix: Path_ = ()) -> JobError:
    issues = []
    for err in exc.errors(include_url=False):
        loc = prefix + tuple(err["loc"])
        issues.append(JobIssue(_line_for(loc, lines), _field_name(loc), _issue_message(err)))
    issues.sort(key=lambda issue: issue.line or 0)
    return JobError(issues=issues)


# ------------------------------------------------------------------------------------------ schema


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Target(_Strict):
    """Which machine runs the job: a machine id (its MAC), tags it must all carry, or both.

    ``tags: []`` means any machine. A MAC given unquoted in YAML stays a string.
    """

    id: Optional[str] = None
    tags: list[str] = Field(default_factory=list)

    @field_validator("id")
    @classmethod
    def _id(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not v.strip():
            raise ValueError("the target id is empty")
        return None if v is None else v.strip()

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: list[str]) -> list[str]:
        return target_tags(v)

    @model_validator(mode="after")
    def _some(self) -> "Target":
        if self.id is None and "tags" not in self.model_fields_set:
            raise ValueError("a target needs an id, tags, or both")
        return self


_Amount = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class TimeoutSpec(_Strict):
    """A duration (sum of the units) and how many times hitting it may be retried."""

    days: _Amount = 0
    hours: _Amount = 0
    minutes: _Amount = 0
    seconds: _Amount = 0
    milliseconds: _Amount = 0
    retries: Annotated[StrictInt, Field(ge=0, le=1_000_000)] = 0

    @property
    def duration(self) -> timedelta:
        return timedelta(
            days=self.days, hours=self.hours, minutes=self.minutes, seconds=self.seconds, milliseconds=self.milliseconds
        )

    @model_validator(mode="after")
    def _positive(self) -> "TimeoutSpec":
        try:
            total = self.duration
        except OverflowError:
            raise ValueError("the timeout is too long") from None
        if total <= timedelta(0):
            raise ValueError("a timeout needs a duration (days, hours, minutes, seconds or milliseconds)")
        return self


class TimeoutsSpec(_Strict):
    """The job's timeouts; an unset one never expires (``overall`` 6 h and ``infra_teardown`` 10 min by default)."""

    overall: TimeoutSpec = Field(default_factory=lambda: TimeoutSpec(hours=6))
    infra_setup: Optional[TimeoutSpec] = None
    infra_teardown: TimeoutSpec = Field(default_factory=lambda: TimeoutSpec(minutes=10))
    boot_cycle: Optional[TimeoutSpec] = None
    console_activity: Optional[TimeoutSpec] = None
    first_console_activity: Optional[TimeoutSpec] = None
    watchdogs: dict[str, TimeoutSpec] = Field(default_factory=dict)

    @field_validator("overall", "infra_teardown")
    @classmethod
    def no_retries(cls, v: TimeoutSpec, info: ValidationInfo) -> TimeoutSpec:
        if v.retries != 0:
            raise ValueError(f"the {info.field_name} timeout cannot be retried: retries must be 0")
        return v

    @field_validator("watchdogs")
    @classmethod
    def watchdog_names(cls, v: dict[str, TimeoutSpec]) -> dict[str, TimeoutSpec]:
        _check_watchdog_names(v)
        return v


class Pattern(_Strict):
    """``{regex: ...}``: a bytes regex searched in each complete console line (``\\n`` included)."""

    regex: str
    _compiled: "re.Pattern[bytes]" = PrivateAttr()

    @field_validator("regex")
    @classmethod
    def _compiles(cls, v: str) -> str:
        if len(v) > MAX_PATTERN_CHARS:
            raise ValueError(f"the regex is longer than {MAX_PATTERN_CHARS} characters")
        try:
            re.compile(v.encode("utf-8"))
        except re.error as exc:
            raise ValueError(f"invalid regex {v!r} ({exc.msg})") from None
        return v

    def model_post_init(self, context: Any) -> None:
        self._compiled = re.compile(self.regex.encode("utf-8"))

    def search(self, line: bytes) -> bool:
        return self._compiled.search(line) is not None


class WatchdogPatterns(_Strict):
    start: Pattern
    reset: Pattern
    stop: Pattern


_WATCHDOG_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")


def _check_watchdog_names(names: Mapping[str, Any]) -> None:
    if len(names) > MAX_WATCHDOGS:
        raise ValueError(f"more than {MAX_WATCHDOGS} watchdogs")
    for name in names:
        if not _WATCHDOG_NAME.fullmatch(str(name)):
            raise ValueError(f"invalid watchdog name {str(name)[:40]!r} (letters, digits, '_', '.', '-')")


class ConsolePatterns(_Strict):
    session_end: Pattern = Field(default_factory=lambda: Pattern(regex=DEFAULT_SESSION_END))
    session_reboot: Optional[Pattern] = None
    job_success: Optional[Pattern] = None
    job_warn: Optional[Pattern] = None
    machine_unfit_for_service: Optional[Pattern] = None
    watchdogs: dict[str, WatchdogPatterns] = Field(default_factory=dict)

    @field_validator("watchdogs")
    @classmethod
    def _names(cls, v: dict[str, WatchdogPatterns]) -> dict[str, WatchdogPatterns]:
        _check_watchdog_names(v)
        return v


def _join_cmdline(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        for item in v:
            if not isinstance(item, str):
                raise ValueError(f"cmdline items must be strings, got {item!r:.40}")
        return " ".join(v)
    return v


def _check_cmdline(v: Optional[str]) -> Optional[str]:
    if v is None:
        return None
    try:
        return validate_cmdline(v.strip())
    except ValueError as exc:
        raise ValueError(f"{exc} (write a long cmdline as a list of strings)") from None


def _check_url(v: Optional[str]) -> Optional[str]:
    return None if v is None else validate_url(v.strip())


class _KernelChecks(_Strict):
    @field_validator("cmdline", mode="before", check_fields=False)
    @classmethod
    def join_cmdline(cls, v: Any) -> Any:
        return _join_cmdline(v)

    @field_validator("cmdline", check_fields=False)
    @classmethod
    def check_cmdline(cls, v: Optional[str]) -> Optional[str]:
        return _check_cmdline(v)

    @field_validator("url", check_fields=False)
    @classmethod
    def check_url(cls, v: Optional[str]) -> Optional[str]:
        return _check_url(v)


class _UrlCheck(_Strict):
    @field_validator("url", check_fields=False)
    @classmethod
    def check_url(cls, v: Optional[str]) -> Optional[str]:
        return _check_url(v)


class KernelSpec(_KernelChecks):
    url: str
    cmdline: str = ""


class InitramfsSpec(_UrlCheck):
    url: str


class DeploymentStart(_Strict):
    kernel: KernelSpec
    initramfs: Optional[InitramfsSpec] = None


class KernelOverride(_KernelChecks):
    url: Optional[str] = None
    cmdline: Optional[str] = None


class InitramfsOverride(_UrlCheck):
    url: Optional[str] = None


class DeploymentContinue(_Strict):
    kernel: Optional[KernelOverride] = None
    initramfs: Optional[InitramfsOverride] = None


class Deployment(_Strict):
    start: DeploymentStart
    continue_: Optional[DeploymentContinue] = Field(default=None, alias="continue")


# ------------------------------------------------------------------------------------------ templating


@dataclass(frozen=True)
class MachineInfo:
    """What a job template may know about its machine."""

    mac_address: str
    base_name: Optional[str] = None
    full_name: Optional[str] = None
    tags: tuple[str, ...] = ()
    ip_address: Optional[str] = None
    local_tty_device: Optional[str] = None
    ready_for_service: bool = False

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "MachineInfo":
        """From the machine JSON of the API (``mac_address``, ``base_name``, ``full_name``, ``tags``...)."""
        return cls(
            mac_address=str(data["mac_address"]),
            base_name=data.get("base_name"),
            full_name=data.get("full_name"),
            tags=tuple(data.get("tags") or ()),
            ip_address=data.get("ip_address"),
            local_tty_device=data.get("local_tty_device"),
            ready_for_service=bool(data.get("ready_for_service", False)),
        )

    def safe_attributes(self) -> dict[str, Any]:
        return {
            "base_name": self.base_name,
            "full_name": self.full_name,
            "tags": list(self.tags),
            "ip_address": self.ip_address,
            "local_tty_device": self.local_tty_device,
            "ready_for_service": self.ready_for_service,
        }


# Used by Job.parse(machine=None): validating a job before a machine is chosen.
PLACEHOLDER_MACHINE = MachineInfo(
    mac_address="00:00:00:00:00:00",
    base_name="placeholder",
    full_name="placeholder-1",
    tags=(),
    ip_address="192.0.2.1",
    local_tty_device="ttyS0",
    ready_for_service=True,
)

MachineLike = Union[MachineInfo, Mapping[str, Any]]


def _machine(machine: Optional[MachineLike]) -> Optional[MachineInfo]:
    if machine is None or isinstance(machine, MachineInfo):
        return machine
    return MachineInfo.from_json(machine)


def job_variables(
    machine: Optional[MachineLike] = None,
    env: Optional[Mapping[str, str]] = None,
    variables: Optional[Mapping[str, Any]] = None,
    defaults: Optional[Mapping[str, Any]] = None,
) -> dict[str, Any]:
    """The variables of a job template, lowest precedence first: ``defaults``, environment, machine,
    ``variables``.

    From ``env`` (default ``os.environ``): ``MINIO_URL`` as ``minio_url`` and each ``EXECUTOR_JOB__<NAME>``
    as ``<name>`` (prefix removed, lower-cased: ``EXECUTOR_JOB__TOKEN`` → ``token``).
    The executor passes the job share's ``job_bucket`` and ``job_share_url`` in ``variables`` (share.py);
    valve-infra's MinIO credentials (``job_bucket_access_key``/``_secret_key``) do not exist here.
    """
    source = os.environ if env is None else env
    out: dict[str, Any] = dict(defaults or {})
    if "MINIO_URL" in source:
        out["minio_url"] = source["MINIO_URL"]
    for key, value in source.items():
        if key.startswith(ENV_PREFIX) and len(key) > len(ENV_PREFIX):
            out[key[len(ENV_PREFIX) :].lower()] = value
    info = _machine(machine)
    if info is not None:
        out.update(
            ready_for_service=info.ready_for_service,
            machine_id=info.mac_address,
            machine_tags=list(info.tags),
            local_tty_device=info.local_tty_device,
            machine=info.safe_attributes(),
        )
    if variables:
        out.update(variables)
    return out


class _JobSandbox(SandboxedEnvironment):
    """The sandbox, plus limits on ``*`` and ``**`` so that a template cannot eat the memory."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, count in ((left, right), (right, left)):
                if isinstance(seq, (str, bytes, list, tuple)) and isinstance(count, int):
                    if len(seq) * count > MAX_JOB_CHARS:
                        raise jinja2.exceptions.SecurityError("the repetition is too large")
        if operator == "**" and isinstance(right, (int, float)) and abs(right) > 1024:
            raise jinja2.exceptions.SecurityError("the exponent is too large")
        return super().call_binop(context, operator, left, right)


_UNDEFINED_SEEN: ContextVar[Optional[list[str]]] = ContextVar("undefined_seen", default=None)


class _NotedUndefined(jinja2.Undefined):
    """valve-infra rendered with Jinja2's default ``Undefined``: an undefined name is empty and false (its
    attributes still raise). We render the same, and note each name so that the job's log can warn."""

    __slots__ = ()

    def _note(self) -> None:
        seen = _UNDEFINED_SEEN.get()
        if seen is not None and self._undefined_name and self._undefined_name not in seen:
            seen.append(str(self._undefined_name))

    def __str__(self) -> str:
        self._note()
        return ""

    def __iter__(self) -> Iterator[Any]:
        self._note()
        return iter(())

    def __bool__(self) -> bool:
        self._note()
        return False

    def __len__(self) -> int:
        self._note()
        return 0


_STRICT_ENV = _JobSandbox(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True)
_VALVE_ENV = _JobSandbox(undefined=_NotedUndefined, autoescape=False, keep_trailing_newline=True)
_LENIENT_ENV = _JobSandbox(undefined=jinja2.ChainableUndefined, autoescape=False, keep_trailing_newline=True)


def _template_line(exc: BaseException) -> Optional[int]:
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _render(text: str, variables: Mapping[str, Any], environment: SandboxedEnvironment) -> str:
    _stage[0] = "render"
    if not isinstance(text, str):
        raise JobError("the job must be text")
    if len(text) > MAX_JOB_CHARS:
        raise JobError(f"the job is larger than {MAX_JOB_CHARS} characters")
    try:
        template = environment.from_string(text)
    except jinja2.TemplateSyntaxError as exc:
        raise JobError(f"template syntax error: {exc.message}", line=exc.lineno) from None
    chunks: list[str] = []
    size = 0
    try:
        for chunk in template.generate(dict(variables)):
            size += len(chunk)
            if size > MAX_JOB_CHARS:
                raise JobError(f"the rendered job is larger than {MAX_JOB_CHARS} characters")
            chunks.append(chunk)
    except (JobError, MemoryError):  # MemoryError: the parse worker's memory limit, said there
        raise
    except jinja2.exceptions.SecurityError as exc:
        raise JobError(f"template error: unsafe operation refused: {exc}", line=_template_line(exc)) from None
    except jinja2.TemplateError as exc:
        raise JobError(f"template error: {exc.message or exc}", line=_template_line(exc)) from None
    except Exception as exc:  # errors of the template's own expressions: 1/0, "a" + 1, ...
        raise JobError(f"template error: {type(exc).__name__}: {exc}", line=_template_line(exc)) from None
    return "".join(chunks)


def render_job(
    text: str,
    machine: Optional[MachineLike] = None,
    env: Optional[Mapping[str, str]] = None,
    variables: Optional[Mapping[str, Any]] = None,
    *,
    undefined: Optional[list[str]] = None,
    defaults: Optional[Mapping[str, Any]] = None,
) -> str:
    """Render a job template in a Jinja2 sandbox.

    Without ``undefined`` an undefined variable is a ``JobError`` naming it (the built-in jobs). With a
    list, it renders as valve-infra's Jinja2 did (empty, false) and its name is appended to the list.
    ``machine=None`` gives no machine variables at all.
    """
    values = job_variables(machine, env, variables, defaults)
    if undefined is None:
        return _render(text, values, _STRICT_ENV)
    token = _UNDEFINED_SEEN.set(undefined)
    try:
        return _render(text, values, _VALVE_ENV)
    finally:
        _UNDEFINED_SEEN.reset(token)


def _target_block(text: str) -> Optional[str]:
    """The top-level ``target:`` block of a YAML text, padded so that its lines keep their numbers."""
    lines = text.splitlines(keepends=True)
    for index, line in enumerate(lines):
        if re.match(r"^target\s*:", line):
            end = index + 1
            while end < len(lines) and (not lines[end].strip() or lines[end][0] in " \t#"):
                end += 1
            return "\n" * index + "".join(lines[index:end])
    return None


def _target_from(data: Any, lines: Mapping[Path_, int]) -> "Target":
    if not isinstance(data, dict):
        raise JobError("the job must be a YAML mapping (key: value lines)", line=lines.get((), 1))
    if "target" not in data:
        raise JobError("field required", line=lines.get((), 1), field="target")
    try:
        return Target.model_validate(data["target"])
    except ValidationError as exc:
        raise _from_validation(exc, lines, prefix=("target",)) from None


def peek_target(
    text: str, env: Optional[Mapping[str, str]] = None, variables: Optional[Mapping[str, Any]] = None
) -> Target:
    """The target of a job template before any machine is chosen (fixes valve-infra §13.12).

    The template is rendered with the environment variables and ``variables`` but no machine: machine
    variables are undefined and render as empty/false, so ``{% if %}`` blocks and unquoted ``{{ }}``
    outside the target do not matter. If that fails, the top-level ``target:`` block is cut out of the
    rendered (or raw) text and parsed alone. Raises ``JobError`` (line, ``target...`` field).
    """
    first_error: Optional[JobError] = None
    rendered: Optional[str] = None
    try:
        rendered = _render(text, job_variables(None, env, variables), _LENIENT_ENV)
    except JobError as exc:
        first_error = exc
    if rendered is not None:
        try:
            data, lines = _load_yaml(rendered)
        except JobError as exc:
            first_error = exc
        else:
            return _target_from(data, lines)
    for candidate in (rendered, text):
        block = _target_block(candidate) if candidate is not None else None
        if block is None:
            continue
        try:
            data, lines = _load_yaml(block)
        except JobError:
            continue
        return _target_from(data, lines)
    if first_error is not None:
        raise first_error
    raise JobError("field required", line=1, field="target")


# ------------------------------------------------------------------------------------------ the job


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class Job(_Strict):
    """A validated version 1 job. Build it with :meth:`parse` (template) or :meth:`load` (rendered YAML)."""

    version: int = 1
    deadline: Optional[datetime] = None
    target: Target
    timeouts: TimeoutsSpec = Field(default_factory=TimeoutsSpec)
    console_patterns: ConsolePatterns
    deployment: Deployment

    _rendered: str = PrivateAttr(default="")
    _lines: dict[Path_, int] = PrivateAttr(default_factory=dict)
    _undefined: list[str] = PrivateAttr(default_factory=list)

    @field_validator("version", mode="before")
    @classmethod
    def _version_type(cls, v: Any) -> Any:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"the version must be an integer, got {v!r:.40}")
        if v != 1:
            raise ValueError(f"unsupported job version {v}: only version 1 is supported")
        return v

    @field_validator("deadline", mode="before")
    @classmethod
    def _deadline_date(cls, v: Any) -> Any:
        if isinstance(v, date) and not isinstance(v, datetime):
            return datetime(v.year, v.month, v.day, tzinfo=timezone.utc)
        return v

    @field_validator("deadline")
    @classmethod
    def _deadline_utc(cls, v: Optional[datetime]) -> Optional[datetime]:
        return None if v is None else _utc(v)

    # ---------------------------------------------------------------- construction
    @classmethod
    def load(
        cls,
        text: str,
        *,
        target: Optional[Target] = None,
        now: Optional[datetime] = None,
        enforce_deadline: bool = True,
    ) -> "Job":
        """Validate an already rendered job. ``target`` replaces the job's own (submission metadata)."""
        if not isinstance(text, str):
            raise JobError("the job must be text")
        if len(text) > MAX_JOB_CHARS:
            raise JobError(f"the job is larger than {MAX_JOB_CHARS} characters")
        data, lines = _load_yaml(text)
        if not isinstance(data, dict):
            raise JobError("the job must be a YAML mapping (key: value lines)", line=lines.get((), 1))
        if target is not None:
            data = {**data, "target": target.model_dump(exclude_unset=True)}
        try:
            job = cls.model_validate(data)
        except ValidationError as exc:
            raise _from_validation(exc, lines) from None
        job._rendered = text
        job._lines = lines
        job._post_checks()
        if enforce_deadline:
            job.check_deadline(now)
        return job

    @classmethod
    def parse(
        cls,
        text: str,
        machine: Optional[MachineLike] = None,
        env: Optional[Mapping[str, str]] = None,
        *,
        variables: Optional[Mapping[str, Any]] = None,
        defaults: Optional[Mapping[str, Any]] = None,
        target: Optional[Target] = None,
        now: Optional[datetime] = None,
        enforce_deadline: bool = True,
        strict: bool = False,
    ) -> "Job":
        """Render the template for ``machine`` (``None``: :data:`PLACEHOLDER_MACHINE`) and validate it.

        An undefined variable renders empty as in valve-infra (``job.undefined_names`` lists them), or
        with ``strict`` is a ``JobError``. Line numbers in errors are those of the rendered job (the
        template's, unless Jinja blocks added or removed lines); ``job.rendered`` holds it.
        """
        undefined: Optional[list[str]] = None if strict else []
        rendered = render_job(
            text, machine if machine is not None else PLACEHOLDER_MACHINE, env, variables,
            undefined=undefined, defaults=defaults,
        )
        job = cls.load(rendered, target=target, now=now, enforce_deadline=enforce_deadline)
        job._undefined = list(undefined or ())
        return job

    def _post_checks(self) -> None:
        issues = []
        for name in self.console_patterns.watchdogs:
            if name not in self.timeouts.watchdogs:
                path = ("console_patterns", "watchdogs", name)
                issues.append(
                    JobIssue(
                        _line_for(path, self._lines),
                        _field_name(path),
                        f"no timeout for this watchdog: add timeouts.watchdogs.{name}",
                    )
                )
        if issues:
            raise JobError(issues=issues)

    # ---------------------------------------------------------------- accessors
    @property
    def rendered(self) -> str:
        """The YAML text this job was loaded from (after templating)."""
        return self._rendered

    @property
    def undefined_names(self) -> list[str]:
        """Template variables that were undefined and rendered empty (valve-infra's Jinja2 default)."""
        return list(self._undefined)

    def line_of(self, *path: Union[str, int]) -> Optional[int]:
        """Line of a field in :attr:`rendered` (or of its closest parent present there)."""
        return _line_for(path, self._lines)

    def deployment_for_boot(self, n: int) -> BootConfig:
        """The boot config of boot number ``n`` (0-based): ``start`` first, then ``continue`` over ``start``.

        ``continue`` fields override ``start``'s one by one: its own kernel URL, cmdline and initramfs
        URL when given (valve-infra used the start URLs and put the URL in the cmdline).
        """
        if n < 0:
            raise ValueError("the boot number starts at 0")
        start = self.deployment.start
        kernel_url = start.kernel.url
        cmdline = start.kernel.cmdline
        initrd = start.initramfs.url if start.initramfs is not None else None
        more = self.deployment.continue_
        if n > 0 and more is not None:
            if more.kernel is not None:
                if more.kernel.url is not None:
                    kernel_url = more.kernel.url
                if more.kernel.cmdline is not None:
                    cmdline = more.kernel.cmdline
            if more.initramfs is not None and more.initramfs.url is not None:
                initrd = more.initramfs.url
        return BootConfig(kernel_url=kernel_url, initrd_url=initrd, cmdline=cmdline)

    def deadline_expired(self, now: Optional[datetime] = None) -> bool:
        if self.deadline is None:
            return False
        current = _utc(now) if now is not None else datetime.now(timezone.utc)
        return current >= self.deadline

    def check_deadline(self, now: Optional[datetime] = None) -> None:
        """Raise ``JobError`` (field ``deadline``) when the deadline has passed."""
        if self.deadline_expired(now):
            raise JobError(
                f"the deadline {self.deadline.isoformat()} has passed",  # type: ignore[union-attr]
                line=self.line_of("deadline"),
                field="deadline",
            )

    def make_timeouts(self, clock: Clock = time.monotonic, now: Optional[datetime] = None) -> "Timeouts":
        """The runtime timeouts of this job; with a deadline, a ``deadline`` timeout runs from now."""
        remaining = None
        if self.deadline is not None:
            current = _utc(now) if now is not None else datetime.now(timezone.utc)
            remaining = (self.deadline - current).total_seconds()
        return Timeouts(self.timeouts, clock=clock, deadline=remaining)

    def make_console(
        self,
        timeouts: Optional["Timeouts"] = None,
        *,
        has_client: bool = True,
        clock: Optional[Clock] = None,
        max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
    ) -> "JobConsole":
        return JobConsole(
            self.console_patterns, timeouts, has_client=has_client, clock=clock, max_line_length=max_line_length
        )


# ------------------------------------------------------------------------------------------ timeouts


class Timeout:
    """A stopwatch with a limit and a retry budget. ``duration`` None: never expires. Time from ``clock``."""

    def __init__(
        self,
        name: str,
        duration: Union[timedelta, float, None],
        retries: int = 0,
        *,
        clock: Clock = time.monotonic,
        retryable: bool = True,
    ) -> None:
        self.name = name
        self.duration: Optional[float] = duration.total_seconds() if isinstance(duration, timedelta) else duration
        self.retries = retries if retryable else 0
        self.retryable = retryable
        self.retried = 0
        self.clock = clock
        self.started_at: Optional[float] = None

    @classmethod
    def from_spec(
        cls, name: str, spec: Optional[TimeoutSpec], *, clock: Clock = time.monotonic, retryable: bool = True
    ) -> "Timeout":
        if spec is None:
            return cls(name, None, 0, clock=clock, retryable=retryable)
        return cls(name, spec.duration, spec.retries, clock=clock, retryable=retryable)

    @property
    def is_started(self) -> bool:
        return self.started_at is not None

    def start(self, when: Optional[float] = None) -> None:
        """Start (or restart) the stopwatch at ``when`` (default: now)."""
        self.started_at = self.clock() if when is None else when

    def stop(self) -> None:
        self.started_at = None

    def reset(self, when: Optional[float] = None) -> None:
        """Re-base the stopwatch to ``when`` (default: now); starts it if it was stopped."""
        self.start(when)

    def elapsed(self, now: Optional[float] = None) -> Optional[float]:
        if self.started_at is None:
            return None
        return (self.clock() if now is None else now) - self.started_at

    def remaining(self, now: Optional[float] = None) -> Optional[float]:
        """Seconds left, or None when stopped or unlimited (may be negative once expired)."""
        elapsed = self.elapsed(now)
        if elapsed is None or self.duration is None:
            return None
        return self.duration - elapsed

    def has_expired(self, now: Optional[float] = None) -> bool:
        elapsed = self.elapsed(now)
        return elapsed is not None and self.duration is not None and elapsed >= self.duration

    @property
    def can_retry(self) -> bool:
        return self.retryable and self.retried < self.retries

    def retry(self) -> bool:
        """Count one more hit of this timeout; True if the job may try again, False to abort."""
        self.retried += 1
        return self.retryable and self.retried <= self.retries

    def __repr__(self) -> str:
        limit = "unlimited" if self.duration is None else str(timedelta(seconds=self.duration))
        state = "running" if self.is_started else "stopped"
        return f"<Timeout {self.name}: {limit}, {state}, retried {self.retried}/{self.retries}>"


class Timeouts:
    """All of a job's timeouts at run time."""

    NAMES = ("overall", "infra_setup", "infra_teardown", "boot_cycle", "console_activity", "first_console_activity")

    def __init__(
        self, spec: Optional[TimeoutsSpec] = None, *, clock: Clock = time.monotonic, deadline: Optional[float] = None
    ) -> None:
        spec = spec if spec is not None else TimeoutsSpec()
        self.clock = clock
        self.overall = Timeout.from_spec("overall", spec.overall, clock=clock, retryable=False)
        self.infra_setup = Timeout.from_spec("infra_setup", spec.infra_setup, clock=clock)
        self.infra_teardown = Timeout.from_spec("infra_teardown", spec.infra_teardown, clock=clock, retryable=False)
        self.boot_cycle = Timeout.from_spec("boot_cycle", spec.boot_cycle, clock=clock)
        self.console_activity = Timeout.from_spec("console_activity", spec.console_activity, clock=clock)
        self.first_console_activity = Timeout.from_spec(
            "first_console_activity", spec.first_console_activity, clock=clock
        )
        self.watchdogs: dict[str, Timeout] = {
            name: Timeout.from_spec(f"watchdogs.{name}", wd, clock=clock) for name, wd in spec.watchdogs.items()
        }
        self.deadline: Optional[Timeout] = None
        if deadline is not None:
            self.deadline = Timeout("deadline", deadline, clock=clock, retryable=False)
            self.deadline.start()

    def __iter__(self) -> Iterator[Timeout]:
        yield self.overall
        if self.deadline is not None:
            yield self.deadline
        yield self.infra_setup
        yield self.infra_teardown
        yield self.boot_cycle
        yield self.first_console_activity
        yield self.console_activity
        yield from self.watchdogs.values()

    def get(self, name: str) -> Timeout:
        """By name: ``overall``, ``deadline``, ``watchdogs.<name>``..."""
        for timeout in self:
            if timeout.name == name:
                return timeout
        raise KeyError(name)

    def expired(self, now: Optional[float] = None) -> list[Timeout]:
        when = self.clock() if now is None else now
        return [t for t in self if t.has_expired(when)]

    def start_boot(self) -> None:
        """At each power-on: start ``boot_cycle`` and ``first_console_activity``; stop ``console_activity``
        and every watchdog."""
        self.boot_cycle.start()
        self.first_console_activity.start()
        self.console_activity.stop()
        for watchdog in self.watchdogs.values():
            watchdog.stop()

    def stop_boot(self) -> None:
        """After a boot: stop the per-boot timeouts."""
        for timeout in (self.boot_cycle, self.first_console_activity, self.console_activity):
            timeout.stop()
        for watchdog in self.watchdogs.values():
            watchdog.stop()


# ------------------------------------------------------------------------------------------ console


class Watchdog:
    """A console watchdog: stopped → ``start`` match starts it; running → ``reset`` re-bases, else ``stop`` stops."""

    def __init__(self, name: str, patterns: WatchdogPatterns, timeout: Timeout) -> None:
        self.name = name
        self.patterns = patterns
        self.timeout = timeout

    @property
    def running(self) -> bool:
        return self.timeout.is_started

    def process_line(self, line: bytes, now: Optional[float] = None) -> Optional[str]:
        if not self.running:
            if self.patterns.start.search(line):
                self.timeout.start(now)
                return f"{self.name}.start"
        elif self.patterns.reset.search(line):
            self.timeout.reset(now)
            return f"{self.name}.reset"
        elif self.patterns.stop.search(line):
            self.timeout.stop()
            return f"{self.name}.stop"
        return None


class LineMatch(NamedTuple):
    """A console line and the names of the patterns it matched."""

    line: bytes
    patterns: tuple[str, ...]

    @property
    def message(self) -> str:
        return "Matched the following patterns: " + ", ".join(self.patterns)


@dataclass
class _BootState:
    index: int = 0
    saw_newline: bool = False
    first_activity_at: Optional[float] = None


class JobConsole:
    """The console side of one job: fed the DUT's bytes, it matches patterns line by line and says
    how the job went. Pure; the executor owns the sockets.

    - lines are split on ``\\n`` (kept in the line, ``\\r`` too); at most ``max_line_length`` bytes of a
      line are kept for matching, the rest is dropped (counted in ``truncated_lines``);
    - ``session_end`` or ``machine_unfit_for_service`` matching ends the session (``DUT_DONE``, then
      ``OVER`` when there is no client); so does :meth:`eof`;
    - with ``timeouts``: the first newline of a boot stops ``first_console_activity``, and every chunk
      after it re-bases ``console_activity``; watchdogs drive ``timeouts.watchdogs``.
    """

    def __init__(
        self,
        patterns: ConsolePatterns,
        timeouts: Optional[Timeouts] = None,
        *,
        has_client: bool = True,
        clock: Optional[Clock] = None,
        max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
    ) -> None:
        if max_line_length < 1:
            raise ValueError("max_line_length must be positive")
        self.patterns = patterns
        self.timeouts = timeouts
        self.has_client = has_client
        self.clock: Clock = clock or (timeouts.clock if timeouts is not None else time.monotonic)
        self.max_line_length = max_line_length
        self.state = JobConsoleState.CREATED
        self.session_end_matched = False
        self.job_success_matched = False
        self.job_warn_matched = False
        self.unfit_for_service = False
        self.needs_reboot = False
        self.last_activity_at: Optional[float] = None
        self.lines = 0
        self.truncated_lines = 0
        self.bytes_received = 0
        self.matched: dict[str, int] = {}
        self._boot = _BootState()
        self._buffer = bytearray()
        self._truncated = False
        self.watchdogs: dict[str, Watchdog] = {}
        for name, wd in patterns.watchdogs.items():
            timer = timeouts.watchdogs.get(name) if timeouts is not None else None
            if timer is None:
                timer = Timeout(f"watchdogs.{name}", None, clock=self.clock)
            self.watchdogs[name] = Watchdog(name, wd, timer)

    # ---------------------------------------------------------------- state
    @property
    def boot(self) -> int:
        """Boots started so far (0 before the first :meth:`start_boot`)."""
        return self._boot.index

    @property
    def first_activity_at(self) -> Optional[float]:
        """Clock time of the first newline of the current boot."""
        return self._boot.first_activity_at

    @property
    def session_ended(self) -> bool:
        return self.state >= JobConsoleState.DUT_DONE

    def advance(self, state: JobConsoleState) -> bool:
        """Move forward to ``state``; going backwards is ignored (False). DUT_DONE without client is OVER."""
        if state <= self.state:
            return False
        if state == JobConsoleState.DUT_DONE and not self.has_client:
            state = JobConsoleState.OVER
        self.state = state
        return True

    def tear_down(self) -> bool:
        return self.advance(JobConsoleState.TEAR_DOWN)

    def close(self) -> bool:
        """The client went away (EOF, socket error) or the session is over."""
        return self.advance(JobConsoleState.OVER)

    @property
    def job_status(self) -> JobStatus:
        if not self.session_end_matched:
            return JobStatus.INCOMPLETE
        if self.patterns.job_success is None:
            return JobStatus.COMPLETE
        if not self.job_success_matched:
            return JobStatus.FAIL
        return JobStatus.WARN if self.job_warn_matched else JobStatus.PASS

    def start_boot(self) -> None:
        """A new boot (power-on): reset the per-boot state (reboot request, first activity, partial line,
        watchdogs) and, with timeouts, :meth:`Timeouts.start_boot`."""
        self._boot = _BootState(index=self._boot.index + 1)
        self.needs_reboot = False
        self._buffer.clear()
        self._truncated = False
        if self.timeouts is not None:
            self.timeouts.start_boot()
        for watchdog in self.watchdogs.values():
            watchdog.timeout.stop()

    # ---------------------------------------------------------------- input
    def feed(self, data: bytes) -> list[LineMatch]:
        """Take bytes from the DUT; returns the complete lines that matched a pattern."""
        if not data or self.state >= JobConsoleState.TEAR_DOWN:
            return []
        if self.state == JobConsoleState.CREATED:
            self.advance(JobConsoleState.ACTIVE)
        now = self.clock()
        self.bytes_received += len(data)
        self.last_activity_at = now
        results: list[LineMatch] = []
        start = 0
        saw_newline = False
        while start < len(data):
            newline = data.find(b"\n", start)
            if newline < 0:
                self._keep(data[start:])
                break
            saw_newline = True
            self._keep(data[start:newline])
            line = bytes(self._buffer) + b"\n"
            self._buffer.clear()
            if self._truncated:
                self.truncated_lines += 1
                self._truncated = False
            match = self._process(line, now)
            if match is not None:
                results.append(match)
            start = newline + 1
        self._activity(now, saw_newline)
        return results

    def eof(self) -> list[LineMatch]:
        """The DUT's console closed: match the partial last line, if any, and end the session."""
        results: list[LineMatch] = []
        if self._buffer and self.state < JobConsoleState.TEAR_DOWN:
            line = bytes(self._buffer)
            self._buffer.clear()
            match = self._process(line, self.clock())
            if match is not None:
                results.append(match)
        self.advance(JobConsoleState.DUT_DONE)
        return results

    def _keep(self, chunk: bytes) -> None:
        room = self.max_line_length - len(self._buffer)
        if len(chunk) > room:
            self._truncated = True
            chunk = chunk[: max(room, 0)]
        if chunk:
            self._buffer += chunk

    def _activity(self, now: float, saw_newline: bool) -> None:
        boot = self._boot
        if saw_newline and not boot.saw_newline:
            boot.saw_newline = True
            boot.first_activity_at = now
            if self.timeouts is not None:
                self.timeouts.first_console_activity.stop()
        if boot.saw_newline and self.timeouts is not None:
            self.timeouts.console_activity.reset(now)

    def _process(self, line: bytes, now: float) -> Optional[LineMatch]:
        self.lines += 1
        p = self.patterns
        names: list[str] = []
        ended = False
        if p.session_end.search(line):
            names.append("session_end")
            self.session_end_matched = True
            ended = True
        if p.session_reboot is not None and p.session_reboot.search(line):
            names.append("session_reboot")
            self.needs_reboot = True
        if p.job_success is not None and p.job_success.search(line):
            names.append("job_success")
            self.job_success_matched = True
        if p.job_warn is not None and p.job_warn.search(line):
            names.append("job_warn")
            self.job_warn_matched = True
        if p.machine_unfit_for_service is not None and p.machine_unfit_for_service.search(line):
            names.append("machine_unfit_for_service")
            self.unfit_for_service = True
            ended = True
        for watchdog in self.watchdogs.values():
            event = watchdog.process_line(line, now)
            if event is not None:
                names.append(event)
        if ended:
            self.advance(JobConsoleState.DUT_DONE)
        if not names:
            return None
        for name in names:
            self.matched[name] = self.matched.get(name, 0) + 1
        return LineMatch(line, tuple(names))


# ------------------------------------------------------------------------------------------ built-in jobs

REGISTER_JOB_TEMPLATE = """\
version: 1
target:
  id: '{{ machine_id }}'
timeouts:
  overall:
    minutes: 5
console_patterns:
  session_end:
    regex: '^MaRS: Registration .*$'
  job_success:
    regex: '^MaRS: Registration complete$'
deployment:
  start:
    kernel:
      url: '{{ default_kernel_url }}'
      cmdline:
        - 'b2c.container="-ti --tls-verify=false {{ registration_image }} -m {{ mars_host }} register"'
        - 'b2c.ntp_peer={{ ntp_peer }}'
        - 'b2c.cache_device=auto'
        - '{% if local_tty_device %}console={{ local_tty_device }},115200 {% endif %}SALAD.machine_id={{ machine_id }}'
    initramfs:
      url: '{{ default_initramfs_url }}'
"""

BOOTLOOP_JOB_TEMPLATE = """\
version: 1
target:
  id: '{{ machine_id }}'
timeouts:
  first_console_activity:
    minutes: 2
    retries: 0
  overall:
    minutes: 3
console_patterns:
  session_end:
    regex: '^.*It''s now safe to turn off your computer\\r$'
  job_success:
    regex: '^.*Execution is over, pipeline status: 0\\r$'
  job_warn:
    regex: '^The configured console is not connected to SALAD$'
deployment:
  start:
    kernel:
      url: '{{ default_kernel_url }}'
      cmdline:
        - 'b2c.container="-ti --tls-verify=false {{ registration_image }} -m {{ mars_host }} check"'
        - 'b2c.ntp_peer={{ ntp_peer }}'
        - 'b2c.cache_device=none'
        - 'earlyprintk=vga,keep'
        - '{% if local_tty_device %}console={{ local_tty_device }},115200 {% endif %}SALAD.machine_id={{ machine_id }}'
    initramfs:
      url: '{{ default_initramfs_url }}'
"""

BUILTIN_TEMPLATES: dict[str, str] = {"register": REGISTER_JOB_TEMPLATE, "bootloop": BOOTLOOP_JOB_TEMPLATE}

# Template variables of the built-in jobs that have a default (an EXECUTOR_JOB__<NAME> or ``variables`` wins).
BUILTIN_DEFAULTS: dict[str, str] = {
    "registration_image": f"docker://{DEFAULT_REGISTRY}/{DEFAULT_REGISTRATION_IMAGE}",
    "mars_host": "ci-gateway",
    "ntp_peer": "ci-gateway",
}


def builtin_job(
    name: str,
    machine: MachineLike,
    *,
    default_kernel_url: str,
    default_initramfs_url: str,
    env: Optional[Mapping[str, str]] = None,
    variables: Optional[Mapping[str, Any]] = None,
    now: Optional[datetime] = None,
) -> Job:
    """Sgt. Hartman's ``register`` or ``bootloop`` job for ``machine``.

    ``variables`` may set ``registration_image`` (``docker://host:port/path:tag``), ``mars_host`` (the
    gateway API's ``host[:port]`` as the DUT reaches it) and ``ntp_peer``; see :data:`BUILTIN_DEFAULTS`.
    """
    try:
        template = BUILTIN_TEMPLATES[name]
    except KeyError:
        raise ValueError(f"no built-in job {name!r} (known: {', '.join(BUILTIN_TEMPLATES)})") from None
    from_env = job_variables(None, env)
    merged: dict[str, Any] = {k: v for k, v in BUILTIN_DEFAULTS.items() if k not in from_env}
    merged.update(variables or {})
    merged.update(default_kernel_url=default_kernel_url, default_initramfs_url=default_initramfs_url)
    return Job.parse(template, machine, env, variables=merged, now=now, strict=True)



# ------------------------------------------------------------------------------------------ the parse worker
#
# The backend renders and parses jobs in worker processes (executor.JobParser), never on its event loop:
# a template's nested loops or a 1 MiB YAML text cost seconds of CPU. This is the worker's side: a loop
# over length-prefixed pickled requests on stdin, answers on stdout, each request under a CPU budget
# (RLIMIT_CPU: SIGXCPU interrupts it) and the process under a memory limit (RLIMIT_DATA). The only I/O
# of this module.

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
