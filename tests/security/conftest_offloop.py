"""Helpers of the security tests of issue 15's "work off the loop, web login, disk and files" part:
a health prober that measures how long ``GET /api/v1/health`` takes while an attack runs, and the RSS
of a process with its children (the backend and its job parse workers)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Optional

import httpx

HEALTH_WITHIN = 1.0  # seconds: /api/v1/health must answer within this during every flood


def children(pid: int) -> list[int]:
    """The process ``pid``'s descendants (from /proc/<pid>/task/*/children)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids = [int(k) for k in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
        for kid in kids:
            found += [kid, *children(kid)]
    return found


def rss_mib(pid: int) -> float:
    """Resident memory of one process in MiB (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class HealthProbe:
    """A thread asking ``GET /api/v1/health`` every ``every`` s (timeout 10 s) while a test attacks, and
    sampling the RSS of ``pid`` (and of its children, separately). Use as a context manager."""

    def __init__(self, url: str, pid: Optional[int] = None, every: float = 0.1) -> None:
        self.url = url.rstrip("/") + "/api/v1/health"
        self.pid = pid
        self.every = every
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self.peak_rss = 0.0  # MiB, the process itself
        self.peak_child_rss = 0.0  # MiB, its largest child
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health-probe", daemon=True)

    def __enter__(self) -> "HealthProbe":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)

    def _sample_rss(self) -> None:
        if self.pid is None:
            return
        self.peak_rss = max(self.peak_rss, rss_mib(self.pid))
        for kid in children(self.pid):
            self.peak_child_rss = max(self.peak_child_rss, rss_mib(kid))

    def _run(self) -> None:
        with httpx.Client(timeout=10) as http:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    status = http.get(self.url).status_code
                    if status != 200:
                        self.failures.append(f"status {status}")
                except httpx.HTTPError as exc:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                self.latencies.append(time.monotonic() - started)
                self._sample_rss()
                self._stop.wait(self.every)

    @property
    def worst(self) -> float:
        return max(self.latencies, default=0.0)

    def check(self, within: float = HEALTH_WITHIN) -> None:
        """Every health request answered 200 within ``within`` seconds (and there were some)."""
        assert len(self.latencies) >= 3, f"too few health requests: {self.latencies}"
        assert not self.failures, f"health failed during the attack: {self.failures[:5]}"
        slow = [round(t, 2) for t in self.latencies if t > within]
        assert not slow, f"/api/v1/health took more than {within} s during the attack: {slow}"
