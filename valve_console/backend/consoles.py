"""ConsoleHub: console streams → association with a machine → per-machine console.

A *stream* is one source of console bytes: a TCP connection to the netconsole port (QEMU DUTs,
Vivian's simulated DUTs), a serial device (a USB adapter found by a device source, or a path
given with ``--serial``), or a machine's remote console server (ser2net, raw TCP or RFC 2217).
A line holding ``SALAD.machine_id=<mac>`` binds the stream to that machine; a line ending in
``SALAD.ping`` is answered ``SALAD.pong\\n``. A serial device's binding (its stable identity →
MAC) is stored, so after a restart or a re-plug the device is that machine's console at once.

Each machine's *console* keeps a bounded ring buffer of timestamped chunks, a rotated log file
(byte offsets in the machine's whole stream survive rotation and restarts: ``mark``/``slice``),
any number of live viewers (API streams, and TCP clients on the machine's fixed port), and at
most one writer. Bytes are stored raw; sanitising is the viewer's job. Every buffer on the way is
bounded: a slow viewer loses bytes (and is told how many), never stalls the hub.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import os
import re
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from .errors import BadRequest, Conflict, NotFound
from .events import EventBus

log = logging.getLogger(__name__)

MARKER = re.compile(rb"SALAD\.machine_id=(\S+)")
MAC_PREFIX = re.compile(rb"^[0-9A-Fa-f]{2}(?:[:-]?[0-9A-Fa-f]{2}){5}")
MAX_LINE = 4096  # bytes kept while waiting for a newline; longer "lines" are cut
PENDING_MAX = 64 * 1024  # bytes kept from a stream before it is bound to a machine
EVENT_HZ = 20
EVENT_MAX_TEXT = 256 * 1024
COALESCE = 4096  # ring chunks smaller than this, arriving within a second, are merged
RING_MAX_CHUNKS = 65536  # a trickle of tiny chunks cannot make the ring's index grow without bound
VIEWER_HIGH = 256 * 1024  # a TCP viewer's unsent bytes above which its output is dropped
VIEWER_LOW = 64 * 1024
SUBSCRIBER_MAX = 1024 * 1024  # an API stream's unsent bytes above which the oldest are dropped
WRITE_MAX = 1024 * 1024  # bytes waiting to go to a device before input is refused
NOTICE_INTERVAL = 1.0  # at most one refusal notice a second per TCP client
MAX_CONSOLES = 1024  # markers announcing more machines than this are ignored (each console holds fds)
TAKEOVER = b"\x1dt"  # Ctrl-] then t: take write access over
RETRY_MIN, RETRY_MAX = 0.5, 30.0  # back-off when a device or a console server cannot be opened
SHARE_RETRY = 30.0  # seconds between attempts to listen on a machine's port when it is taken
SLICE_MAX = 64 * 1024 * 1024


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


# --------------------------------------------------------------------------- viewers and writers
class Subscriber:
    """An API stream's queue of console bytes, bounded in bytes; the oldest are dropped and counted."""

    def __init__(self, limit: int = SUBSCRIBER_MAX) -> None:
        self.limit = limit
        self.chunks: deque[bytes] = deque()
        self.size = 0
        self.dropped = 0
        self.closed = False
        self._wakeup = asyncio.Event()

    def put(self, data: bytes) -> None:
        self.chunks.append(data)
        self.size += len(data)
        while self.size > self.limit and len(self.chunks) > 1:
            old = self.chunks.popleft()
            self.size -= len(old)
            self.dropped += len(old)
        self._wakeup.set()

    def close(self) -> None:
        self.closed = True
        self._wakeup.set()

    async def get(self, timeout: float | None = None) -> bytes | None:
        """Everything queued (after a drop notice if bytes were lost); ``b""`` on timeout; None once closed."""
        if not self.chunks and not self.closed:
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout)
            except asyncio.TimeoutError:
                return b""
        self._wakeup.clear()
        if self.chunks:
            data = b"".join(self.chunks)
            self.chunks.clear()
            self.size = 0
            if self.dropped:
                data = f"\r\n[valve-console: {self.dropped} bytes dropped]\r\n".encode() + data
                self.dropped = 0
            return data
        return None if self.closed else b""


class TcpViewer(asyncio.Protocol):
    """A TCP client of a machine's console port: sees the output; may type when it holds write."""

    def __init__(self, hub: "ConsoleHub", console: "Console") -> None:
        self.hub = hub
        self.console = console
        self.transport: asyncio.Transport | None = None
        self.who = "tcp:?"
        self.paused = False
        self.dropped = 0
        self.escape = False  # the last byte received was Ctrl-]
        self._last_notice: tuple[float, str] = (0.0, "")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.set_write_buffer_limits(high=VIEWER_HIGH, low=VIEWER_LOW)
        peer = transport.get_extra_info("peername") or ("?", 0)
        self.who = f"tcp:{peer[0]}:{peer[1]}"
        self.console.viewers.add(self)
        self.hub._changed(self.console)

    def send(self, data: bytes) -> None:
        if self.paused:
            self.dropped += len(data)
        else:
            self.transport.write(data)  # type: ignore[union-attr]

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.dropped:
            self.transport.write(f"\r\n[valve-console: {self.dropped} bytes dropped]\r\n".encode())  # type: ignore
            self.dropped = 0

    def notice(self, text: str, rate_limited: bool = False) -> None:
        if rate_limited:  # a refusal repeats with every keystroke: the same one at most once a second
            now = time.monotonic()
            if text == self._last_notice[1] and now - self._last_notice[0] < NOTICE_INTERVAL:
                return
            self._last_notice = (now, text)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(text.encode("utf-8", "replace"))

    def data_received(self, data: bytes) -> None:
        self.hub._tcp_input(self, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.console.viewers.discard(self)
        if self.console.writer is not None and self.console.writer.viewer is self:
            self.console.writer = None
        self.hub._changed(self.console)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


@dataclass
class Writer:
    who: str  # tcp:HOST:PORT, api or api:<client id>
    viewer: TcpViewer | None  # the TCP client holding write, or None for an API writer
    last_input: float = field(default_factory=time.monotonic)


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
        self.on_pending: Callable[[], None] = lambda: None
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
            log.error("console log of %s: %s", self.mac, exc)
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
        }


class Stream:
    """One console byte source. ``write`` sends bytes back to the device.

    ``kind``: netconsole, serial or remote. A serial stream has its device ``identity``; a remote
    stream is ``pinned`` to the machine it was configured for (markers do not move it).
    """

    def __init__(
        self,
        name: str,
        write: Callable[[bytes], None],
        buffered: Callable[[], int] | None = None,
        kind: str = "netconsole",
        device: str | None = None,
        pinned: str | None = None,
        baud: int | None = None,
    ) -> None:
        self.name = name
        self.write = write
        self.buffered = buffered or (lambda: 0)
        self.kind = kind
        self.device = device
        self.pinned = pinned
        self.baud = baud
        self.machine: str | None = None
        self.line = b""
        self.pending = bytearray()


@dataclass
class DeviceState:
    info: Any  # drivers.serial.SerialDeviceInfo
    task: asyncio.Task | None = None
    stream: Stream | None = None
    link: Any = None
    error: str | None = None


# --------------------------------------------------------------------------- hub
class ConsoleHub:
    def __init__(
        self,
        bus: EventBus,
        log_dir: Path,
        ring_bytes: int,
        log_max_bytes: int,
        log_backups: int,
        *,
        store: Any = None,
        tcp_host: str | None = "127.0.0.1",
        tcp_base: int = 0,
        device_sources: Iterable[Any] = (),
        known_machine: Callable[[str], bool] | None = None,
        api_writer_timeout: float = 60.0,
    ) -> None:
        self.bus = bus
        self.log_dir = log_dir
        self.ring_bytes = ring_bytes
        self.log_max_bytes = log_max_bytes
        self.log_backups = log_backups
        self.store = store
        self.tcp_host = tcp_host
        self.tcp_base = tcp_base
        self.sources = list(device_sources)
        self.known_machine = known_machine or (lambda mac: False)
        self.api_writer_timeout = api_writer_timeout
        self.consoles: dict[str, Console] = {}
        self.streams: set[Stream] = set()
        self.devices: dict[str, DeviceState] = {}  # device identity -> state (present devices)
        self.device_owner: dict[str, str] = {}  # device identity -> MAC (stored)
        self._by_node: dict[str, str] = {}  # device node -> identity (for removals)
        self._remotes: dict[str, asyncio.Task] = {}
        self._next_index = 0
        self._server: asyncio.base_events.Server | None = None
        self._flush_handle: asyncio.TimerHandle | None = None
        self._conn_tasks: set[asyncio.Task] = set()
        self._tasks: set[asyncio.Task] = set()
        self._saves: set[asyncio.Task] = set()
        self._closing: set[asyncio.Future] = set()  # links being closed (a serial port closes in a thread)
        self._stopping = False
        self.state = "starting"
        self.reason: str | None = None
        self.address: tuple[str, int] | None = None

    # ---------------------------------------------------------------- lifecycle
    async def start(self, sock: socket.socket | None) -> None:
        if sock is not None:
            self._server = await asyncio.start_server(self._on_connection, sock=sock)
            self.address = sock.getsockname()[:2]
        if self.store is not None:
            await self._load()
        for source in self.sources:
            try:
                await source.start()
            except Exception as exc:  # noqa: BLE001 - one broken source must not stop the others
                log.error("serial device source %s failed to start: %s", getattr(source, "name", source), exc)
                self.reason = f"serial discovery {getattr(source, 'name', '?')}: {exc}"
                continue
            self._spawn(self._consume(source), f"console-source-{getattr(source, 'name', '?')}")
        for console in self.consoles.values():
            if console.remote:
                self._start_remote(console)
        self.state = "ok"

    async def _load(self) -> None:
        from sqlmodel import select

        from .models import MachineConsole

        rows = await self.store.run(lambda s: list(s.exec(select(MachineConsole)).all()))
        for row in sorted(rows, key=lambda r: r.tcp_index):
            console = self._new_console(row.mac_address)
            console.tcp_index = row.tcp_index
            console.device = row.device
            console.remote = row.remote_url
            if row.device:
                self.device_owner[row.device] = row.mac_address
            self._next_index = max(self._next_index, row.tcp_index + 1)
        for console in list(self.consoles.values()):
            self._open_share(console)

    async def stop(self) -> None:
        self._stopping = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for source in self.sources:
            with contextlib.suppress(Exception):
                await source.stop()
        tasks = [s.task for s in self.devices.values() if s.task is not None] + list(self._remotes.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._closing:
            await asyncio.wait(list(self._closing), timeout=2)
        if self._server is not None:
            self._server.close()
        for task in list(self._conn_tasks):
            task.cancel()
        await asyncio.gather(*self._conn_tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        servers = []
        for console in self.consoles.values():
            if console._share_retry is not None:
                console._share_retry.cancel()
            if console.server is not None:
                console.server.close()
                servers.append(console.server)
            for viewer in list(console.viewers):
                viewer.close()
            for sub in console.subscribers:
                sub.close()
            console.log.close()
        for server in servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2)
        if self._saves:
            await asyncio.gather(*self._saves, return_exceptions=True)

    def _spawn(self, coro: Any, name: str) -> asyncio.Task:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ---------------------------------------------------------------- consoles
    def _new_console(self, mac: str) -> Console:
        logfile = RotatingLog(self.log_dir / f"{mac}.log", self.log_max_bytes, self.log_backups)
        console = self.consoles[mac] = Console(mac, self.ring_bytes, logfile)
        console.on_pending = self._schedule_flush
        console.on_writer_change = lambda: self._changed(console)
        console.api_writer_timeout = self.api_writer_timeout
        return console

    def console(self, mac: str, create: bool = True) -> Console:
        console = self.consoles.get(mac)
        if console is None:
            if not create:
                raise NotFound(f"no console for machine {mac}")
            if len(self.consoles) >= MAX_CONSOLES:
                raise Conflict(f"too many consoles ({MAX_CONSOLES}); not creating one for {mac}")
            console = self._new_console(mac)
            console.tcp_index = self._next_index
            self._next_index += 1
            self._save(console)
            self._open_share(console)
            self._changed(console)
        return console

    def get(self, mac: str) -> Console:
        """The console of a known machine or an existing console (created for a machine if need be)."""
        if mac in self.consoles:
            return self.consoles[mac]
        if self.known_machine(mac):
            return self.console(mac)
        raise NotFound(f"no machine or console {mac}")

    def subscribe(self, mac: str) -> Subscriber:
        sub = Subscriber()
        console = self.get(mac)
        console.subscribers.add(sub)
        self._changed(console)
        return sub

    def unsubscribe(self, mac: str, sub: Subscriber) -> None:
        console = self.consoles.get(mac)
        if console is not None and sub in console.subscribers:
            console.subscribers.discard(sub)
            if not self._stopping:
                self._changed(console)

    def list_json(self) -> dict[str, Any]:
        return {mac: c.to_json() for mac, c in sorted(self.consoles.items())}

    def devices_json(self) -> dict[str, Any]:
        """Every serial device present, with the machine it is bound to and whether it is open."""
        result = {}
        for ident, state in sorted(self.devices.items()):
            info = state.info.to_json()
            info["identity"] = ident
            info["machine"] = self.device_owner.get(ident)
            info["open"] = state.stream is not None
            info["error"] = state.error
            result[ident] = info
        return result

    def _changed(self, console: Console) -> None:
        if not self._stopping:
            self.bus.publish("console", {"mac": console.mac, "text": "", "console": console.to_json()})

    # ---------------------------------------------------------------- the machine's TCP port
    def _open_share(self, console: Console) -> None:
        console._share_retry = None
        if self.tcp_host is None or console.tcp_index is None or self._stopping or console.server is not None:
            return
        port = self.tcp_base + console.tcp_index if self.tcp_base else 0
        host = self.tcp_host
        console.tcp_host = host
        if port > 65535:
            console.tcp_error = f"port {port} (base {self.tcp_base} + index {console.tcp_index}) is above 65535"
            log.error("console %s: %s", console.mac, console.tcp_error)
            return
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(32)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            console.tcp_port = None
            reason = exc.strerror or exc
            console.tcp_error = f"cannot listen on {host}:{port}: {reason}; retrying every {SHARE_RETRY:g} s"
            if console.tcp_error != getattr(console, "_logged_error", None):
                log.warning("console %s: %s", console.mac, console.tcp_error)
                console._logged_error = console.tcp_error  # type: ignore[attr-defined]
            console._share_retry = asyncio.get_running_loop().call_later(SHARE_RETRY, self._open_share, console)
            return
        console.tcp_port = sock.getsockname()[1]
        console.tcp_error = None
        self._spawn(self._serve_share(console, sock), f"console-share-{console.mac}")

    async def _serve_share(self, console: Console, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            console.server = await loop.create_server(lambda: TcpViewer(self, console), sock=sock)
        except Exception as exc:  # noqa: BLE001 - reported on the console
            sock.close()
            console.tcp_port = None
            console.tcp_error = f"cannot serve {self.tcp_host}: {exc}"
            log.error("console %s: %s", console.mac, console.tcp_error)
        self._changed(console)

    def _tcp_input(self, viewer: TcpViewer, data: bytes) -> None:
        """Bytes typed by a TCP client: Ctrl-] t takes write over; the rest goes to the DUT if it may write."""
        if viewer.escape:
            data = b"\x1d" + data
            viewer.escape = False
        while data:
            i = data.find(b"\x1d")
            if i < 0:
                self._tcp_type(viewer, data)
                return
            if i + 1 == len(data):
                self._tcp_type(viewer, data[:i])
                viewer.escape = True
                return
            if data[i + 1 : i + 2] == b"t":
                self._tcp_type(viewer, data[:i])
                self._tcp_takeover(viewer)
                data = data[i + 2 :]
            else:
                self._tcp_type(viewer, data[: i + 1])
                data = data[i + 1 :]

    def _tcp_takeover(self, viewer: TcpViewer) -> None:
        console = viewer.console
        current = console.current_writer()
        if current is not None and current.viewer is viewer:
            return
        console.claim(viewer.who, viewer, takeover=True)
        viewer.notice(f"\r\nvalve-console: you now hold write access to {console.mac}\r\n")
        self._changed(console)

    def _tcp_type(self, viewer: TcpViewer, data: bytes) -> None:
        if not data:
            return
        console = viewer.console
        before = console.current_writer()
        holder = console.claim(viewer.who, viewer, takeover=False)
        if holder is not None:
            viewer.notice(
                f"valve-console: {console.mac} already has a writer ({holder.who}); "
                "send Ctrl-] then t to take over\r\n",
                rate_limited=True,
            )
            return
        if before is None or before.viewer is not viewer:
            self._changed(console)
        if console.stream is None:
            viewer.notice(f"valve-console: {console.mac} has no console connected; input dropped\r\n", True)
            return
        try:
            self._send(console, data)
        except Conflict as exc:
            viewer.notice(f"valve-console: {exc}\r\n", True)

    # ---------------------------------------------------------------- input
    def _send(self, console: Console, data: bytes) -> int:
        stream = console.stream
        if stream is None:
            raise Conflict(f"the console of {console.mac} is not connected: nothing to type into")
        waiting = stream.buffered()
        if waiting > WRITE_MAX:
            raise Conflict(f"{stream.name} is not taking input: {waiting} bytes are still waiting to be sent")
        try:
            stream.write(data)
        except (OSError, ConnectionError) as exc:
            raise Conflict(f"writing to {stream.name} failed: {exc}") from None
        return len(data)

    def input(self, mac: str, data: bytes, writer: str | None = None, takeover: bool = False) -> int:
        """Input from the API. ``writer`` names the client (None: the anonymous API writer)."""
        console = self.console(mac, create=False)
        if console.stream is None:
            raise Conflict(f"the console of {mac} is not connected: nothing to type into")
        who = f"api:{writer}" if writer else "api"
        before = console.current_writer()
        holder = console.claim(who, None, takeover)
        if holder is not None:
            raise Conflict(f"{mac} already has a writer ({holder.who}); send takeover=true to take over")
        console._watch_api_writer()
        if before is None or before.who != who:
            self._changed(console)
        return self._send(console, data)

    def write(self, mac: str, data: bytes) -> int:
        return self.input(mac, data)

    def release_writer(self, mac: str, writer: str | None = None) -> dict[str, Any]:
        console = self.console(mac, create=False)
        who = f"api:{writer}" if writer else "api"
        current = console.current_writer()
        released = current is not None and current.who == who and current.viewer is None
        if released:
            console.writer = None
            self._changed(console)
        return {"released": released, "writer": console.writer.who if console.writer else None}

    # ---------------------------------------------------------------- settings (stored)
    def _save(self, console: Console, set_by: str | None = None) -> None:
        if self.store is None or console.tcp_index is None:
            return
        from .models import MachineConsole, now

        mac, index, device, remote = console.mac, console.tcp_index, console.device, console.remote

        def upsert(session: Any) -> None:
            row = session.get(MachineConsole, mac)
            if row is None:
                row = MachineConsole(mac_address=mac, tcp_index=index)
            row.device = device
            row.remote_url = remote
            if set_by is not None:
                row.device_set_by = set_by
            row.updated_at = now()
            session.add(row)

        async def run() -> None:
            try:
                await self.store.run(upsert)
            except Exception as exc:  # noqa: BLE001 - the operator hears of it; memory stays right
                log.error("cannot store the console settings of %s: %s", mac, exc)

        task = asyncio.get_running_loop().create_task(run())
        self._saves.add(task)
        task.add_done_callback(self._saves.discard)

    def _assign_device(self, ident: str, mac: str | None, set_by: str) -> None:
        """Record that device ``ident`` is the console of ``mac`` (None: of no machine)."""
        old_mac = self.device_owner.get(ident)
        if old_mac == mac:
            return
        if old_mac is not None:
            del self.device_owner[ident]
            old = self.consoles.get(old_mac)
            if old is not None and old.device == ident:
                old.device = None
                self._save(old, set_by)
                self._changed(old)
        if mac is not None:
            console = self.console(mac)
            if console.device is not None and console.device != ident:
                previous = console.device
                self.device_owner.pop(previous, None)
                state = self.devices.get(previous)
                if state is not None and state.stream is not None and state.stream.machine == mac:
                    self.unbind(state.stream)
            console.device = ident
            self.device_owner[ident] = mac
            self._save(console, set_by)
            self._changed(console)

    async def set_device(self, mac: str, device: str | None) -> dict[str, Any]:
        """The operator binds a serial device identity to a machine (or unbinds it with None)."""
        console = self.get(mac)
        if device is not None:
            device = device.strip()
            if not device or len(device) > 255 or any(ord(c) < 32 or ord(c) == 127 for c in device):
                raise BadRequest("a device identity is 1-255 printable characters (see GET /api/v1/consoles)")
        if device is None:
            if console.device is not None:
                ident = console.device
                self._assign_device(ident, None, "operator")
                state = self.devices.get(ident)
                if state is not None and state.stream is not None and state.stream.machine == mac:
                    self.unbind(state.stream)
        else:
            self._assign_device(device, mac, "operator")
            state = self.devices.get(device)
            if state is not None and state.stream is not None:
                self.bind(state.stream, mac)
        log.info("console %s: serial device set to %s by the operator", mac, device or "none")
        return console.to_json()

    async def set_remote(self, mac: str, url: str | None) -> dict[str, Any]:
        """The operator points a machine's console at a console server (ser2net), or at none."""
        from ..drivers.serial.remote import parse_console_url

        console = self.get(mac)
        if url is not None:
            try:
                url = parse_console_url(url).url
            except ValueError as exc:
                raise BadRequest(str(exc)) from None
        if url != console.remote:
            console.remote = url
            self._save(console)
            task = self._remotes.pop(mac, None)
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            if url is not None:
                self._start_remote(console)
            log.info("console %s: remote console set to %s", mac, url or "none")
            self._changed(console)
        return console.to_json()

    # ---------------------------------------------------------------- serial devices
    async def _consume(self, source: Any) -> None:
        async for event in source.events():
            try:
                if event.action == "add":
                    self._device_added(event.device)
                else:
                    self._device_removed(event.device)
            except Exception:  # noqa: BLE001 - one odd device must not stop discovery
                log.exception("serial device event %s failed", event)

    def _device_added(self, info: Any) -> None:
        from dataclasses import replace

        real = os.path.realpath(info.devnode)
        for ident, state in self.devices.items():
            if os.path.realpath(state.info.devnode) == real and ident != info.identity:
                log.info("%s is already open as %s; ignoring it as %s", info.devnode, ident, info.identity)
                return
        ident = info.identity
        state = self.devices.get(ident)
        if state is not None and state.info.devnode != info.devnode and os.path.exists(state.info.devnode):
            alternative = info.path_identity or info.devnode
            log.warning(
                "two adapters report the identity %s (%s and %s): the second one is known as %s",
                ident,
                state.info.devnode,
                info.devnode,
                alternative,
            )
            info = replace(info, identity_override=alternative)
            ident = info.identity
            state = self.devices.get(ident)
        if state is not None:
            if state.info == info and state.task is not None and not state.task.done():
                return
            if state.task is not None:
                state.task.cancel()
        state = DeviceState(info)
        self.devices[ident] = state
        self._by_node[info.devnode] = ident
        state.task = asyncio.get_running_loop().create_task(self._serial_loop(state), name=f"serial-{ident}")
        log.info("serial device %s (%s) appeared", ident, info.devnode)

    def _device_removed(self, info: Any) -> None:
        ident = self._by_node.pop(info.devnode, info.identity)
        state = self.devices.pop(ident, None)
        if state is None:
            return
        if state.task is not None:
            state.task.cancel()
        log.info("serial device %s (%s) went away", ident, info.devnode)

    async def _serial_loop(self, state: DeviceState) -> None:
        from ..drivers.serial.transport import open_serial

        info = state.info
        ident = info.identity
        delay = RETRY_MIN
        while True:
            stream = Stream(f"serial:{ident}", self._closed_write, kind="serial", device=ident, baud=info.baud)
            link = None
            opened_at = None
            try:
                link = await open_serial(info.devnode, info.baud, lambda data, s=stream: self.feed(s, data))
                opened_at = time.monotonic()
                stream.write = link.write
                stream.buffered = link.buffered
                state.link, state.stream, state.error = link, stream, None
                self.streams.add(stream)
                owner = self.device_owner.get(ident)
                if owner is not None:
                    self.bind(stream, owner, persist=False)
                log.info("%s opened (%s at %d baud)", stream.name, info.devnode, info.baud)
                exc = await asyncio.shield(link.closed)
                state.error = f"closed: {exc}" if exc else "closed"
                log.info("%s closed%s", stream.name, f": {exc}" if exc else "")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - SerialException, OSError, ValueError: try again later
                message = str(exc) or type(exc).__name__
                if message != state.error:
                    log.warning("cannot open serial device %s (%s): %s", ident, info.devnode, message)
                state.error = message
            finally:
                if link is not None:
                    self._close_link(link)
                state.link = state.stream = None
                self.close_stream(stream)
            if opened_at is not None and time.monotonic() - opened_at > 5:
                delay = RETRY_MIN
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    def _close_link(self, link: Any) -> None:
        link.close()
        if not link.closed.done():
            self._closing.add(link.closed)
            link.closed.add_done_callback(self._closing.discard)

    @staticmethod
    def _closed_write(data: bytes) -> None:
        raise ConnectionError("not open yet")

    # ---------------------------------------------------------------- remote consoles
    def _start_remote(self, console: Console) -> None:
        if console.remote and console.mac not in self._remotes and not self._stopping:
            task = asyncio.get_running_loop().create_task(
                self._remote_loop(console.mac, console.remote), name=f"remote-console-{console.mac}"
            )
            self._remotes[console.mac] = task
            task.add_done_callback(
                lambda t, mac=console.mac: self._remotes.pop(mac, None) if self._remotes.get(mac) is t else None
            )

    async def _remote_loop(self, mac: str, url: str) -> None:
        from ..drivers.serial.remote import open_remote, parse_console_url

        spec = parse_console_url(url)
        delay = RETRY_MIN
        last_error = None
        while True:
            stream = Stream(spec.url, self._closed_write, kind="remote", pinned=mac, baud=spec.baud)
            link = None
            opened_at = None
            try:
                link = await open_remote(spec, lambda data, s=stream: self.feed(s, data))
                opened_at = time.monotonic()
                stream.write = link.write
                stream.buffered = link.buffered
                self.streams.add(stream)
                self.bind(stream, mac, persist=False)
                log.info("console %s: connected to %s", mac, spec.url)
                last_error = None
                exc = await asyncio.shield(link.closed)
                log.warning("console %s: %s closed%s", mac, spec.url, f": {exc}" if exc else "")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - refused, unreachable, timed out: try again later
                message = str(exc) or type(exc).__name__
                if message != last_error:
                    log.warning("console %s: cannot connect to %s: %s", mac, spec.url, message)
                last_error = message
            finally:
                if link is not None:
                    self._close_link(link)
                self.close_stream(stream)
            if opened_at is not None and time.monotonic() - opened_at > 5:
                delay = RETRY_MIN
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    # ---------------------------------------------------------------- streams
    def feed(self, stream: Stream, data: bytes) -> None:
        """Process bytes from a stream: store them, and act on association markers and pings."""
        if stream.machine is not None:
            self.consoles[stream.machine].feed(data)
        else:
            stream.pending += data
            if len(stream.pending) > PENDING_MAX:
                del stream.pending[: len(stream.pending) - PENDING_MAX]
        buf = stream.line + data if stream.line else data
        if b"SALAD." not in buf:
            # The common case: no marker. Keep only the unfinished line (a marker may straddle chunks).
            nl = buf.rfind(b"\n")
            tail = buf[nl + 1 :] if nl >= 0 else buf
            stream.line = tail[-256:] if len(tail) > MAX_LINE else tail
            return
        lines = buf.split(b"\n")
        tail = lines.pop()
        stream.line = tail[-256:] if len(tail) > MAX_LINE else tail
        for line in lines:
            if b"SALAD." in line:
                self._on_line(stream, line)

    def _on_line(self, stream: Stream, line: bytes) -> None:
        if line.rstrip(b"\r \t").endswith(b"SALAD.ping"):
            try:
                if stream.buffered() <= WRITE_MAX:
                    stream.write(b"SALAD.pong\n")
            except Exception as exc:  # noqa: BLE001 - a closing stream may refuse writes
                log.debug("pong to %s failed: %s", stream.name, exc)
        match = MARKER.search(line)
        if match:
            from .registration import normalise_mac

            token = match.group(1)
            try:
                mac = normalise_mac(token.decode("ascii", "replace"))
            except ValueError:
                prefix = MAC_PREFIX.match(token)  # a MAC followed by garbage, e.g. "...:07\x00"
                try:
                    mac = normalise_mac(prefix.group(0).decode()) if prefix else ""
                except ValueError:
                    mac = ""
                if not mac:
                    log.warning("%s announced an invalid machine id %r", stream.name, token[:40])
                    return
            if stream.pinned is not None and mac != stream.pinned:
                log.warning("%s (the console of %s) announced machine %s; ignored", stream.name, stream.pinned, mac)
                return
            try:
                self.bind(stream, mac)
            except Conflict as exc:
                log.warning("%s: %s", stream.name, exc)

    def bind(self, stream: Stream, mac: str, persist: bool = True) -> None:
        if stream.machine == mac:
            if persist and stream.device is not None and self.device_owner.get(stream.device) != mac:
                self._assign_device(stream.device, mac, "marker")
            return
        console = self.console(mac)
        if stream.machine is not None:
            log.warning("%s moves from machine %s to %s", stream.name, stream.machine, mac)
            old = self.consoles[stream.machine]
            if old.stream is stream:
                old.stream = None
                self._changed(old)
        if console.stream is not None and console.stream is not stream:
            log.warning("console of %s moves from %s to %s", mac, console.stream.name, stream.name)
        stream.machine = mac
        console.stream = stream
        if persist and stream.device is not None:
            self._assign_device(stream.device, mac, "marker")
        if stream.pending:
            console.feed(bytes(stream.pending))
            stream.pending.clear()
        log.info("%s is the console of %s", stream.name, mac)
        self._changed(console)

    def unbind(self, stream: Stream) -> None:
        if stream.machine is None:
            return
        console = self.consoles.get(stream.machine)
        stream.machine = None
        if console is not None and console.stream is stream:
            console.stream = None
            self._changed(console)

    def close_stream(self, stream: Stream) -> None:
        self.streams.discard(stream)
        if stream.machine is not None:
            console = self.consoles.get(stream.machine)
            if console is not None and console.stream is stream:
                console.stream = None
                self._changed(console)

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conn_tasks.add(task)
        peer = writer.get_extra_info("peername") or ("?", 0)
        stream = Stream(
            f"netconsole@{peer[0]}:{peer[1]}", writer.write, buffered=writer.transport.get_write_buffer_size
        )
        self.streams.add(stream)
        log.info("%s connected", stream.name)
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                self.feed(stream, data)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.close_stream(stream)
            writer.close()
            log.info("%s disconnected", stream.name)
            self._conn_tasks.discard(task)

    def _schedule_flush(self) -> None:
        """Console output becomes ``console`` events at most EVENT_HZ times a second, only when there is some."""
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(1 / EVENT_HZ, self._flush_events)

    def _flush_events(self) -> None:
        self._flush_handle = None
        subs = getattr(self.bus, "_subs", None)  # anyone listening to console events (the TUI, an API stream)?
        listening = subs is None or any(sub.types is None or "console" in sub.types for sub in subs)
        for console in self.consoles.values():
            if console.pending_event:
                if not listening:  # nobody to tell: skip the decoding
                    console.pending_event.clear()
                    continue
                text = console.decoder.decode(bytes(console.pending_event))
                console.pending_event.clear()
                if text:
                    self.bus.publish("console", {"mac": console.mac, "text": text})


def build_device_sources(settings: Any) -> list[Any]:
    """The device sources a farm's settings ask for: explicit ``--serial`` paths, then USB discovery."""
    from ..drivers.serial import ExplicitDeviceSource, PyudevDeviceSource

    sources: list[Any] = []
    if settings.serial:
        sources.append(ExplicitDeviceSource(settings.serial))
    if settings.console_discovery != "off":
        sources.append(PyudevDeviceSource(settings.console_discovery, baud=settings.console_serial_baud))
    return sources
