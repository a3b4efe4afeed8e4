"""Follows the system journal (``journalctl -f -o json``) and publishes ``journal`` events.

Where there is no journal (no journalctl, or journalctl finds no journal files, as in
containers without systemd) the service reports ``degraded`` with the reason and the operator
still sees the backend's own log (``log`` events).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
from collections import deque
from collections.abc import Callable
from typing import Any

from .events import EventBus

log = logging.getLogger(__name__)


def parse_entry(line: bytes) -> dict[str, Any] | None:
    """One ``journalctl -o json`` line → ``{ts, priority, unit, message, hostname}``."""
    try:
        raw = json.loads(line)
    except ValueError:
        return None
    if not isinstance(raw, dict):
        return None
    message = raw.get("MESSAGE", "")
    if isinstance(message, list):  # binary messages come as byte arrays
        message = bytes(b for b in message if isinstance(b, int) and 0 <= b < 256).decode("utf-8", "replace")
    try:
        ts = int(raw.get("__REALTIME_TIMESTAMP", 0)) / 1e6
    except (TypeError, ValueError):
        ts = 0.0
    try:
        priority = int(raw.get("PRIORITY", 6))
    except (TypeError, ValueError):
        priority = 6
    unit = raw.get("_SYSTEMD_UNIT") or raw.get("SYSLOG_IDENTIFIER") or raw.get("_COMM") or ""
    return {
        "ts": ts,
        "priority": priority,
        "unit": str(unit),
        "message": str(message),
        "hostname": raw.get("_HOSTNAME", ""),
    }


def journal_files_exist() -> bool:
    from pathlib import Path

    for root in (Path("/var/log/journal"), Path("/run/log/journal")):
        with contextlib.suppress(OSError):
            if any(root.rglob("*.journal")):
                return True
    return False


class JournalFollower:
    def __init__(
        self,
        bus: EventBus,
        command: list[str] | None = None,
        keep: int = 2000,
        on_health_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.bus = bus
        self.command = command
        self.recent: deque[dict[str, Any]] = deque(maxlen=keep)
        self.state = "starting"
        self.reason: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self.on_health_change = on_health_change  # told when state/reason changed

    def _set(self, state: str, reason: str | None) -> None:
        if (state, reason) != (self.state, self.reason):
            self.state, self.reason = state, reason
            self.on_health_change()

    async def start(self) -> None:
        command = self.command
        if command is None:
            exe = shutil.which("journalctl")
            if exe is None:
                self._set("degraded", "no system journal: journalctl is not installed")
                return
            if not journal_files_exist():
                self._set("degraded", "no system journal: no journal files in /var/log/journal or /run/log/journal")
                return
            command = [exe, "-f", "-o", "json", "-n", "200", "--no-pager"]
        # journalctl is started here, not in the follower task: the state is settled ("ok", or why not)
        # before the farm reports ready and its API answers, so a client's first snapshot is not
        # "starting" (under TCG the fork alone took long enough for tty2's console to miss the change).
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *command,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            self._set("degraded", f"no system journal: {exc}")
            return
        self._set("ok", None)
        self._task = asyncio.create_task(self._follow(), name="journal")

    async def _follow(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None and self._proc.stderr is not None
        seen = 0
        while True:
            try:
                line = await self._proc.stdout.readline()
            except ValueError:  # a line over the stream limit: skip it
                continue
            if not line:
                break
            entry = parse_entry(line)
            if entry is not None:
                seen += 1
                self.recent.append(entry)
                self.bus.publish("journal", entry)
        err = (await self._proc.stderr.read()).decode("utf-8", "replace").strip()
        code = await self._proc.wait()
        reason = err.splitlines()[-1] if err else f"journalctl exited with status {code}"
        self._set("degraded", f"no system journal: {reason}")
        log.info("journal follower ended: %s", reason)

    def _signal(self, sig: int) -> None:
        import os

        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, sig)

    async def stop(self) -> None:
        import signal

        if self._proc is not None and self._proc.returncode is None:
            self._signal(signal.SIGTERM)
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 2)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._proc is not None:
            self._signal(signal.SIGKILL)
            await self._proc.wait()
