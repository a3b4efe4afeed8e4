"""Typed events and a bounded publish/subscribe bus.

Every state change is published once. Subscribers each get a bounded queue; a subscriber that
falls behind loses its oldest events and is told how many with a ``dropped`` event. Publishing
never blocks and never waits for a subscriber.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Iterable

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
    "dropped",
)


@dataclass(frozen=True)
class Event:
    type: str
    data: dict[str, Any]
    seq: int = 0
    ts: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "seq": self.seq, "ts": self.ts, "data": self.data}


class Subscription:
    """One subscriber's bounded queue. Iterate it with ``async for``; close it when done."""

    def __init__(self, bus: "EventBus", types: frozenset[str] | None, maxlen: int) -> None:
        self._bus = bus
        self.types = types
        self._queue: deque[Event] = deque()
        self._maxlen = maxlen
        self._dropped = 0
        self._wakeup = asyncio.Event()
        self.closed = False

    def _push(self, event: Event) -> None:
        if self.types is not None and event.type not in self.types:
            return
        if len(self._queue) >= self._maxlen:
            self._queue.popleft()
            self._dropped += 1
        self._queue.append(event)
        self._wakeup.set()

    def drain(self) -> list[Event]:
        """Everything queued now, oldest first, with a ``dropped`` marker first if events were lost."""
        events: list[Event] = []
        if self._dropped:
            events.append(Event("dropped", {"count": self._dropped}, seq=-1))
            self._dropped = 0
        events.extend(self._queue)
        self._queue.clear()
        self._wakeup.clear()
        return events

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
        self._seq = itertools.count(1)
        self.queue_size = queue_size
        self.published = 0

    def publish(self, type: str, data: dict[str, Any]) -> Event:
        event = Event(type, data, seq=next(self._seq))
        self.published += 1
        for sub in list(self._subs):
            sub._push(event)
        return event

    def subscribe(self, types: Iterable[str] | None = None, maxlen: int | None = None) -> Subscription:
        sub = Subscription(self, frozenset(types) if types else None, maxlen or self.queue_size)
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
