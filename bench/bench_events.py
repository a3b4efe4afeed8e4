"""Event latency: outlet change → SSE client, 10 subscribers.

Ours: the real backend process switches a vPDU outlet; 10 SSE clients of /api/v1/events receive
the ``outlet`` event. Latency = receive time − the event's publish time (same host clock).
Peer, same run: a minimal asyncio server that writes the same SSE frame to 10 TCP clients the
moment it is triggered (the floor any pub/sub over loopback can reach in Python).
Reported: p50/p95/max and the ratio ours/peer at p95.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import Farm, percentile  # noqa: E402

SUBSCRIBERS = 10
CHANGES = 60


async def ours(farm: Farm) -> list[float]:
    latencies: list[float] = []
    ready = 0

    async def subscriber(done: asyncio.Event) -> None:
        nonlocal ready
        async with httpx.AsyncClient(base_url=farm.url, timeout=None) as c:
            async with c.stream("GET", "/api/v1/events", params={"types": "outlet"}) as r:
                ready += 1
                async for line in r.aiter_lines():
                    if line.startswith("data:"):
                        now = time.time()
                        event = json.loads(line[5:])
                        if event["data"].get("pdu") == "vpdu1":
                            latencies.append(now - event["ts"])
                    if done.is_set():
                        return

    done = asyncio.Event()
    tasks = [asyncio.create_task(subscriber(done)) for _ in range(SUBSCRIBERS)]
    while ready < SUBSCRIBERS:
        await asyncio.sleep(0.05)
    async with httpx.AsyncClient(base_url=farm.url, headers={"Authorization": f"Bearer {farm.token}"}) as c:
        for i in range(CHANGES):
            port = i % 16
            state = "on" if (i // 16) % 2 == 0 else "off"
            r = await c.post(f"/api/v1/pdu/vpdu1/port/{port}/state", json={"state": state})
            r.raise_for_status()
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.5)
        for port in range(16):
            await c.post(f"/api/v1/pdu/vpdu1/port/{port}/state", json={"state": "off"})
    done.set()
    await asyncio.sleep(0.2)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return latencies


async def peer() -> list[float]:
    writers: list[asyncio.StreamWriter] = []

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n")
        writers.append(writer)

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    latencies: list[float] = []

    async def subscriber() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /events HTTP/1.1\r\n")
        while True:
            line = await reader.readline()
            if not line:
                return
            if line.startswith(b"data:"):
                now = time.time()
                latencies.append(now - json.loads(line[5:])["ts"])

    tasks = [asyncio.create_task(subscriber()) for _ in range(SUBSCRIBERS)]
    while len(writers) < SUBSCRIBERS:
        await asyncio.sleep(0.01)
    for i in range(CHANGES):
        frame = json.dumps({"type": "outlet", "ts": time.time(), "data": {"pdu": "p", "port_id": str(i)}})
        for w in writers:
            w.write(f"event: outlet\ndata: {frame}\n\n".encode())
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)
    for t in tasks:
        t.cancel()
    server.close()
    return latencies


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        farm = Farm(Path(tmp))
        try:
            time.sleep(1.0)
            our = asyncio.run(ours(farm))
        finally:
            farm.close()
    base = asyncio.run(peer())
    ms = lambda v: f"{v * 1000:.2f} ms"  # noqa: E731
    print(f"events received: ours {len(our)}, peer {len(base)} ({SUBSCRIBERS} subscribers)")
    for name, values in (("valve-console", our), ("asyncio fan-out peer", base)):
        print(f"{name:22s} p50 {ms(percentile(values, 50))}  p95 {ms(percentile(values, 95))}  max {ms(max(values))}")
    ratio = percentile(our, 95) / max(percentile(base, 95), 1e-6)
    print(f"ratio ours/peer at p95: {ratio:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
