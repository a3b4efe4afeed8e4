"""The job schema (valve-infra version 1, unknown keys refused): ``Job``, ``Target``, ``Deployment`` and its
parts; ``peek_target`` reads a job's target before it is bound to a machine."""

from __future__ import annotations

import re
import time
from datetime import date, datetime, timezone
from typing import Any, Mapping, Optional, Union

from pydantic import (
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from ..boot.ipxe import BootConfig, validate_cmdline
from ..rules import target_tags, validate_url
from .console import DEFAULT_MAX_LINE_LENGTH, ConsolePatterns, JobConsole
from .errors import JobError, JobIssue
from .source import MAX_JOB_CHARS, Clock, Path_, _field_name, _from_validation, _line_for, _load_yaml, _Strict
from .templating import _LENIENT_ENV, PLACEHOLDER_MACHINE, MachineLike, _render, job_variables, render_job
from .timeouts import Timeouts, TimeoutsSpec


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
