"""Typed events and a bounded publish/subscribe bus.

Every state change is published once. Subscribers each get a bounded queue; a subscriber that
falls behind loses its oldest events and is told how many with a ``dropped`` event. Publishing
never blocks and never waits for a subscriber.

A queue is bounded in events and, for subscribers that ask (the API's event stream), in bytes of
the event's SSE encoding: console events carry up to 256 KiB, so a count alone does not bound
memory. An event is encoded once (:attr:`Event.sse`) and the same bytes are shared by every
subscriber, which take them in pieces of bounded size (:meth:`Subscription.take`).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import deque
from dataclasses import dataclass, field
from functools import cached_property
import logging
from typing import Any, AsyncIterator, Callable, Iterable

EVENT_TYPES = (
    "machine",
    "pdu",
    "outlet",
    "discovery",
    "console",
    "health",
    "log",
    "journal",
    "job",
    "gitlab",
    "settings",
    "dropped",
)
log = logging.getLogger(__name__)
CHUNK_BYTES = 64 * 1024  # what Subscription.take gives at most for one write


@dataclass(frozen=True)
class Event:
    type: str
    data: dict[str, Any]
    seq: int = 0
    ts: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "seq": self.seq, "ts": self.ts, "data": self.data}

    @cached_property
    def sse(self) -> bytes:
        """The event as one Server-Sent Events message, encoded once and shared by every reader."""
        return sse_message(self.type, self.to_json(), self.seq)


def sse_message(event: str, data: dict[str, Any], seq: int | None = None) -> bytes:
    """``id:``/``event:``/``data:`` lines of one SSE message (the id only for a sequence number >= 0)."""
    head = f"id: {seq}\n" if seq is not None and seq >= 0 else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class Subscription:
    """One subscriber's bounded queue. Iterate it with ``async for``; close it when done."""

    def __init__(
        self, bus: "EventBus", types: frozenset[str] | None, maxlen: int, maxbytes: int | None = None
    ) -> None:
        self._bus = bus
        self.types = types
        self._queue: deque[Event] = deque()
        self._maxlen = maxlen
        self._maxbytes = maxbytes
        self._bytes = 0  # SSE bytes queued (counted only with maxbytes)
        self._partial: memoryview | None = None  # the rest of an event that take() gave in part
        self._dropped = 0
        self._wakeup = asyncio.Event()
        self.closed = False

    def _push(self, event: Event) -> None:
        if self.types is not None and event.type not in self.types:
            return
        if len(self._queue) >= self._maxlen:
            self._pop_oldest()
        if self._maxbytes is not None:
            size = len(event.sse)
            while self._queue and self._bytes + size > self._maxbytes:
                self._pop_oldest()
            self._bytes += size
        self._queue.append(event)
        self._wakeup.set()

    def _pop_oldest(self) -> Event:
        event = self._queue.popleft()
        self._dropped += 1
        if self._maxbytes is not None:
            self._bytes -= len(event.sse)
        return event

    def _marker(self) -> list[Event]:
        if not self._dropped:
            return []
        marker = Event("dropped", {"count": self._dropped}, seq=-1)
        self._dropped = 0
        return [marker]

    def drain(self) -> list[Event]:
        """Everything queued now, oldest first, with a ``dropped`` marker first if events were lost."""
        events = self._marker()
        events.extend(self._queue)
        self._queue.clear()
        self._bytes = 0
        self._wakeup.clear()
        return events

    def take(self, max_bytes: int = CHUNK_BYTES) -> bytes | memoryview:
        """At most ``max_bytes`` of the SSE stream of the queued events, oldest first (a ``dropped``
        marker first if events were lost); a long event is given in pieces over several calls. Empty
        when nothing is queued. Nothing is copied for a piece of one event."""
        parts: list[bytes | memoryview] = []
        size = 0
        while size < max_bytes:
            if self._partial is None:
                message = self._next_message()
                if message is None:
                    break
                self._partial = memoryview(message)
            piece = self._partial[: max_bytes - size]
            self._partial = self._partial[len(piece):] or None
            parts.append(piece)
            size += len(piece)
        if not self.pending:
            self._wakeup.clear()
        if not parts:
            return b""
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _next_message(self) -> bytes | None:
        marker = self._marker()
        if marker:
            return marker[0].sse
        if not self._queue:
            return None
        event = self._queue.popleft()
        if self._maxbytes is not None:
            self._bytes -= len(event.sse)
        return event.sse

    @property
    def pending(self) -> bool:
        """Something to read: queued events, a lost-events marker, or the rest of a long event."""
        return bool(self._queue or self._dropped or self._partial is not None)

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait until something is queued (True) or the timeout passed (False)."""
        if self.pending or self.closed:
            return True
        try:
            await asyncio.wait_for(self._wakeup.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    async def get_batch(self, timeout: float | None = None) -> list[Event]:
        """Wait until at least one event is queued (or the timeout passes) and return them all."""
        if not self._queue and not self._dropped and not self.closed:
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout)
            except asyncio.TimeoutError:
                return []
        return self.drain()

    async def __aiter__(self) -> AsyncIterator[Event]:
        while not self.closed:
            for event in await self.get_batch():
                yield event

    def close(self) -> None:
        self.closed = True
        self._wakeup.set()
        self._bus._unsubscribe(self)


class EventBus:
    def __init__(self, queue_size: int = 10_000) -> None:
        self._subs: list[Subscription] = []
        self._watchers: list[tuple[frozenset[str], Callable[[Event], None]]] = []
        self._seq = itertools.count(1)
        self.queue_size = queue_size
        self.published = 0

    def publish(self, type: str, data: dict[str, Any]) -> Event:
        event = Event(type, data, seq=next(self._seq))
        self.published += 1
        for sub in list(self._subs):
            sub._push(event)
        for types, watcher in list(self._watchers):
            if type in types:
                try:
                    watcher(event)
                except Exception:  # noqa: BLE001 - a watcher's bug must not fail the publisher's change
                    log.exception("event watcher %r failed on a %s event", watcher, type)
        return event

    def watch(self, types: Iterable[str], watcher: Callable[[Event], None]) -> Callable[[], None]:
        """Call ``watcher(event)`` inside ``publish`` for each event of ``types``; returns the unwatch.

        For in-process services whose reaction must be part of the change itself (training starts when
        a machine gets its outlet, so the answer to that change already says TRAINING). A watcher must
        be quick and must not block; it may publish. Streams and batched readers use :meth:`subscribe`.
        """
        entry = (frozenset(types), watcher)
        self._watchers.append(entry)

        def unwatch() -> None:
            if entry in self._watchers:
                self._watchers.remove(entry)

        return unwatch

    def subscribe(
        self, types: Iterable[str] | None = None, maxlen: int | None = None, maxbytes: int | None = None
    ) -> Subscription:
        """A new subscriber (all types, or ``types``), bounded to ``maxlen`` events and, if given,
        ``maxbytes`` bytes of SSE encoding (always room for the newest event)."""
        sub = Subscription(self, frozenset(types) if types else None, maxlen or self.queue_size, maxbytes)
        self._subs.append(sub)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)

    def close_all(self) -> None:
        for sub in list(self._subs):
            sub.close()

    @property
    def subscriber_count(self) -> int:
        return len(self._subs)
