"""The event feed: the console's one subscription to the backend, through the FarmClient.

``EventFeed.run`` keeps the event stream open: it subscribes, fetches everything once the stream is
up (the snapshot), then buffers every event into ``pending`` (a ``Changes``: latest state wins) until
the stream fails; then it says the backend is lost and reconnects with back-off (0.5 s → 5 s), and
refetches. A ``dropped`` event (the backend's queue for us overflowed) or a removed machine asks for a
refetch too. The app takes the buffer on its own timer (``take``) and applies it to the model.

No Textual here: the app is told what happens through the callables it gives.
"""

from __future__ import annotations

import asyncio
from typing import Callable

from ..client import FarmClient, FarmClientError
from ..contract import DiscoveryStatus, Job
from .changes import Changes, Snapshot

BACKOFF_START = 0.5
BACKOFF_MAX = 5.0
STREAM_SETTLE = 0.1  # seconds given to the event stream to subscribe before the refetch


class EventFeed:
    """Events from ``client`` into ``pending``, reconnecting for ever.

    ``flush()`` is called before each refetch (what was buffered so far is older than what comes
    back); ``connected()`` once a (re)connection fetched everything; ``lost(reason)`` each time the
    stream or a fetch failed; ``report(message, severity)`` for a failed refetch after dropped events;
    ``discovery(status)`` with the discovery status refetched after discovery events.
    """

    def __init__(
        self,
        client: FarmClient,
        *,
        flush: Callable[[], None],
        connected: Callable[[], None],
        lost: Callable[[str], None],
        report: Callable[[str, str], None],
        discovery: Callable[[DiscoveryStatus], None],
    ) -> None:
        self.client = client
        self.pending = Changes()
        self._flush = flush
        self._connected = connected
        self._lost = lost
        self._report = report
        self._discovery = discovery
        self._refetch_task: asyncio.Task[None] | None = None
        self._discovery_task: asyncio.Task[None] | None = None
        self._discovery_dirty = False
        self.last_error: FarmClientError | None = None  # why the stream was last lost (its status: 401...)
        self.types: tuple[str, ...] | None = None  # the event types read (None: all)
        self._filter_refused = False
        self._resubscribe = asyncio.Event()

    def take(self) -> Changes | None:
        """The changes buffered so far (a fresh buffer takes their place), or None when there are none."""
        if not self.pending:
            return None
        changes, self.pending = self.pending, Changes()
        return changes

    def close(self) -> None:
        """Cancel the refetches on their way (the app is going)."""
        for task in (self._refetch_task, self._discovery_task):
            if task is not None and not task.done():
                task.cancel()

    # ---------------------------------------------------------------- connection
    def set_types(self, types: tuple[str, ...] | None) -> None:
        """Read only these event types from now on (None: all): the stream is opened again with them,
        quietly (no ``lost``), and everything refetched, since what was filtered out is not known."""
        wanted = None if types is None or self._filter_refused else tuple(types)
        if wanted == self.types:
            return
        self.types = wanted
        self._resubscribe.set()

    async def run(self) -> None:
        delay = BACKOFF_START
        while True:
            self._resubscribe.clear()
            stream = asyncio.create_task(self._read_events(), name="valve-console-events")
            reason = ""
            self.last_error = None
            try:
                await asyncio.sleep(STREAM_SETTLE)
                if stream.done():
                    stream.result()  # raises the stream's error
                    raise FarmClientError("the event stream ended")
                await self.refetch()
            except FarmClientError as exc:
                reason, self.last_error = str(exc), exc
            else:
                self._connected()
                delay = BACKOFF_START
                resubscribe = asyncio.create_task(self._resubscribe.wait())
                try:
                    await asyncio.wait({stream, resubscribe}, return_when=asyncio.FIRST_COMPLETED)
                    if stream.done():
                        stream.result()
                        reason = "the event stream ended"
                except FarmClientError as exc:
                    reason, self.last_error = str(exc), exc
                finally:
                    resubscribe.cancel()
            finally:
                if not stream.done():
                    stream.cancel()
                await asyncio.gather(stream, return_exceptions=True)  # its error is retrieved, never leaked
            if not reason:
                continue  # other types asked for (set_types): subscribe again now
            error = self.last_error
            if error is not None and error.status == 400 and self.types is not None:
                self._filter_refused = True  # a gateway that does not know one of the types: read them all
                self.types = None
                continue
            self._lost(reason)
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)

    async def _read_events(self) -> None:
        async for event in self.client.events(list(self.types) if self.types is not None else None):
            if self.pending.add_event(event):
                self.schedule_refetch()

    def schedule_refetch(self) -> None:
        if self._refetch_task is None or self._refetch_task.done():
            self._refetch_task = asyncio.create_task(self._refetch_quietly())

    async def _refetch_quietly(self) -> None:
        try:
            await self.refetch()
        except FarmClientError as exc:
            self._report(f"refetch after dropped events failed: {exc}", "error")

    async def refetch(self) -> None:
        """Fetch everything; the next flush replaces the model with it."""
        self._flush()  # events buffered so far are older than what comes back now
        c = self.client
        health, gateway, machines, pdus, consoles, backend_log, discovery, jobs = await asyncio.gather(
            c.health(), c.gateway(), c.machines(), c.pdus(), c.consoles_and_devices(),
            c.backend_log(500), self.fetch_discovery(), self._fetch_jobs()
        )
        self.pending.snapshot = Snapshot(
            health=health,
            gateway=gateway.interfaces,
            machines=machines,
            pdus=pdus,
            consoles=consoles.consoles,
            backend_log=backend_log,
            devices=consoles.devices,
            discovery=discovery,
            jobs=jobs,
        )

    async def fetch_discovery(self) -> DiscoveryStatus | None:
        """The discovery status; None from a backend without discovery (404)."""
        try:
            return await self.client.discovery()
        except FarmClientError as exc:
            if exc.status is not None and 400 <= exc.status < 500 and exc.status != 401:
                return None  # an older backend: no discovery there
            raise

    async def _fetch_jobs(self) -> list[Job] | None:
        """The jobs, newest first; None from a backend without jobs (404)."""
        try:
            return await self.client.jobs()
        except FarmClientError as exc:
            if exc.status is not None and 400 <= exc.status < 500 and exc.status != 401:
                return None  # an older backend: no jobs there
            raise

    # ---------------------------------------------------------------- discovery
    def schedule_discovery_refresh(self) -> None:
        self._discovery_dirty = True
        if self._discovery_task is None or self._discovery_task.done():
            self._discovery_task = asyncio.create_task(self._refresh_discovery())

    async def _refresh_discovery(self) -> None:
        """A cheap refetch of the discovery status (the queue is not in the events); again when
        more discovery events came in while it was on its way, so the last word is the backend's."""
        while self._discovery_dirty:
            self._discovery_dirty = False
            try:
                status = await self.fetch_discovery()
            except FarmClientError:
                return  # the connection loop reports a lost backend
            if status is not None and not self.pending.discovery:
                self._discovery(status)
