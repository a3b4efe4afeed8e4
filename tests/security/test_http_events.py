"""Issue 15, reproduction 4: stalled /api/v1/events readers must not take the gateway's memory or loop.

The reproduction: 200 readers that never read and 79 MB of console output took the backend from
242 MB to 7.9 GB RSS and /health to 58 s (each reader queued 5,000 events and joined its whole backlog
into one write). Here 100 readers that never read (4 KiB receive windows, from 4 addresses) sit on the stream while
48 MiB of console events (256 KiB each, as the console hub batches them) are published in three bursts.

Bound stated: RSS grows by less than 250 MiB over the flood (each reader holds at most 8 MiB of
*shared* events and one ~64 KiB chunk in its connection); /api/v1/health answers within 1 s after
every burst; a reader that comes back gets a ``dropped`` marker, then the newest events.
"""

from __future__ import annotations

import asyncio
import json

import httpx

from tests.conftest import api_url, eventually
from tests.security.conftest_http import HEALTH_BUDGET, peak_rss_mb, raw_connection, reset_peak_rss, timed_health

READERS = 100
EVENT_BYTES = 256 * 1024
BURSTS = 3
EVENTS_PER_BURST = 64  # 16 MiB per burst
RSS_GROWTH_MB = 250


def _console_event(farm, n: int) -> None:
    text = f"{n:08d} " + "console output of a chatty DUT " * (EVENT_BYTES // 31)
    farm.bus.publish("console", {"mac": "52:54:00:11:22:01", "text": text[:EVENT_BYTES]})


async def test_stalled_event_readers_stay_bounded(farm):
    address = tuple(farm.api_address)
    request = (
        f"GET /api/v1/events?types=console HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {farm.token}\r\n\r\n"
    ).encode()
    before = farm.bus.subscriber_count
    # from 4 addresses: one address may hold only 64 connections to the API (test_http_connections.py)
    readers = [raw_connection(address, request, source=f"127.0.0.{2 + i % 4}", rcvbuf=4096) for i in range(READERS)]
    try:
        await eventually(lambda: farm.bus.subscriber_count >= before + READERS, "every reader subscribed")
        # one reader that reads, late: it must learn that it lost events
        async with httpx.AsyncClient(base_url=api_url(farm), timeout=30,
                                     headers={"Authorization": f"Bearer {farm.token}"}) as late:
            async with late.stream("GET", "/api/v1/events", params={"types": "console"}) as stream:
                lines = stream.aiter_lines()
                assert await anext(lines) == "retry: 2000"
                await eventually(lambda: farm.bus.subscriber_count >= before + READERS + 1, "the late reader")
                baseline = reset_peak_rss()
                n = 0
                for burst in range(BURSTS):
                    for _ in range(EVENTS_PER_BURST):
                        _console_event(farm, n)
                        n += 1
                    took = await timed_health(api_url(farm))
                    grown = peak_rss_mb() - baseline
                    assert took < HEALTH_BUDGET, f"burst {burst}: /api/v1/health took {took:.2f} s"
                    assert grown < RSS_GROWTH_MB, f"burst {burst}: RSS grew by {grown:.0f} MiB"
                    await asyncio.sleep(0.3)
                    took = await timed_health(api_url(farm))
                    assert took < HEALTH_BUDGET, f"after burst {burst}: /api/v1/health took {took:.2f} s"
                assert peak_rss_mb() - baseline < RSS_GROWTH_MB
                # The late reader now reads: a "dropped" marker (it fell more than 8 MiB behind), then
                # the newest events, the last one published among them.
                first = await _next_event(lines)
                assert first["type"] == "dropped" and first["data"]["count"] > 0, first
                last_seq = first
                while last_seq["type"] != "console" or not last_seq["data"]["text"].startswith(f"{n - 1:08d}"):
                    last_seq = await _next_event(lines)
    finally:
        for sock in readers:
            sock.close()
    assert await timed_health(api_url(farm)) < HEALTH_BUDGET


async def _next_event(lines) -> dict:
    data = None
    async for line in lines:
        if line.startswith("data: "):
            data = json.loads(line[6:])
        elif line == "" and data is not None:
            return data
    raise AssertionError("the event stream ended")
