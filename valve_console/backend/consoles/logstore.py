"""Console logs on disk: ``RotatingLog`` (a machine's rotated log, byte offsets in its whole stream that survive
rotation and restarts), ``SliceReader`` (a slice of it read back) and ``LogBudget`` (the farm-wide cap)."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Callable

from .limits import LOG_CAP_LOW, LOG_SCAN_INTERVAL

log = logging.getLogger(__package__)


# --------------------------------------------------------------------------- storage
class RotatingLog:
    """Append-only log file rotated by size: ``x.log``, ``x.log.1`` ... ``x.log.<backups>``.

    Each file's first byte has a known offset in the machine's whole console stream, kept in
    ``x.base`` (one offset a line: x.log, x.log.1, ...), so a byte range can be read back across
    rotations and restarts.
    """

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._fd: int | None = None
        self._size = 0
        self._starts: list[int] | None = None  # stream offset of x.log, x.log.1, ...

    @property
    def base_path(self) -> Path:
        return self.path.with_suffix(".base")

    def _file(self, i: int) -> Path:
        return self.path if i == 0 else self.path.with_name(f"{self.path.name}.{i}")

    def _load(self) -> list[int]:
        if self._starts is None:
            sizes = []
            for i in range(self.backups + 1):
                try:
                    sizes.append(self._file(i).stat().st_size)
                except OSError:
                    sizes.append(0)
            self._size = sizes[0]
            try:
                starts = [int(x) for x in self.base_path.read_text().split()]
            except (OSError, ValueError):
                starts = []
            if not starts:
                # No offsets recorded (a new log, or one from before they were): the oldest file starts at 0.
                starts = [sum(sizes[1:])]
            while len(starts) < self.backups + 1:  # older files than recorded: each ends where the next starts
                starts.append(starts[-1] - sizes[len(starts)])
            self._starts = starts[: self.backups + 1]
        return self._starts

    @property
    def end(self) -> int:
        """The stream offset just past the last byte written."""
        return self._load()[0] + self._size

    def _open(self) -> int:
        if self._fd is None:
            self._load()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            self._size = os.fstat(self._fd).st_size
        return self._fd

    def write(self, data: bytes, at: int | None = None) -> None:
        """Append ``data``, whose first byte is at stream offset ``at`` (default: right after the last)."""
        fd = self._open()
        if at is not None and at != self.end:
            self._rotate(at)  # a gap (an earlier write failed): a new file keeps offsets exact
            fd = self._open()
        elif self.max_bytes and self._size + len(data) > self.max_bytes and self._size > 0:
            self._rotate(self.end)
            fd = self._open()
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            self._size += n
            view = view[n:]

    def _rotate(self, new_start: int) -> None:
        starts = self._load()
        if self._size == 0:  # nothing in the current file: it simply starts elsewhere
            starts[0] = new_start
            self._write_starts()
            return
        self.close()
        for i in range(self.backups - 1, 0, -1):
            src = self._file(i)
            if src.exists():
                os.replace(src, self._file(i + 1))
        if self.backups > 0:
            if self.path.exists():
                os.replace(self.path, self._file(1))
        else:
            self.path.unlink(missing_ok=True)
        self._starts = [new_start] + starts[: self.backups]
        self._size = 0
        self._write_starts()

    def _write_starts(self) -> None:
        assert self._starts is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.base_path.with_name(self.base_path.name + ".tmp")
        tmp.write_text("\n".join(str(s) for s in self._starts) + "\n")
        os.replace(tmp, self.base_path)

    def segments(self) -> list[tuple[Path, int, int]]:
        """(file, stream offset of its first byte, size) for each file, oldest first."""
        starts = self._load()
        result = []
        for i in range(self.backups, -1, -1):
            size = self._size if i == 0 else _size_of(self._file(i))
            if size:
                result.append((self._file(i), starts[i], size))
        return result

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def files(self) -> list[Path]:
        """Every file of this log that exists (x.log, x.log.1 ..., x.base)."""
        names = [self._file(i) for i in range(self.backups + 1)] + [self.base_path]
        return [p for p in names if p.exists()]

    def discard_current(self) -> int:
        """Delete x.log (the farm-wide cap needs room): later bytes start a new file at the same offset."""
        starts = self._load()
        end = self.end
        self.close()
        freed = _size_of(self.path)
        self.path.unlink(missing_ok=True)
        starts[0] = end
        self._size = 0
        self._write_starts()
        return freed

    def remove(self) -> None:
        """Delete every file of this log (the console is removed)."""
        self.close()
        for path in self.files():
            path.unlink(missing_ok=True)
        self._starts = None
        self._size = 0


def _size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


class SliceReader:
    """A byte range of a console, prepared on the loop (files opened, ring copied), read anywhere."""

    def __init__(self, start: int, end: int) -> None:
        self.start = start  # the first byte actually available (older ones were rotated away)
        self.end = end
        self._parts: list[tuple[int, int, int] | bytes] = []  # (fd, position, length) or bytes

    def read(self) -> bytes:
        out = bytearray()
        try:
            for part in self._parts:
                if isinstance(part, bytes):
                    out += part
                    continue
                fd, pos, length = part
                while length > 0:
                    chunk = os.pread(fd, min(length, 1 << 20), pos)
                    if not chunk:
                        break
                    out += chunk
                    pos += len(chunk)
                    length -= len(chunk)
        finally:
            self.close()
        return bytes(out)

    def close(self) -> None:
        for part in self._parts:
            if not isinstance(part, bytes):
                with contextlib.suppress(OSError):
                    os.close(part[0])
        self._parts = [p for p in self._parts if isinstance(p, bytes)]


class LogBudget:
    """All console logs together under ``max_bytes``: the oldest rotated files go first, then the oldest
    current files of consoles without a live stream (``protected`` tells which paths must stay).

    Bytes written are counted as they go; the directory is scanned only when the count passes the cap
    (at most every LOG_SCAN_INTERVAL s: the count overshoots, rotations overwrite), and then emptied
    down to LOG_CAP_LOW of the cap.
    """

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.total = 0  # bytes in the directory's log files, as far as we know (a scan makes it exact)
        self.evicted_files = 0
        self.evicted_bytes = 0
        self._last_scan = float("-inf")

    def scan(self) -> list[tuple[float, int, Path]]:
        """(mtime, size, path) of every log file; sets ``total``."""
        found = []
        try:
            entries = list(os.scandir(self.directory))
        except OSError:
            entries = []
        for entry in entries:
            if ".log" not in entry.name or entry.name.endswith(".tmp"):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            found.append((st.st_mtime, st.st_size, Path(entry.path)))
        self.total = sum(size for _, size, _ in found)
        return found

    def add(self, n: int) -> bool:
        """Count ``n`` bytes written; True when the logs are (as far as we know) over the cap."""
        self.total += n
        return bool(self.max_bytes) and self.total > self.max_bytes

    def delay(self) -> float:
        """Seconds until the next scan may run (scans are at least LOG_SCAN_INTERVAL apart)."""
        return max(0.0, self._last_scan + LOG_SCAN_INTERVAL - time.monotonic())

    def enforce(self, protected: set[Path], discard: Callable[[Path], int | None]) -> None:
        """Delete the oldest files until the logs fit. ``discard(path)`` handles a console's current file
        (returns the bytes freed, or None if it is not a loaded console's: the file is simply deleted)."""
        self._last_scan = time.monotonic()
        if not self.max_bytes:
            return
        files = self.scan()
        if self.total <= self.max_bytes:
            return
        goal = int(self.max_bytes * LOG_CAP_LOW)
        rotated = sorted(f for f in files if not f[2].name.endswith(".log"))
        current = sorted(f for f in files if f[2].name.endswith(".log") and f[2] not in protected)
        for _, size, path in rotated + current:
            if self.total <= goal:
                break
            try:
                freed = discard(path) if path.name.endswith(".log") else None
                if freed is None:
                    path.unlink(missing_ok=True)
                    freed = size
            except OSError as exc:
                log.warning("console logs: cannot delete %s: %s", path, exc.strerror or exc)
                continue
            self.total -= freed
            self.evicted_files += 1
            self.evicted_bytes += freed
        if self.total > self.max_bytes:
            log.warning("console logs: %d bytes, above the cap of %d, all in the logs of live consoles",
                        self.total, self.max_bytes)
