"""Job timeouts: their schema (``TimeoutSpec``, ``TimeoutsSpec``) and runtime (``Timeout``, ``Timeouts``, with
the job's deadline), every clock injectable."""

from __future__ import annotations

import re
import time
from datetime import timedelta
from typing import Annotated, Any, Iterator, Mapping, Optional, Union

from pydantic import (
    Field,
    StrictInt,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .source import Clock, _Amount, _Strict

MAX_WATCHDOGS = 32


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


_WATCHDOG_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")


def _check_watchdog_names(names: Mapping[str, Any]) -> None:
    if len(names) > MAX_WATCHDOGS:
        raise ValueError(f"more than {MAX_WATCHDOGS} watchdogs")
    for name in names:
        if not _WATCHDOG_NAME.fullmatch(str(name)):
            raise ValueError(f"invalid watchdog name {str(name)[:40]!r} (letters, digits, '_', '.', '-')")


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
