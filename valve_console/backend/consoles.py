"""ConsoleHub: console streams → association with a machine → per-machine console.

A *stream* is one source of console bytes (today: a TCP connection to the netconsole port, as
QEMU DUTs and Vivian's simulated DUTs make). A line holding ``SALAD.machine_id=<mac>`` binds the
stream to that machine; a line ending in ``SALAD.ping`` is answered ``SALAD.pong\\n``. Each
machine's *console* keeps a bounded ring buffer of timestamped chunks, a rotated log file and
any number of live subscribers. Bytes are stored raw; sanitising is the viewer's job.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import os
import re
import socket
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

from .errors import Conflict, NotFound
from .events import EventBus

log = logging.getLogger(__name__)

MARKER = re.compile(rb"SALAD\.machine_id=(\S+)")
MAX_LINE = 4096  # bytes kept while waiting for a newline; longer "lines" are cut
PENDING_MAX = 64 * 1024  # bytes kept from a stream before it is bound to a machine
EVENT_HZ = 20
EVENT_MAX_TEXT = 256 * 1024


class RotatingLog:
    """Append-only log file rotated by size: ``x.log``, ``x.log.1`` ... ``x.log.<backups>``."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._fd: int | None = None
        self._size = 0

    def _open(self) -> int:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            self._size = os.fstat(self._fd).st_size
        return self._fd

    def write(self, data: bytes) -> None:
        fd = self._open()
        if self.max_bytes and self._size + len(data) > self.max_bytes and self._size > 0:
            self._rotate()
            fd = self._open()
        os.write(fd, data)
        self._size += len(data)

    def _rotate(self) -> None:
        self.close()
        for i in range(self.backups - 1, 0, -1):
            src = self.path.with_name(f"{self.path.name}.{i}")
            if src.exists():
                os.replace(src, self.path.with_name(f"{self.path.name}.{i + 1}"))
        if self.backups > 0:
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Console:
    """One machine's console: ring buffer, log file, live subscribers, and the stream to write to."""

    def __init__(self, mac: str, ring_bytes: int, logfile: RotatingLog) -> None:
        self.mac = mac
        self.ring: deque[tuple[float, bytes]] = deque()
        self.ring_bytes = ring_bytes
        self._held = 0
        self.total = 0
        self.log = logfile
        self.stream: "Stream | None" = None
        self.subscribers: set[asyncio.Queue[bytes | None]] = set()
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.pending_event = bytearray()
        self.last_activity: float | None = None
        self.on_pending: Callable[[], None] = lambda: None

    def feed(self, data: bytes) -> None:
        now = time.time()
        self.last_activity = now
        self.total += len(data)
        self.ring.append((now, data))
        self._held += len(data)
        while self._held > self.ring_bytes and len(self.ring) > 1:
            _, old = self.ring.popleft()
            self._held -= len(old)
        if self._held > self.ring_bytes:  # one chunk larger than the whole ring
            ts, only = self.ring.pop()
            self.ring.append((ts, only[-self.ring_bytes :]))
            self._held = min(len(only), self.ring_bytes)
        try:
            self.log.write(data)
        except OSError as exc:
            log.error("console log of %s: %s", self.mac, exc)
        for queue in list(self.subscribers):
            if queue.qsize() >= 1024:  # a slow viewer loses its oldest chunk, never blocks the DUT
                try:
                    queue.get_nowait()
                except asyncio.QueueEmpty:
                    pass
            queue.put_nowait(data)
        if len(self.pending_event) < EVENT_MAX_TEXT:
            if not self.pending_event:
                self.on_pending()
            self.pending_event += data[: EVENT_MAX_TEXT - len(self.pending_event)]

    def contents(self) -> bytes:
        return b"".join(chunk for _, chunk in self.ring)

    def to_json(self) -> dict[str, Any]:
        return {
            "mac": self.mac,
            "source": self.stream.name if self.stream else None,
            "connected": self.stream is not None,
            "tcp_port": None,
            "bytes": self.total,
            "buffered": self._held,
            "last_activity": self.last_activity,
            "log_path": str(self.log.path),
        }


class Stream:
    """One console byte source. ``write`` sends bytes back to the device."""

    def __init__(self, name: str, write: Callable[[bytes], None]) -> None:
        self.name = name
        self.write = write
        self.machine: str | None = None
        self.line = bytearray()
        self.pending = bytearray()


class ConsoleHub:
    def __init__(self, bus: EventBus, log_dir: Path, ring_bytes: int, log_max_bytes: int, log_backups: int) -> None:
        self.bus = bus
        self.log_dir = log_dir
        self.ring_bytes = ring_bytes
        self.log_max_bytes = log_max_bytes
        self.log_backups = log_backups
        self.consoles: dict[str, Console] = {}
        self.streams: set[Stream] = set()
        self._server: asyncio.base_events.Server | None = None
        self._flush_handle: asyncio.TimerHandle | None = None
        self._conn_tasks: set[asyncio.Task] = set()
        self.state = "starting"
        self.reason: str | None = None
        self.address: tuple[str, int] | None = None

    # ---------------------------------------------------------------- lifecycle
    async def start(self, sock: socket.socket | None) -> None:
        if sock is not None:
            self._server = await asyncio.start_server(self._on_connection, sock=sock)
            self.address = sock.getsockname()[:2]
        self.state = "ok"

    async def stop(self) -> None:
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
        for console in self.consoles.values():
            for queue in console.subscribers:
                queue.put_nowait(None)
            console.log.close()

    # ---------------------------------------------------------------- consoles
    def console(self, mac: str, create: bool = True) -> Console:
        console = self.consoles.get(mac)
        if console is None:
            if not create:
                raise NotFound(f"no console for machine {mac}")
            logfile = RotatingLog(self.log_dir / f"{mac}.log", self.log_max_bytes, self.log_backups)
            console = self.consoles[mac] = Console(mac, self.ring_bytes, logfile)
            console.on_pending = self._schedule_flush
        return console

    def subscribe(self, mac: str) -> asyncio.Queue[bytes | None]:
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.console(mac).subscribers.add(queue)
        return queue

    def unsubscribe(self, mac: str, queue: asyncio.Queue[bytes | None]) -> None:
        console = self.consoles.get(mac)
        if console is not None:
            console.subscribers.discard(queue)

    def write(self, mac: str, data: bytes) -> int:
        console = self.console(mac, create=False)
        if console.stream is None:
            raise Conflict(f"the console of {mac} is not connected: nothing to type into")
        console.stream.write(data)
        return len(data)

    def list_json(self) -> dict[str, Any]:
        return {mac: c.to_json() for mac, c in sorted(self.consoles.items())}

    # ---------------------------------------------------------------- streams
    def feed(self, stream: Stream, data: bytes) -> None:
        """Process bytes from a stream: store them, and act on association markers and pings."""
        if stream.machine is not None:
            self.consoles[stream.machine].feed(data)
        else:
            stream.pending += data
            if len(stream.pending) > PENDING_MAX:
                del stream.pending[: len(stream.pending) - PENDING_MAX]
        stream.line += data
        while True:
            idx = stream.line.find(b"\n")
            if idx < 0:
                if len(stream.line) > MAX_LINE:
                    del stream.line[: len(stream.line) - 256]  # keep a tail: a marker may straddle
                break
            line = bytes(stream.line[:idx])
            del stream.line[: idx + 1]
            self._on_line(stream, line)

    def _on_line(self, stream: Stream, line: bytes) -> None:
        if b"SALAD." not in line:
            return
        if line.rstrip(b"\r \t").endswith(b"SALAD.ping"):
            try:
                stream.write(b"SALAD.pong\n")
            except Exception as exc:  # noqa: BLE001 - a closing stream may refuse writes
                log.debug("pong to %s failed: %s", stream.name, exc)
        match = MARKER.search(line)
        if match:
            from .registration import normalise_mac

            try:
                mac = normalise_mac(match.group(1).decode("ascii", "replace"))
            except ValueError:
                log.warning("%s announced an invalid machine id %r", stream.name, match.group(1)[:40])
                return
            self.bind(stream, mac)

    def bind(self, stream: Stream, mac: str) -> None:
        if stream.machine == mac:
            return
        if stream.machine is not None:
            log.warning("%s moves from machine %s to %s", stream.name, stream.machine, mac)
            old = self.consoles[stream.machine]
            if old.stream is stream:
                old.stream = None
        console = self.console(mac)
        if console.stream is not None and console.stream is not stream:
            log.warning("console of %s moves from %s to %s", mac, console.stream.name, stream.name)
        stream.machine = mac
        console.stream = stream
        if stream.pending:
            console.feed(bytes(stream.pending))
            stream.pending.clear()
        log.info("%s is the console of %s", stream.name, mac)
        self.bus.publish("console", {"mac": mac, "text": "", "console": console.to_json()})

    def close_stream(self, stream: Stream) -> None:
        self.streams.discard(stream)
        if stream.machine is not None:
            console = self.consoles.get(stream.machine)
            if console is not None and console.stream is stream:
                console.stream = None
                self.bus.publish("console", {"mac": console.mac, "text": "", "console": console.to_json()})

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conn_tasks.add(task)
        peer = writer.get_extra_info("peername") or ("?", 0)
        stream = Stream(f"netconsole@{peer[0]}:{peer[1]}", writer.write)
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
        for console in self.consoles.values():
            if console.pending_event:
                text = console.decoder.decode(bytes(console.pending_event))
                console.pending_event.clear()
                if text:
                    self.bus.publish("console", {"mac": console.mac, "text": text})
