"""Connection limits of the API's HTTP server: the DUT network may open connections, not keep them.

uvicorn closes a keep-alive connection after ``timeout_keep_alive`` seconds without a request, but a
connection that never completes a request head stays open for ever, and it has no cap on connections:
1,100 idle connections from a DUT made ``accept()`` fail for everyone (the process ran out of file
descriptors). :func:`guarded_h11` gives uvicorn an HTTP protocol (its h11 one) that:

- closes a connection whose request head is not complete ``head_timeout`` seconds after it opened, or
  after the previous answer ended (a slow-loris drip of header bytes does not extend it);
- aborts a connection whose peer has not read what it was sent for ``write_stall_timeout`` seconds
  (an event stream or a download to a reader that stopped reading);
- refuses connections (503, in words, then closed) past ``max_connections`` in all, or past
  ``per_source`` from one address (sources ``exempt`` says, the operator's, are not counted per source).

The API's unix socket gets its own server and descriptors are kept for it: ``max_connections`` is at
most a quarter of the process's descriptor limit and connections are accepted :data:`ACCEPT_BACKLOG` at
a time, so TCP floods never starve the local TUI.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Optional

from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

HEAD_TIMEOUT = 10.0
KEEP_ALIVE_TIMEOUT = 5  # uvicorn's timeout_keep_alive: idle keep-alive connections close after this
WRITE_STALL_TIMEOUT = 60.0
MAX_CONNECTIONS = 1024
PER_SOURCE = 64
# asyncio accepts up to ``backlog`` connections at each wake-up before any of them is looked at: a
# flood's burst would take every descriptor before a refusal closes one. 128 keeps the overshoot small
# (uvicorn's default, 2048, is more than the descriptors of a default process).
ACCEPT_BACKLOG = 128
REFUSAL_LOG_INTERVAL = 10.0


def descriptor_share(ceiling: int = MAX_CONNECTIONS) -> int:
    """The TCP connection cap for this process: a quarter of its descriptor limit, at most ``ceiling``
    (the rest is for the unix socket, the netconsole, consoles' logs, the database and PDUs)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return ceiling
    return max(16, min(ceiling, soft // 4))


@dataclass(frozen=True)
class ConnectionLimits:
    head_timeout: float = HEAD_TIMEOUT
    write_stall_timeout: float = WRITE_STALL_TIMEOUT
    max_connections: Optional[int] = None  # None: no cap (the trusted unix socket)
    per_source: Optional[int] = None
    exempt: Callable[[Optional[str]], bool] = lambda host: False  # sources not counted per source


class _Refusals:
    """Counts refused connections and logs them at most every REFUSAL_LOG_INTERVAL seconds."""

    def __init__(self) -> None:
        self.count = 0
        self._unlogged = 0
        self._logged_at = float("-inf")

    def add(self, reason: str) -> None:
        self.count += 1
        self._unlogged += 1
        now = time.monotonic()
        if now - self._logged_at >= REFUSAL_LOG_INTERVAL:
            log.warning("API connection refused: %s (%d refused since the last report)", reason, self._unlogged)
            self._unlogged = 0
            self._logged_at = now


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a request-head deadline, a write-stall limit and connection caps.
    :func:`guarded_h11` makes a subclass per server (its limits and per-source counts)."""

    limits = ConnectionLimits()
    sources: Counter[str] = Counter()
    refusals = _Refusals()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: Optional[asyncio.TimerHandle] = None
        self._stall_timer: Optional[asyncio.TimerHandle] = None
        self._source: Optional[str] = None  # counted in ``sources`` while open
        self._refused = False

    # ---------------------------------------------------------------- admission
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        host = self.client[0] if self.client else None
        reason = self._refusal(host)
        if reason is not None:
            self._refuse(reason)
            return
        if host is not None and self.limits.per_source is not None and not self.limits.exempt(host):
            self._source = host
            self.sources[host] += 1
        self._start_head_timer()

    def _refusal(self, host: Optional[str]) -> Optional[str]:
        limits = self.limits
        if limits.max_connections is not None and len(self.connections) > limits.max_connections:
            return f"the API has {limits.max_connections} connections open, its limit"
        if (
            host is not None
            and limits.per_source is not None
            and self.sources[host] >= limits.per_source
            and not limits.exempt(host)
        ):
            return f"{host} has {limits.per_source} connections open to the API, the limit per address"
        return None

    def _refuse(self, reason: str) -> None:
        self._refused = True
        self.refusals.add(reason)
        body = json.dumps({"error": f"too many connections: {reason}; try again later"}).encode()
        head = (
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\n"
            f"retry-after: 5\r\ncontent-length: {len(body)}\r\n\r\n"
        ).encode()
        self.transport.write(head + body)
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._cancel(self._head_timer)
        self._cancel(self._stall_timer)
        self._head_timer = self._stall_timer = None
        if self._source is not None:
            self.sources[self._source] -= 1
            if self.sources[self._source] <= 0:
                del self.sources[self._source]
            self._source = None
        super().connection_lost(exc)

    # ---------------------------------------------------------------- the request head's deadline
    def _start_head_timer(self) -> None:
        self._cancel(self._head_timer)
        self._head_timer = self.loop.call_later(self.limits.head_timeout, self._head_timed_out)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # a request head was complete: its handler runs, no deadline
            self._cancel(self._head_timer)
            self._head_timer = None

    def on_response_complete(self) -> None:
        # The next request's head must come in time (keep-alive closes an idle connection sooner; this
        # also ends a connection still sending the body of a request that was answered without it).
        if not self.transport.is_closing():
            self._start_head_timer()
        super().on_response_complete()

    # ---------------------------------------------------------------- readers that stop reading
    def pause_writing(self) -> None:
        super().pause_writing()
        if self._stall_timer is None:
            self._stall_timer = self.loop.call_later(self.limits.write_stall_timeout, self._stalled)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._cancel(self._stall_timer)
        self._stall_timer = None

    def _stalled(self) -> None:
        self._stall_timer = None
        host = self.client[0] if self.client else "the unix socket"
        log.info("API connection from %s aborted: nothing it was sent was read for %.0f s",
                 host, self.limits.write_stall_timeout)
        self.transport.abort()

    @staticmethod
    def _cancel(timer: Optional[asyncio.TimerHandle]) -> None:
        if timer is not None:
            timer.cancel()


def guarded_h11(limits: ConnectionLimits) -> type[GuardedH11Protocol]:
    """The protocol class for one uvicorn server (``uvicorn.Config(http=...)``) with these limits."""
    return type(
        "GuardedH11Protocol",
        (GuardedH11Protocol,),
        {"limits": limits, "sources": Counter(), "refusals": _Refusals()},
    )
