"""Console: one machine's console (ring buffer of timestamped chunks, rotated log, viewers, one writer)."""

from __future__ import annotations

import asyncio
import codecs
import logging
import os
import time
from collections import deque
from typing import Any, Callable

from .limits import COALESCE, EVENT_MAX_TEXT, RING_MAX_CHUNKS
from .logstore import RotatingLog, SliceReader
from .streams import Stream
from .viewers import Subscriber, TcpViewer, Writer

log = logging.getLogger(__package__)


# --------------------------------------------------------------------------- console
class Console:
    """One machine's console: ring buffer, log file, viewers, the writer, and the stream to write to."""

    def __init__(self, mac: str, ring_bytes: int, logfile: RotatingLog) -> None:
        self.mac = mac
        self.ring: deque[list[Any]] = deque()  # [timestamp, bytes], oldest first
        self.ring_bytes = ring_bytes
        self._held = 0
        self.log = logfile
        try:
            self.total = logfile.end  # stream offsets carry on from the log of an earlier run
        except OSError:
            self.total = 0
        self.lines = 0  # newlines received since this process started
        self.stream: "Stream | None" = None
        self.subscribers: set[Subscriber] = set()
        self.viewers: set[TcpViewer] = set()
        self.writer: Writer | None = None
        self.api_writer_timeout = 60.0
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.pending_event = bytearray()
        self.last_activity: float | None = None
        # A machine that never registered has a provisional console: capped, small ring, removed when unused.
        self.provisional = False
        self.origin: str | None = None  # the source that created a provisional console (per-source cap)
        self.unbound_at: float = time.monotonic()  # since when no stream is bound (meaningful when stream is None)
        self.on_pending: Callable[[], None] = lambda: None
        self.on_logged: Callable[[int], None] = lambda n: None
        self.on_writer_change: Callable[[], None] = lambda: None
        self._writer_expiry: asyncio.TimerHandle | None = None
        # Settings kept in the database (MachineConsole)
        self.tcp_index: int | None = None
        self.device: str | None = None
        self.remote: str | None = None
        # The shared TCP port
        self.tcp_host: str | None = None
        self.tcp_port: int | None = None
        self.tcp_error: str | None = None
        self._logged_error: str | None = None  # the last tcp_error logged (a retry logs a new one only)
        self.server: asyncio.base_events.Server | None = None
        self._share_retry: asyncio.TimerHandle | None = None

    # ---------------------------------------------------------------- bytes in
    def feed(self, data: bytes) -> None:
        if not data:
            return
        for viewer in self.viewers:  # live viewers first: a keystroke's echo is latency-bound
            viewer.send(data)
        now = time.time()
        self.last_activity = now
        at = self.total
        self.total += len(data)
        self.lines += data.count(b"\n")  # for /metrics
        ring = self.ring
        if ring and len(data) < COALESCE and len(ring[-1][1]) < COALESCE and now - ring[-1][0] < 1.0:
            ring[-1][1] = ring[-1][1] + data
        else:
            ring.append([now, data])
        self._held += len(data)
        while (self._held > self.ring_bytes or len(ring) > RING_MAX_CHUNKS) and len(ring) > 1:
            self._held -= len(ring.popleft()[1])
        if self._held > self.ring_bytes:  # one chunk larger than the whole ring
            only = ring[-1][1]
            ring[-1][1] = only[-self.ring_bytes :]
            self._held = len(ring[-1][1])
        try:
            self.log.write(data, at)
        except OSError as exc:
            if exc.strerror != getattr(self, "_log_error", None):  # once per kind of failure, not per chunk
                log.error("console log of %s: %s", self.mac, exc)
                self._log_error = exc.strerror
        else:
            self._log_error = None
            self.on_logged(len(data))
        for sub in self.subscribers:
            sub.put(data)
        if len(self.pending_event) < EVENT_MAX_TEXT:
            if not self.pending_event:
                self.on_pending()
            self.pending_event += data[: EVENT_MAX_TEXT - len(self.pending_event)]

    def contents(self) -> bytes:
        return b"".join(chunk for _, chunk in self.ring)

    def ring_chunks(self) -> list[tuple[float, bytes]]:
        """The ring buffer as (arrival time, bytes), oldest first."""
        return [(ts, chunk) for ts, chunk in self.ring]

    # ---------------------------------------------------------------- offsets
    def mark(self) -> int:
        """The offset of the next byte in this machine's whole console stream (for a job's start/end)."""
        return self.total

    def open_slice(self, start: int, end: int | None = None) -> SliceReader:
        """Prepare bytes [start, end) on the loop: copy what the ring holds, open the log files for older ones."""
        end = self.total if end is None else min(max(end, 0), self.total)
        start = min(max(start, 0), end)
        ring_start = self.total - self._held
        reader = SliceReader(start, end)
        first: int | None = None
        if start < ring_start:
            upto = min(end, ring_start)
            for path, seg_start, size in self.log.segments():
                lo, hi = max(start, seg_start), min(upto, seg_start + size)
                if lo >= hi:
                    continue
                try:
                    fd = os.open(path, os.O_RDONLY)
                except OSError:
                    continue
                reader._parts.append((fd, lo - seg_start, hi - lo))
                first = lo if first is None else first
        if end > ring_start:
            lo = max(start, ring_start)
            pos = ring_start
            pieces = []
            for _, chunk in self.ring:
                chunk_end = pos + len(chunk)
                if chunk_end > lo and pos < end:
                    pieces.append(chunk[max(lo - pos, 0) : min(end, chunk_end) - pos])
                pos = chunk_end
                if pos >= end:
                    break
            reader._parts.append(b"".join(pieces))
            first = lo if first is None else first
        reader.start = first if first is not None else end
        return reader

    def slice(self, start: int, end: int | None = None) -> bytes:
        """Bytes [start, end) of the machine's stream, from the ring and, when older, the rotated logs.

        Bytes rotated out of every log file are gone: the answer then starts later (``open_slice``
        tells where).
        """
        return self.open_slice(start, end).read()

    # ---------------------------------------------------------------- writer
    def current_writer(self) -> Writer | None:
        w = self.writer
        if w is not None and w.viewer is None and time.monotonic() - w.last_input > self.api_writer_timeout:
            self.writer = None
        return self.writer

    def claim(self, who: str, viewer: TcpViewer | None, takeover: bool) -> Writer | None:
        """Make ``who`` the writer. Returns the writer that refused it (when not a takeover), else None."""
        current = self.current_writer()
        if current is not None and current.who == who and current.viewer is viewer:
            current.last_input = time.monotonic()
            return None
        if current is not None and not takeover:
            return current
        if current is not None and current.viewer is not None:
            current.viewer.notice(
                f"\r\nvalve-console: {who} took over write access to {self.mac}; you are read-only now\r\n"
            )
        self.writer = Writer(who, viewer)
        if current is not None:
            log.info("console %s: %s took write access over from %s", self.mac, who, current.who)
        return None

    def _watch_api_writer(self) -> None:
        """An API writer is let go after its idle timeout: say so when it happens, not on the next look."""
        if self._writer_expiry is not None:
            self._writer_expiry.cancel()
            self._writer_expiry = None
        w = self.writer
        if w is None or w.viewer is not None:
            return
        delay = max(0.0, w.last_input + self.api_writer_timeout - time.monotonic()) + 0.05

        def check() -> None:
            self._writer_expiry = None
            if self.writer is w and self.current_writer() is None:
                self.on_writer_change()
            elif self.writer is w:
                self._watch_api_writer()

        self._writer_expiry = asyncio.get_running_loop().call_later(delay, check)

    def to_json(self) -> dict[str, Any]:
        stream = self.stream
        writer = self.current_writer()
        return {
            "mac": self.mac,
            "source": stream.name if stream else None,
            "connected": stream is not None,
            "device": self.device,
            "remote": self.remote,
            "baud": stream.baud if stream else None,
            "tcp_host": self.tcp_host,
            "tcp_port": self.tcp_port,
            "tcp_error": self.tcp_error,
            "writer": writer.who if writer else None,
            "viewers": len(self.viewers) + len(self.subscribers),
            "bytes": self.total,
            "buffered": self._held,
            "last_activity": self.last_activity,
            "log_path": str(self.log.path),
            "provisional": self.provisional,
        }
