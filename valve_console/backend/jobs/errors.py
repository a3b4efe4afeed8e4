"""Job errors in words (``JobError`` with the line and field, every ``JobIssue``) and the job's enums:
``JobStatus`` (also the client's exit code) and ``JobConsoleState`` (only moves forward)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Optional, Sequence


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
