"""Issue 15, reproduction 11: the web console's login is limited per source and for the whole console,
and its password checks (scrypt) run off the web front's event loop.

``valve-console serve`` runs as a real process on loopback. The attacker guesses from 127.0.0.1 (and,
for the console-wide limit, from 30 loopback addresses 127.0.0.10-39); a normal visitor uses
127.0.0.2. Before: 100 parallel wrong guesses were all checked (about 17 a second, the 1 s delay being
per request) and every scrypt ran on the loop, so the login page stalled for seconds for everyone.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator

import aiohttp
import pytest

from valve_console.serve import SESSION_COOKIE, store_password

from tests.e2e.helpers import ROOT, VALVE
from tests.security.conftest_offloop import HEALTH_WITHIN, rss_mib

PASSWORD = "correct horse battery"
SERVE_RSS_MIB = 200  # the web front during the flood (scrypt: 16 MiB per check, two at once)
ATTACKER, VISITOR = "127.0.0.1", "127.0.0.2"


@dataclass
class Serve:
    url: str
    pid: int


@pytest.fixture
async def web(tmp_path: Path) -> AsyncIterator[Serve]:
    """``valve-console serve`` alone (no backend is needed to log in)."""
    data = tmp_path / "data"
    store_password(data, PASSWORD)
    (data / "token").write_text("t" * 43 + "\n")
    proc = subprocess.Popen(
        [*VALVE, "serve", "--data-dir", str(data), "--api", "http://127.0.0.1:9", "--listen", "127.0.0.1:0"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "TEXTUAL_ANIMATIONS": "none"},
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 60)
        match = re.search(r"(http://127\.0\.0\.1:\d+)/", line)
        assert match, f"serve did not start: {line!r}"
        yield Serve(match.group(1), proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def client_from(source: str, connections: int = 100) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(local_addr=(source, 0), limit=connections, force_close=True)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60))


async def guess(session: aiohttp.ClientSession, url: str, secret: str) -> tuple[int, str, dict]:
    async with session.post(url + "/login", data={"password": secret}, headers={"Origin": url},
                            allow_redirects=False) as response:
        return response.status, await response.text(), dict(response.headers)


async def test_parallel_wrong_passwords_are_limited_and_a_visitor_is_served(web: Serve) -> None:
    url = web.url
    async with client_from(ATTACKER) as attacker, client_from(VISITOR, 4) as visitor:
        flood = asyncio.gather(*(guess(attacker, url, f"wrong guess {i}") for i in range(100)))
        await asyncio.sleep(0.2)  # the guesses are in flight
        waits, rss = [], []
        for _ in range(5):  # the login page, for someone else, meanwhile
            started = time.monotonic()
            async with visitor.get(url + "/login") as response:
                assert response.status == 200 and 'name="password"' in await response.text()
            waits.append(time.monotonic() - started)
            rss.append(rss_mib(web.pid))
        status, page, headers = await guess(visitor, url, PASSWORD)
        answers = await flood
    assert status == 303, page  # the visitor logs in, from another address, during the flood
    assert max(waits) < HEALTH_WITHIN, f"the login page took {max(waits):.2f} s during the flood"
    limited = [a for a in answers if a[0] == 429]
    checked = [a for a in answers if a[0] == 401]
    assert len(checked) <= 5 and len(limited) == 100 - len(checked), sorted({a[0] for a in answers})
    status, page, headers = limited[0]
    assert re.search(r"Too many login attempts from 127\.0\.0\.1: try again in \d+ s\.", page), page
    assert int(headers["Retry-After"]) >= 1
    assert SESSION_COOKIE not in headers.get("Set-Cookie", "")
    assert max(rss) < SERVE_RSS_MIB, f"serve RSS {max(rss):.0f} MiB"
    print(f"login page worst {max(waits):.3f} s; {len(checked)} guesses checked, {len(limited)} limited; "
          f"serve RSS {max(rss):.0f} MiB")


async def test_guesses_from_many_addresses_meet_the_console_wide_limit(web: Serve) -> None:
    """30 addresses guess at once, one guess each (within every address's own limit)."""
    url = web.url

    async def one(i: int) -> tuple[int, str, dict]:
        async with client_from(f"127.0.0.{10 + i}", 1) as attacker:
            return await guess(attacker, url, f"wrong guess {i}")

    answers = await asyncio.gather(*(one(i) for i in range(30)))
    statuses = [a[0] for a in answers]
    assert statuses.count(401) <= 21 and statuses.count(429) >= 9, statuses  # 20 at once, then one every 2 s
    assert all("Too many login attempts on this console: try again in" in a[1] for a in answers if a[0] == 429)
