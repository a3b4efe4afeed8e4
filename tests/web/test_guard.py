"""The guard in front of textual-serve, over plain HTTP and websockets (no browser): login, session
cookie, Origin and Host checks, and the command-line errors of ``valve-console serve``."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import pytest

from valve_console.serve import PASSWORD_FILE, SESSION_COOKIE, store_password, verify_password

from .conftest import PASSWORD, Web, set_password


async def login(session: aiohttp.ClientSession, web: Web, secret: str, origin: str | None = None):
    headers = {"Origin": origin or web.origin}
    return await session.post(web.url + "/login", data={"password": secret}, headers=headers, allow_redirects=False)


async def session_cookie(web: Web, secret: str = PASSWORD) -> str:
    async with aiohttp.ClientSession() as session:
        async with await login(session, web, secret) as response:
            assert response.status == 303, await response.text()
            return response.cookies[SESSION_COOKIE].value


async def read_terminal(ws: aiohttp.ClientWebSocketResponse, *wanted: bytes) -> bytes:
    """Binary frames (terminal output) until every wanted text has appeared."""
    seen = b""
    while not all(w in seen for w in wanted):
        message = await asyncio.wait_for(ws.receive(), 30)
        assert message.type in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT), message
        if message.type == aiohttp.WSMsgType.BINARY:
            seen += message.data
    return seen


async def test_nothing_is_served_without_a_session(web: Web) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(web.url + "/", allow_redirects=False) as response:
            assert response.status == 303 and response.headers["Location"] == "/login"
        for path in ("/static/js/textual.js", "/download/anything", "/ws"):
            async with session.get(web.url + path, allow_redirects=False) as response:
                assert response.status == 401, path
                assert "log in first" in await response.text()
        async with session.get(web.url + "/login") as response:
            assert response.status == 200 and 'name="password"' in await response.text()


async def test_websocket_without_a_session_is_refused(web: Web) -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(web.url + "/ws", origin=web.origin)
        assert refused.value.status == 401
        forged = {"Cookie": f"{SESSION_COOKIE}=not-a-session"}
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(web.url + "/ws", origin=web.origin, headers=forged)
        assert refused.value.status == 401


async def test_a_wrong_password_is_refused(web: Web) -> None:
    async with aiohttp.ClientSession() as session:
        for wrong in ("wrong password", web.token[:-1]):  # each failure waits 1 s (slows guessing)
            async with await login(session, web, wrong) as response:
                assert response.status == 401
                assert "Wrong password or token." in await response.text()
                assert SESSION_COOKIE not in response.cookies


@pytest.mark.parametrize("use_token", [False, True], ids=["password", "operator-token"])
async def test_login_gives_a_strict_httponly_session(web: Web, use_token: bool) -> None:
    async with aiohttp.ClientSession() as session:
        async with await login(session, web, web.token if use_token else PASSWORD) as response:
            assert response.status == 303 and response.headers["Location"] == "/"
            cookie = response.cookies[SESSION_COOKIE]
            assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/"
        headers = {"Cookie": f"{SESSION_COOKIE}={cookie.value}"}
        async with session.get(web.url + "/", headers=headers, allow_redirects=False) as response:
            assert response.status == 200
            page = await response.text()
            assert f'data-session-websocket-url="ws://127.0.0.1:{web.url.rsplit(":", 1)[1]}/ws"' in page
            assert "fonts.googleapis.com" not in page  # offline gateways: no external fonts
            assert response.headers["X-Frame-Options"] == "DENY"


async def test_websocket_with_a_foreign_origin_gets_403(web: Web) -> None:
    cookie = {"Cookie": f"{SESSION_COOKIE}={await session_cookie(web)}"}
    port = web.url.rsplit(":", 1)[1]
    async with aiohttp.ClientSession() as session:
        # another site, another port on the same host (same-site: a SameSite cookie would be sent), no Origin
        for origin in ("http://evil.example", f"http://127.0.0.1:{int(port) + 1}", f"https://127.0.0.1:{port}", None):
            headers = dict(cookie) if origin is None else {**cookie, "Origin": origin}
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(web.url + "/ws", headers=headers, autoclose=True)
            assert refused.value.status == 403, origin
        # the same cookie with the console's own Origin: the console runs, attached to the farm
        ws = await session.ws_connect(web.url + "/ws?width=120&height=40", headers=cookie, origin=web.origin)
        try:
            await read_terminal(ws, b"Overview", b"registration")  # a backend service: attached
        finally:
            await ws.close()
    assert "websocket refused: the Origin 'http://evil.example' is not this console" in web.log.read_text()


async def test_a_foreign_host_name_is_refused(web: Web) -> None:
    """DNS rebinding: a page on evil.example resolving to this gateway cannot even reach the login form."""
    async with aiohttp.ClientSession() as session:
        for path in ("/login", "/"):
            async with session.get(web.url + path, headers={"Host": "evil.example"}) as response:
                assert response.status == 403
                assert "'evil.example' is not a name of this console" in await response.text()
        async with session.get(web.url + "/login", headers={"Host": "localhost"}) as response:
            assert response.status == 200


async def test_login_form_posted_from_a_foreign_origin_is_refused(web: Web) -> None:
    async with aiohttp.ClientSession() as session:
        async with await login(session, web, PASSWORD, origin="http://evil.example") as response:
            assert response.status == 403 and SESSION_COOKIE not in response.cookies


async def test_logout_ends_the_session(web: Web) -> None:
    cookie = {"Cookie": f"{SESSION_COOKIE}={await session_cookie(web)}"}
    async with aiohttp.ClientSession() as session:
        async with session.post(web.url + "/logout", headers={**cookie, "Origin": "http://evil.example"}) as response:
            assert response.status == 403  # a foreign page cannot log us out either
        async with session.get(web.url + "/", headers=cookie, allow_redirects=False) as response:
            assert response.status == 200
        async with session.post(
            web.url + "/logout", headers={**cookie, "Origin": web.origin}, allow_redirects=False
        ) as response:
            assert response.status == 303
        async with session.get(web.url + "/", headers=cookie, allow_redirects=False) as response:
            assert response.status == 303


def _serve(capsys, *args: str) -> tuple[int, str]:
    """``valve-console serve ARGS`` in this process (its error paths return before serving)."""
    from valve_console.cli import main

    code = main(["serve", *args])
    return code, capsys.readouterr().err


def test_set_password_stores_a_hash_and_refuses_a_short_one(tmp_path) -> None:
    assert set_password(tmp_path, PASSWORD).returncode == 0  # the real command, its stdin
    stored = (tmp_path / PASSWORD_FILE).read_text()
    assert PASSWORD not in stored and stored.startswith("scrypt$")
    assert verify_password(PASSWORD, stored) and not verify_password("other password", stored)
    assert (tmp_path / PASSWORD_FILE).stat().st_mode & 0o777 == 0o600
    short = set_password(tmp_path, "short")
    assert short.returncode == 2 and "at least 8 characters; nothing changed" in short.stderr
    assert (tmp_path / PASSWORD_FILE).read_text() == stored


def test_serve_refuses_to_start_when_nobody_could_log_in(tmp_path, capsys) -> None:
    code, err = _serve(capsys, "--data-dir", str(tmp_path), "--listen", "127.0.0.1:0")
    assert code == 2 and "nobody could log in" in err and "--set-password" in err


def test_serve_reports_a_busy_port_and_a_bad_address(tmp_path, capsys) -> None:
    store_password(tmp_path, PASSWORD)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, err = _serve(capsys, "--data-dir", str(tmp_path), "--listen", f"127.0.0.1:{port}")
    assert code == 2 and f"cannot listen on 127.0.0.1:{port}: address already in use" in err
    code, err = _serve(capsys, "--data-dir", str(tmp_path), "--listen", "nowhere")
    assert code == 2 and "is not HOST:PORT" in err
    # DESIGN.md's --host/--port form: the same checks
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, err = _serve(capsys, "--data-dir", str(tmp_path), "--host", "127.0.0.1", "--port", str(port))
    assert code == 2 and f"cannot listen on 127.0.0.1:{port}: address already in use" in err
    code, err = _serve(capsys, "--data-dir", str(tmp_path), "--port", "99999")
    assert code == 2 and "the port must be between 0 and 65535" in err


def test_serve_binds_to_loopback_by_default() -> None:
    from valve_console.cli import build_parser

    assert build_parser().parse_args(["serve"]).serve_listen == "127.0.0.1:8080"


def test_serve_notifies_systemd_ready_then_stopping(tmp_path) -> None:
    """valve-console-web.service is Type=notify: serve says READY=1 once it listens, STOPPING=1 on SIGTERM."""
    import os
    import re
    import signal
    import subprocess

    from .conftest import ROOT, VALVE

    store_password(tmp_path, PASSWORD)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(tmp_path / "notify"))
        notify.settimeout(30)
        proc = subprocess.Popen(
            [*VALVE, "serve", "--data-dir", str(tmp_path), "--listen", "127.0.0.1:0"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            env={**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify")},
        )
        try:
            assert notify.recv(4096) == b"READY=1"
            port = re.search(r"http://127\.0\.0\.1:(\d+)/", proc.stdout.readline()).group(1)
            with socket.create_connection(("127.0.0.1", int(port)), timeout=10):
                pass  # READY=1 came after the socket was listening
            proc.send_signal(signal.SIGTERM)
            assert notify.recv(4096) == b"STOPPING=1"
            assert proc.wait(30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_login_limiter_per_source_and_console_wide() -> None:
    """Token buckets on a fake clock: 5 attempts per address at once then one every 10 s; 20 for the
    console then one every 2 s; a success gives its attempt back; IPv6 addresses count by /64."""
    from valve_console.serve import LoginLimiter, source_of

    now = [0.0]
    limiter = LoginLimiter(clock=lambda: now[0])
    assert [limiter.attempt("10.0.0.1") for _ in range(5)] == [None] * 5
    why, wait = limiter.attempt("10.0.0.1")
    assert why == "Too many login attempts from 10.0.0.1: try again in 10 s." and wait == 10
    assert limiter.attempt("10.0.0.2") is None  # another address is not limited by this one
    now[0] += 10
    assert limiter.attempt("10.0.0.1") is None
    limiter.succeeded("10.0.0.1")
    assert limiter.attempt("10.0.0.1") is None  # the success gave its attempt back
    for i in range(20):
        limiter.attempt(f"10.0.1.{i}")
    why, _ = limiter.attempt("10.0.2.1")
    assert why.startswith("Too many login attempts on this console: try again in")
    assert source_of("2001:db8::1") == source_of("2001:db8::ffff") == "2001:db8::/64"
    assert source_of("::ffff:10.0.0.1") == "10.0.0.1"
