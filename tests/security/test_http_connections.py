"""Issue 15, reproduction 10 (the API half): no header timeout, no connection cap.

1,100 idle half-open connections to the API and ``accept()`` failed for everyone: the backend ran out
of its 1,024 file descriptors. Here the real backend runs as a process with that limit (prlimit) and
this test process opens 1,100 connections that never complete a request head.

Bounds stated: connections from one address past 64 are answered 503 (in words) and closed at once;
all connections past a quarter of the descriptor limit (256 here) likewise; the backend never holds
more than 64 + 256 + 40 descriptors; a request head must be complete within 10 s (a slow drip of
header bytes does not extend it), idle keep-alive connections close after 5 s; /api/v1/health answers
within 1 s during the floods over the unix socket (never starved) and, during the one-address flood,
over TCP too; a normal client is served once the idle connections are gone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time

import httpx

from tests.conftest import api_url, eventually
from tests.security.conftest_http import (
    HEALTH_BUDGET,
    LoggedBackend,
    closed_by_peer,
    raise_fd_limit,
    raw_connection,
    timed_health,
)

FLOOD = 1100
FD_LIMIT = 1024
PER_SOURCE = 64
TOTAL_CAP = FD_LIMIT // 4
HEAD_TIMEOUT = 10.0


def _backend(tmp_path) -> LoggedBackend:
    """The backend under ``prlimit --nofile=1024`` (the usual default)."""
    return LoggedBackend(tmp_path / "data", tmp_path / "backend.log",
                         prefix=("prlimit", f"--nofile={FD_LIMIT}:{FD_LIMIT}", "--")).start()


def _flood(address: tuple[str, int], sources: list[str], per_source: int) -> list[socket.socket]:
    """Connections that never finish a request head: half send nothing, half a partial head."""
    socks = []
    for i in range(per_source * len(sources)):
        partial = b"GET /api/v1/health HTTP/1.1\r\nHost: gw\r\n" if i % 2 else b""
        socks.append(raw_connection(address, partial, source=sources[i % len(sources)]))
    return socks


def _answered_503(sock: socket.socket) -> bool:
    try:
        data = sock.recv(4096)
    except (BlockingIOError, OSError):
        return False
    return data.startswith(b"HTTP/1.1 503") and b"too many connections" in data


async def test_idle_connection_floods_leave_the_api_serving(tmp_path):
    raise_fd_limit(4 * FLOOD)
    backend = _backend(tmp_path)
    address = ("127.0.0.1", backend.port)
    unix = httpx.AsyncHTTPTransport(uds=str(tmp_path / "data" / "api.sock"))
    try:
        import psutil

        proc = psutil.Process(backend.proc.pid)
        fds_before = proc.num_fds()
        assert await timed_health(backend.url) < HEALTH_BUDGET

        # 1. one hostile address: 1,100 connections, 64 kept (until their head deadline), the rest refused
        flood = _flood(address, ["127.0.0.2"], FLOOD)
        drip = raw_connection(address, b"G", source="127.0.0.3")  # a slow loris: one byte now and then
        started = time.monotonic()
        try:
            assert await timed_health(backend.url) < HEALTH_BUDGET
            assert await timed_health("http://api", transport=unix) < HEALTH_BUDGET
            assert proc.num_fds() <= fds_before + PER_SOURCE + 40, proc.num_fds()
            refused = await eventually(lambda: sum(_answered_503(s) for s in flood[-200:]), "503 answers")
            assert refused >= 100, refused
            while time.monotonic() - started < HEAD_TIMEOUT - 2:
                drip.send(b"E")
                await asyncio.sleep(0.5)
                assert await timed_health(backend.url) < HEALTH_BUDGET
            await eventually(lambda: all(closed_by_peer(s) for s in flood), "every idle connection closed",
                             timeout=HEAD_TIMEOUT + 5)
            await eventually(lambda: closed_by_peer(drip), "the dripping connection closed at its head deadline",
                             timeout=3)
            assert time.monotonic() - started >= HEAD_TIMEOUT - 2
        finally:
            for s in [*flood, drip]:
                s.close()
        async with httpx.AsyncClient(base_url=backend.url, timeout=5) as normal:
            assert (await normal.get("/api/v1/machines")).status_code == 200

        # 2. many addresses (22 x 50): the total cap holds, the unix socket still answers at once
        sources = [f"127.0.0.{10 + i}" for i in range(22)]
        flood = _flood(address, sources, FLOOD // len(sources))
        try:
            assert await timed_health("http://api", transport=unix) < HEALTH_BUDGET
            assert proc.num_fds() <= fds_before + TOTAL_CAP + 40, proc.num_fds()
            start = time.monotonic()
            async with httpx.AsyncClient(base_url=backend.url, timeout=5) as tcp:
                answer = await tcp.get("/api/v1/health")
            assert time.monotonic() - start < HEALTH_BUDGET
            assert answer.status_code in (200, 503), answer.text  # 503 while the cap is full, in words
            if answer.status_code == 503:
                assert "too many connections" in answer.json()["error"]
            await eventually(lambda: all(closed_by_peer(s) for s in flood), "every idle connection closed",
                             timeout=HEAD_TIMEOUT + 5)
        finally:
            for s in flood:
                s.close()
        assert await timed_health(backend.url) < HEALTH_BUDGET

        # 3. an idle keep-alive connection is closed after 5 s
        keep = raw_connection(address, b"GET /api/v1/health HTTP/1.1\r\nHost: gw\r\n\r\n")
        await eventually(lambda: _has_answer(keep), "the answer on the keep-alive connection")
        await eventually(lambda: closed_by_peer(keep), "the idle keep-alive connection closed", timeout=8)
        keep.close()
    finally:
        await unix.aclose()
        code = backend.stop()
    assert code == 0, backend.log.read_text()[-3000:]
    assert "out of system resource" not in backend.log.read_text()  # accept() never ran out of descriptors


def _has_answer(sock: socket.socket) -> bool:
    try:
        return sock.recv(65536).startswith(b"HTTP/1.1 200")
    except BlockingIOError:
        return False


async def test_a_reader_that_stops_reading_is_cut_off(farm):
    """An event stream whose reader never reads is aborted after the write-stall limit (60 s; 2 s here)."""
    server = farm._servers[0][0]
    protocol = server.config.http_protocol_class
    if hasattr(protocol, "limits"):  # (uvicorn's own protocol has no limits at all)
        protocol.limits = dataclasses.replace(protocol.limits, write_stall_timeout=2.0)
    before = farm.bus.subscriber_count
    request = (
        f"GET /api/v1/events HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {farm.token}\r\n\r\n"
    ).encode()
    stalled = raw_connection(tuple(farm.api_address), request, rcvbuf=4096)
    try:
        await eventually(lambda: farm.bus.subscriber_count > before, "the reader subscribed")
        for n in range(64):  # 16 MiB: more than the kernel buffers take
            farm.bus.publish("log", {"message": f"{n} " + "x" * 256 * 1024})
            await asyncio.sleep(0)
        await eventually(lambda: farm.bus.subscriber_count == before, "the stalled reader dropped", timeout=10)
    finally:
        stalled.close()
    assert await timed_health(api_url(farm)) < HEALTH_BUDGET
