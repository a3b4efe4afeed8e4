"""Job templating: the variables a template sees (``MachineInfo``, ``job_variables``) and sandboxed Jinja2
(``render_job``): strict, valve-infra's (undefined names render empty, and are noted) or lenient."""

from __future__ import annotations

import os
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Optional, Union

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from .errors import JobError
from .source import MAX_JOB_CHARS, _stage

if TYPE_CHECKING:
    from ..models import Machine

ENV_PREFIX = "EXECUTOR_JOB__"


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
    def from_machine(cls, m: "Machine", full_name: str) -> "MachineInfo":
        """From the stored machine and its name (``MachineService.full_name``)."""
        return cls(
            mac_address=m.mac_address,
            base_name=m.base_name,
            full_name=full_name,
            tags=tuple(m.tags),
            ip_address=m.ip_address,
            local_tty_device=m.local_tty_device,
            ready_for_service=m.ready_for_service,
        )

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
