"""Server-Sent Events answers: the event bus (/api/v1/events), a console (.../stream), a job (.../events).

The framing is written here (events.py's ``sse_message``) rather than by sse-starlette's
``EventSourceResponse``: the event bus encodes each event once and hands every reader zero-copy
pieces of at most 64 KiB of those shared bytes (memoryviews), which EventSourceResponse does not pass
through (it encodes what is not ``bytes`` as a new event); it adds response headers
(``Connection: keep-alive``, ``X-Accel-Buffering: no``) that our answers do not have; and its ping
task would replace the keep-alive comment (``: keepalive``) that our readers and tests expect.
"""

from __future__ import annotations

from typing import Any, AsyncIterator

from fastapi.responses import StreamingResponse

from ..events import sse_message

KEEPALIVE = 15.0  # seconds without output before a ": keepalive" comment
RETRY = b"retry: 2000\n\n"  # what a stream says first: reconnect after 2 s
KEEPALIVE_COMMENT = b": keepalive\n\n"


def sse(event: str, data: dict[str, Any], seq: int | None = None) -> bytes:
    return sse_message(event, data, seq)


def event_stream(body: AsyncIterator[bytes | memoryview]) -> StreamingResponse:
    return StreamingResponse(body, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
