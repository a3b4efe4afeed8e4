"""The job console: its patterns (``Pattern``, ``WatchdogPatterns``, ``ConsolePatterns``), watchdogs and the
state machine ``JobConsole`` fed with console bytes (``LineMatch`` says what matched)."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any, NamedTuple, Optional

from pydantic import (
    Field,
    PrivateAttr,
    field_validator,
)

from .errors import JobConsoleState, JobStatus
from .source import Clock, _Strict
from .timeouts import Timeout, Timeouts, _check_watchdog_names

DEFAULT_SESSION_END = r"^\[[\d \.]{12}\] reboot: Power Down$"
MAX_PATTERN_CHARS = 4096  # a console pattern's regex (compiled again by the backend, ~2 ms per KiB)
DEFAULT_MAX_LINE_LENGTH = 16 * 1024  # console bytes kept per line for pattern matching


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
