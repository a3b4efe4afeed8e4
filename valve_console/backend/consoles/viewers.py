"""A console's readers and writer: ``Subscriber`` (an API stream, bounded, oldest bytes dropped), ``TcpViewer``
(a client of the machine's TCP port, with takeover) and ``Writer``."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from .limits import NOTICE_INTERVAL, SUBSCRIBER_MAX, VIEWER_HIGH, VIEWER_LOW

if TYPE_CHECKING:
    from .console import Console
    from .host import HubHost


# --------------------------------------------------------------------------- viewers and writers
class Subscriber:
    """An API stream's queue of console bytes, bounded in bytes; the oldest are dropped and counted."""

    def __init__(self, limit: int = SUBSCRIBER_MAX, who: str | None = None) -> None:
        self.limit = limit
        self.who = who  # "api" for an API stream; None: inside the backend (a running job reads it)
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

    def __init__(self, hub: "HubHost", console: "Console") -> None:
        self.hub = hub
        self.console = console
        self.transport: asyncio.Transport | None = None
        self.who = "tcp:?"
        self.paused = False
        self.dropped = 0
        self.escape = False  # the last byte received was Ctrl-]
        self._last_notice: tuple[float, str] = (0.0, "")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
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
