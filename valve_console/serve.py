"""``valve-console serve``: the operator console in a browser.

textual-serve (aiohttp + xterm.js) starts one ``valve-console --attach API`` process per browser tab.
textual-serve itself has no login and no Origin check, so this module puts a guard in front of its
aiohttp application:

- a login page: the operator token (``<data>/token``) or a password whose scrypt hash is kept in
  ``<data>/web-password`` (``valve-console serve --set-password``);
- a session cookie (random, kept in memory, HttpOnly, SameSite=Strict); every request, static files
  and the websocket included, needs it;
- the websocket upgrade (and the login form) must come with an ``Origin`` equal to the served origin;
  a foreign Origin gets 403;
- the ``Host`` header must name this gateway (an IP address, ``localhost``, the host name, the public
  URL's host or an ``--allow-host``), which stops DNS-rebinding pages from reaching the login form;
- at most ``max_sessions`` consoles at once (each is a process of ≈ 40 MB);
- login attempts limited per source address (a /64 for IPv6) and for the whole console (token buckets,
  :class:`LoginLimiter`), checked before the password: a limited attempt gets the login page with
  "Too many login attempts ...; try again in N s" (429, ``Retry-After``); scrypt runs in worker
  threads, at most two at once, never on the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import getpass
import hashlib
import hmac
import html
import ipaddress
import logging
import math
import os
import re
import secrets
import shlex
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import aiohttp_jinja2
from aiohttp import web
from textual_serve.server import Server

from .backend.boot import write_atomically

log = logging.getLogger("valve_console.serve")

PASSWORD_FILE = "web-password"
SESSION_COOKIE = "valve_console_session"
MIN_PASSWORD_LENGTH = 8
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1


class ServeError(Exception):
    """A start-up problem, said in words."""


# --- the password hash ------------------------------------------------------------------------------


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, digest = stored.strip().split("$")
        if kind != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(
            password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=len(expected)
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def read_new_password(stdin=None) -> str:
    """The new password: asked twice on a terminal, else the first line of stdin."""
    stdin = stdin or sys.stdin
    if stdin.isatty():
        first = getpass.getpass("new web console password: ")
        if getpass.getpass("again: ") != first:
            raise ServeError("the two passwords differ; nothing changed")
        password = first
    else:
        password = stdin.readline().rstrip("\r\n")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ServeError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters; nothing changed")
    return password


def store_password(data_dir: Path, password: str) -> Path:
    """Write the hash to ``<data>/web-password`` (mode 0600) atomically."""
    path = data_dir / PASSWORD_FILE
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)  # the backend's data dir: private
        write_atomically(path, hash_password(password) + "\n", mode=0o600)
    except OSError as exc:
        raise ServeError(f"cannot store the password in {path}: {exc.strerror or exc}") from None
    return path


# --- login attempts ----------------------------------------------------------------------------------


class TokenBucket:
    """``burst`` attempts at once, then one more every ``every`` seconds."""

    __slots__ = ("burst", "every", "tokens", "at")

    def __init__(self, burst: int, every: float, now: float) -> None:
        self.burst, self.every = burst, every
        self.tokens, self.at = float(burst), now

    def _refill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + (now - self.at) / self.every)
        self.at = now

    def take(self, now: float) -> float:
        """Take one attempt: 0 if allowed, else the seconds until the next one is."""
        self._refill(now)
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) * self.every

    def give_back(self, now: float) -> None:
        self._refill(now)
        self.tokens = min(self.burst, self.tokens + 1)

    def full(self, now: float) -> bool:
        self._refill(now)
        return self.tokens >= self.burst


def source_of(remote: str | None) -> str:
    """The address a limit applies to: the IPv4 address, or the /64 of an IPv6 one."""
    try:
        address = ipaddress.ip_address((remote or "").split("%", 1)[0])
    except ValueError:
        return remote or "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


class LoginLimiter:
    """Login attempts per source address and for the whole console (token buckets). An attempt is
    taken before the password is checked (so a limited guess costs no scrypt) and given back when it
    succeeds. Sources are forgotten once their bucket is full again; at most ``max_sources`` kept (a new
    one beyond that is limited by the console-wide bucket only)."""

    def __init__(
        self,
        per_source: tuple[int, float] = (5, 10.0),
        overall: tuple[int, float] = (20, 2.0),
        max_sources: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_source = per_source
        self.clock = clock
        self.max_sources = max_sources
        self.overall = TokenBucket(*overall, clock())
        self.sources: dict[str, TokenBucket] = {}

    def _bucket(self, source: str, now: float) -> TokenBucket | None:
        bucket = self.sources.get(source)
        if bucket is None:
            if len(self.sources) >= self.max_sources:
                self.sources = {key: b for key, b in self.sources.items() if not b.full(now)}
            if len(self.sources) >= self.max_sources:
                return None
            bucket = self.sources[source] = TokenBucket(*self.per_source, now)
        return bucket

    def attempt(self, remote: str | None) -> tuple[str, int] | None:
        """None if this attempt may check a password; else why not (words) and the seconds to wait."""
        now = self.clock()
        source = source_of(remote)
        bucket = self._bucket(source, now)
        if bucket is not None:
            wait = math.ceil(bucket.take(now))
            if wait:
                return f"Too many login attempts from {source}: try again in {wait} s.", wait
        wait = math.ceil(self.overall.take(now))
        if wait:
            if bucket is not None:
                bucket.give_back(now)
            return f"Too many login attempts on this console: try again in {wait} s.", wait
        return None

    def succeeded(self, remote: str | None) -> None:
        now = self.clock()
        self.overall.give_back(now)
        bucket = self.sources.get(source_of(remote))
        if bucket is not None:
            bucket.give_back(now)


# --- sessions ----------------------------------------------------------------------------------------


class Sessions:
    """Random session ids kept in memory (a restart logs everybody out)."""

    def __init__(self, lifetime: float = 12 * 3600) -> None:
        self.lifetime = lifetime
        self._expiry: dict[str, float] = {}

    def new(self) -> str:
        now = time.monotonic()
        self._expiry = {sid: end for sid, end in self._expiry.items() if end > now}
        sid = secrets.token_urlsafe(32)
        self._expiry[sid] = now + self.lifetime
        return sid

    def valid(self, sid: str | None) -> bool:
        if not sid:
            return False
        end = self._expiry.get(sid)
        return end is not None and end > time.monotonic()

    def drop(self, sid: str | None) -> None:
        if sid:
            self._expiry.pop(sid, None)


LOGIN_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title} — log in</title>
<style>
body {{ background: #0c181f; color: #e8e8e8; font-family: monospace; display: flex; justify-content: center;
       align-items: center; height: 100vh; margin: 0; }}
form {{ background: #12232d; padding: 2em 3em; }}
input {{ font-family: monospace; font-size: 1em; padding: .4em; width: 22em; }}
button {{ font-family: monospace; font-size: 1em; padding: .4em 1.5em; margin-top: 1em; }}
.error {{ color: #ff7b72; }}
</style></head>
<body><form method="post" action="/login">
<h2>{title}</h2>
<p>Log in with the web console password or the operator token.</p>
<p class="error" id="error">{error}</p>
<input type="password" name="password" id="password" autofocus autocomplete="current-password">
<br><button type="submit" id="login">Log in</button>
</form></body></html>
"""


def _host_name(host: str) -> str:
    """``host[:port]`` or ``[v6]:port`` → the name alone, lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    if host.count(":") == 1:
        return host.partition(":")[0]
    return host


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class GuardedServer(Server):
    """textual-serve's Server with a login, sessions and Origin/Host checks in front of every route."""

    def __init__(
        self,
        command: str,
        *,
        data_dir: Path,
        host: str = "127.0.0.1",
        port: int = 8080,
        token: str | None = None,
        public_url: str | None = None,
        allowed_hosts: list[str] | None = None,
        max_sessions: int = 8,
        title: str = "valve-console",
        failed_login_delay: float = 1.0,
        login_limiter: LoginLimiter | None = None,
        password_checks: int = 2,
    ) -> None:
        super().__init__(command, host=host, port=port, title=title, public_url=public_url or "http://localhost")
        self.explicit_public_url = public_url
        self.data_dir = data_dir
        self.token = token
        self.max_sessions = max_sessions
        self.failed_login_delay = failed_login_delay
        self.login_limiter = login_limiter or LoginLimiter()
        self._password_checks = asyncio.Semaphore(password_checks)  # scrypt: 16 MiB and ~0.1 s of CPU each
        self.sessions = Sessions()
        self.active_consoles = 0
        names = {"localhost", socket.gethostname().lower(), socket.getfqdn().lower()}
        if public_url:
            names.add((urlsplit(public_url).hostname or "").lower())
        names.update(_host_name(h) for h in allowed_hosts or [])
        self.allowed_hosts = {n for n in names if n}

    # --- what a login may be checked against ---

    def _operator_token(self) -> str | None:
        if self.token:
            return self.token
        try:
            return (self.data_dir / "token").read_text().strip() or None
        except OSError:
            return None

    def _password_hash(self) -> str | None:
        try:
            return (self.data_dir / PASSWORD_FILE).read_text().strip() or None
        except OSError:
            return None

    def check_credentials(self) -> None:
        """Refuse to start when nobody could log in."""
        if self._operator_token() is None and self._password_hash() is None:
            raise ServeError(
                f"nobody could log in: no password in {self.data_dir / PASSWORD_FILE} "
                f"(set one with 'valve-console serve --set-password') and no operator token in "
                f"{self.data_dir / 'token'} (start the backend once, or pass --token)"
            )

    def _login_ok(self, secret: str) -> bool:
        """In a worker thread: the files are read and scrypt runs there (hashlib releases the GIL)."""
        if not secret:
            return False
        ok = False
        token = self._operator_token()
        if token is not None and hmac.compare_digest(secret.encode(), token.encode()):
            ok = True
        stored = self._password_hash()
        if stored is not None and verify_password(secret, stored):
            ok = True
        return ok

    async def login_ok(self, secret: str) -> bool:
        async with self._password_checks:
            return await asyncio.to_thread(self._login_ok, secret)

    # --- origin and host ---

    def _scheme(self) -> str:
        if self.explicit_public_url:
            return urlsplit(self.explicit_public_url).scheme or "http"
        return "http"

    def served_origin(self, request: web.Request) -> str:
        return f"{self._scheme()}://{request.host}".lower()

    def host_allowed(self, request: web.Request) -> bool:
        name = _host_name(request.host or "")
        return bool(name) and (_is_ip(name) or name in self.allowed_hosts)

    def origin_problem(self, request: web.Request, required: bool) -> str | None:
        origin = request.headers.get("Origin")
        if origin is None:
            return "the request has no Origin header" if required else None
        allowed = {self.served_origin(request)}
        if self.explicit_public_url:
            parts = urlsplit(self.explicit_public_url)
            allowed.add(f"{parts.scheme}://{parts.netloc}".lower())
        if origin.strip().lower().rstrip("/") not in allowed:
            return f"the Origin {origin!r} is not this console ({' or '.join(sorted(allowed))})"
        return None

    # --- the aiohttp app ---

    async def _make_app(self) -> web.Application:
        app = await super()._make_app()
        app.middlewares.append(self._guard)
        app.router.add_get("/login", self.handle_login_page)
        app.router.add_post("/login", self.handle_login)
        app.router.add_post("/logout", self.handle_logout)
        return app

    @web.middleware
    async def _guard(self, request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        if not self.host_allowed(request):
            return web.Response(
                status=403, text=f"refused: {request.host!r} is not a name of this console (see --allow-host)\n"
            )
        if request.path != "/login":
            if not self.sessions.valid(request.cookies.get(SESSION_COOKIE)):
                if request.path == "/" and request.method == "GET" and "Upgrade" not in request.headers:
                    raise web.HTTPSeeOther("/login")
                return web.Response(status=401, text="refused: log in first at /login\n")
            if request.path == "/ws":
                problem = self.origin_problem(request, required=True)
                if problem:
                    log.warning("websocket refused: %s", problem)
                    return web.Response(status=403, text=f"refused: {problem}\n")
                if self.active_consoles >= self.max_sessions:
                    return web.Response(
                        status=503, text=f"refused: {self.max_sessions} consoles are open already; close one\n"
                    )
        response = await handler(request)
        if not response.prepared:
            response.headers["X-Frame-Options"] = "DENY"
            response.headers["Referrer-Policy"] = "same-origin"  # no-referrer would make the Origin "null"
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    def _login_page(self, error: str = "", status: int = 200) -> web.Response:
        body = LOGIN_PAGE.format(title=html.escape(self.title), error=html.escape(error))
        return web.Response(status=status, text=body, content_type="text/html")

    async def handle_login_page(self, request: web.Request) -> web.Response:
        return self._login_page()

    async def handle_login(self, request: web.Request) -> web.StreamResponse:
        problem = self.origin_problem(request, required=False)
        if problem:
            return web.Response(status=403, text=f"refused: {problem}\n")
        limited = self.login_limiter.attempt(request.remote)
        if limited is not None:
            why, wait = limited
            log.warning("web console login from %s refused: %s", request.remote, why)
            page = self._login_page(why, status=429)
            page.headers["Retry-After"] = str(wait)
            return page
        form = await request.post()
        secret = str(form.get("password", ""))
        if not await self.login_ok(secret):
            log.warning("failed web console login from %s", request.remote)
            await asyncio.sleep(self.failed_login_delay)  # slows down one client; the limiter bounds them all
            return self._login_page("Wrong password or token.", status=401)
        self.login_limiter.succeeded(request.remote)
        response = web.HTTPSeeOther("/")
        response.set_cookie(
            SESSION_COOKIE,
            self.sessions.new(),
            path="/",
            httponly=True,
            samesite="Strict",
            secure=self._scheme() == "https",
            max_age=int(self.sessions.lifetime),
        )
        log.info("web console login from %s", request.remote)
        return response

    async def handle_logout(self, request: web.Request) -> web.StreamResponse:
        problem = self.origin_problem(request, required=True)
        if problem:
            return web.Response(status=403, text=f"refused: {problem}\n")
        self.sessions.drop(request.cookies.get(SESSION_COOKIE))
        response = web.HTTPSeeOther("/login")
        response.del_cookie(SESSION_COOKIE, path="/")
        return response

    async def handle_index(self, request: web.Request) -> web.Response:  # type: ignore[override]
        """textual-serve's page, with its URLs built from the request's own origin (so the cookie and
        the Origin check agree with what the browser uses) and without the Google Fonts link
        (gateways are often offline)."""
        base = self.explicit_public_url.rstrip("/") if self.explicit_public_url else self.served_origin(request)
        ws_base = ("wss:" if base.startswith("https:") else "ws:") + base.split(":", 1)[1]
        context = {
            "font_size": 16,
            "app_websocket_url": f"{ws_base}/ws",
            "config": {"static": {"url": f"{base}/static/"}},
            "application": {"name": self.title},
        }
        text = aiohttp_jinja2.render_string("app_index.html", request, context)
        text = re.sub(r"<link[^>]*fonts\.googleapis\.com[^>]*>", "", text)
        return web.Response(text=text, content_type="text/html")

    async def handle_websocket(self, request: web.Request) -> web.WebSocketResponse:
        self.active_consoles += 1
        try:
            return await super().handle_websocket(request)
        finally:
            self.active_consoles -= 1

    async def on_startup(self, app: web.Application) -> None:
        pass  # textual-serve prints a logo here; we log one line from run() instead


def attach_command(api_url: str, data_dir: Path) -> str:
    """The command each browser tab runs (a shell line: textual-serve uses create_subprocess_shell)."""
    return shlex.join([sys.executable, "-m", "valve_console.cli", "--data-dir", str(data_dir), "--attach", api_url])


def fleet_command(fleet_file: Path) -> str:
    """The command each browser tab runs with ``serve --fleet FILE``: the fleet console on that file
    (its absolute path: textual-serve starts the tab's process in its own working directory)."""
    return shlex.join([sys.executable, "-m", "valve_console.cli", "fleet", str(Path(fleet_file).resolve())])


async def run(server: GuardedServer, notify: Callable[[str], None] = lambda _state: None) -> int:
    """Serve until SIGINT/SIGTERM. Prints ``valve-console serve: http://HOST:PORT/`` once listening."""
    server.check_credentials()
    app = await server._make_app()
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, server.host, server.port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
        raise ServeError(f"cannot listen on {server.host}:{server.port}: {reason}") from None
    host, port = runner.addresses[0][:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"valve-console serve: http://{shown}:{port}/  (each tab runs: {server.command})", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    notify("READY=1")
    try:
        await stop.wait()
    finally:
        notify("STOPPING=1")
        await runner.cleanup()
    return 0
