"""Helpers of the HTTP-layer security tests (tests/security/test_http_*.py): raw loopback sockets that
misbehave as a hostile DUT's would, the process's memory, and the health answer timed."""

from __future__ import annotations

import resource
import socket
import time
from pathlib import Path
from typing import Optional

import httpx
import psutil

from tests.e2e.helpers import Backend

HEALTH_BUDGET = 1.0  # seconds /api/v1/health may take while a flood runs (the acceptance)


def rss_mb(pid: Optional[int] = None) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def reset_peak_rss(pid: Optional[int] = None) -> float:
    """Start measuring the peak RSS anew (Linux's clear_refs 5); the current RSS in MiB."""
    Path(f"/proc/{pid or 'self'}/clear_refs").write_text("5")
    return rss_mb(pid)


def peak_rss_mb(pid: Optional[int] = None) -> float:
    """The highest RSS (MiB) since the last :func:`reset_peak_rss`: what a transient buffer cost too."""
    for line in Path(f"/proc/{pid or 'self'}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")


async def timed_health(url: str, transport: Optional[httpx.AsyncBaseTransport] = None) -> float:
    """Seconds one GET /api/v1/health took (a fresh connection: what a new operator view would see).
    Fails if it does not answer 200 within 10 s."""
    start = time.monotonic()
    try:
        async with httpx.AsyncClient(base_url=url, transport=transport, timeout=10) as http:
            response = await http.get("/api/v1/health")
    except httpx.HTTPError as exc:
        raise AssertionError(f"/api/v1/health did not answer within 10 s: {exc!r}") from None
    assert response.status_code == 200, response.text
    return time.monotonic() - start


def raw_connection(address: tuple[str, int], request: bytes = b"", source: str = "127.0.0.1",
                   rcvbuf: Optional[int] = None) -> socket.socket:
    """A non-blocking TCP connection from ``source`` that sends ``request`` and then never reads
    (``rcvbuf``: a small receive window, so the server's writes stall soon)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind((source, 0))
    sock.connect(address)
    if request:
        sock.sendall(request)
    sock.setblocking(False)
    return sock


def closed_by_peer(sock: socket.socket) -> bool:
    """True when the server closed (or reset) the connection; reads and discards what is pending."""
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def raise_fd_limit(wanted: int) -> None:
    """Let this (test) process hold ``wanted`` descriptors, within its hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


def LoggedBackend(data_dir: Path, log: Path, *extra: str, env: Optional[dict[str, str]] = None,
                  prefix: tuple[str, ...] = ()) -> Backend:
    """``valve-console --backend-only`` with its output in ``log`` (every Backend's output goes to a file)."""
    return Backend(data_dir, *extra, env=env, log=log, prefix=prefix)
