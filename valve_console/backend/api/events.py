"""The event bus as Server-Sent Events (/api/v1/events)."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Optional

from fastapi import APIRouter, Query
from sse_starlette import EventSourceResponse

from ..errors import BadRequest
from ..events import EVENT_TYPES
from .deps import SECRET_READ, FarmDep
from .models import ERRORS
from .streams import KEEPALIVE, KEEPALIVE_COMMENT, RETRY, event_stream

router = APIRouter()
EVENTS_QUEUE_LEN = 5000  # events queued per /api/v1/events reader...
EVENTS_QUEUE_BYTES = 8 << 20  # ...and bytes of their encoding (a console event is up to 256 KiB)


@router.get("/api/v1/events", tags=["events"], responses=ERRORS, dependencies=SECRET_READ)
async def events(
    farm: FarmDep, types: Optional[str] = Query(default=None, description="comma-separated event types")
) -> EventSourceResponse:
    wanted = None
    if types:
        wanted = {t.strip() for t in types.split(",") if t.strip()}
        unknown = wanted - set(EVENT_TYPES)
        if unknown:
            raise BadRequest(f"unknown event types: {', '.join(sorted(unknown))} (known: {', '.join(EVENT_TYPES)})")
        wanted.add("dropped")
    sub = farm.bus.subscribe(wanted, maxlen=EVENTS_QUEUE_LEN, maxbytes=EVENTS_QUEUE_BYTES)

    async def gen() -> AsyncIterator[bytes]:
        # Events are taken in pieces of at most 64 KiB, each event encoded once for every reader: a
        # reader that stops reading holds one piece in its connection and at most EVENTS_QUEUE_BYTES
        # of shared events in its queue (the oldest are dropped, then a "dropped" marker is sent).
        try:
            yield RETRY
            while not sub.closed:
                if not await sub.wait(timeout=KEEPALIVE):
                    yield KEEPALIVE_COMMENT
                    continue
                chunk = sub.take()
                if chunk:
                    yield bytes(chunk)  # a piece of one event is a memoryview of the shared encoding
                # A write the kernel takes at once does not suspend: let other readers and
                # requests run between pieces, or one reader's backlog holds the loop.
                await asyncio.sleep(0)
        finally:
            sub.close()

    return event_stream(gen(), sub.close)
