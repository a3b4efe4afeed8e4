"""Vivian's GitLab: a stand-in for GitLab's runner REST API (v4), served by http.server in a thread.

It answers every call valve-console makes for runners (``valve_console/backend/gitlab/client.py``, through
python-gitlab) with GitLab's payload shapes, status codes and error bodies:

- ``POST /user/runners`` (access token; ``instance_type`` needs an admin): 201 ``{id, token: "glrt-...",
  token_expires_at}``; a bad ``runner_type`` is 400 ``{"error": "runner_type does not have a valid value"}``
- ``POST /runners`` (legacy registration token): 201 the same; an unknown registration token is 403
- ``GET /runners`` (the caller's runners: an admin's are all of them), ``GET /runners/all`` (admin only,
  else 403), ``GET/PUT/DELETE /runners/:id`` (404 ``{"message": "404 Runner Not Found"}``)
- ``DELETE /runners?token=`` (204; an unknown token is 403), ``POST /runners/verify`` (200 ``{id, token,
  token_expires_at}`` for a live token, 403 otherwise)
- ``GET /version``: ``{"version": "17.0.0-vivian", ...}``: the ``-vivian`` suffix is how the backend (and so
  the console) can tell that the farm's GitLab is this stand-in
- without a known ``PRIVATE-TOKEN`` (or ``Authorization: Bearer``): 401 ``{"message": "401 Unauthorized"}``;
  an unknown route: 404 ``{"error": "404 Not Found"}``; a body that is not JSON: 400 ``{"error": ...}``

Knobs (attributes; CLI flags in brackets): ``down = True`` closes the socket (GitLab down; ``False`` serves
again on the same port; ``stop()``/``start()`` do the same), ``revoke(id)`` (the runner stays, its token
changes, as after an admin's token reset), ``verify_status`` (answer every verify with this HTTP error,
e.g. 500) [``--verify-status``], ``user_runners_refused`` (``POST /user/runners`` answers 403, as an old
GitLab or a token without the scope) [``--old-gitlab``], ``token_lifetime`` (seconds: new tokens get a
``token_expires_at``) [``--token-lifetime``].

Run it::

    python vivian/gitlab.py [--host 127.0.0.1] [--port N] [--token T]     # serves; prints its URL and token
    python vivian/gitlab.py --list --url URL --token T                   # a running one's runners, as a table
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import secrets
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

ADMIN_TOKEN = "glpat-admin-0123456789abcdef"
USER_TOKEN = "glpat-user-0123456789abcdef"  # may create runners, is not an admin
REG_TOKEN = "GR1348941regtoken0123456789"
VERSION = "17.0.0-vivian"  # GET /version: the "-vivian" suffix marks the stand-in
RUNNER_TYPES = ("instance_type", "group_type", "project_type")
STATUS_TEXT = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
               500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


def is_vivian(version: str | None) -> bool:
    """True for the version string this stand-in answers (``GET /version``)."""
    return bool(version) and str(version).endswith("-vivian")


class FakeGitlab:
    """The stand-in. ``start()`` serves on ``host:port`` (port 0: a free one, kept for a later ``start()``)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, admin_token: str = ADMIN_TOKEN,
                 user_token: str = USER_TOKEN, registration_token: str = REG_TOKEN) -> None:
        if not admin_token or admin_token == user_token:
            raise ValueError("the admin token must be given and differ from the user token")
        self.host = host
        self.port = port
        self.admin_token = admin_token
        self.user_token = user_token
        self.registration_token = registration_token
        self.runners: dict[int, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        self.user_runners_refused = False  # True: POST /user/runners answers 403 (old GitLab, no scope)
        self.token_lifetime: float | None = None  # seconds a new runner token lives (None: no expiry)
        self.version = VERSION  # GET /version's "version" (another value plays a GitLab that is not Vivian's)
        self.verify_status: int | None = None  # POST /runners/verify answers this error code (e.g. 500)
        self._ids = itertools.count(101)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def down(self) -> bool:
        """True while the socket is closed (as a GitLab that is down)."""
        return self._server is None

    @down.setter
    def down(self, value: bool) -> None:
        if value:
            self.stop()
        elif self._server is None:
            self.start()

    def start(self) -> None:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                fake._handle(self, "GET")

            def do_POST(self) -> None:
                fake._handle(self, "POST")

            def do_PUT(self) -> None:
                fake._handle(self, "PUT")

            def do_DELETE(self) -> None:
                fake._handle(self, "DELETE")

        class Server(ThreadingHTTPServer):
            allow_reuse_address = True
            daemon_threads = True

        self._server = Server((self.host, self.port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"vivian-gitlab-{self.port}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # ------------------------------------------------------------------ helpers
    def add_runner(self, description: str, tags: list[str], runner_type: str = "instance_type") -> dict[str, Any]:
        with self._lock:
            rid = next(self._ids)
            runner = {
                "id": rid,
                "description": description,
                "ip_address": None,
                "active": True,
                "paused": False,
                "is_shared": runner_type == "instance_type",
                "runner_type": runner_type,
                "name": None,
                "online": False,
                "status": "never_contacted",
                "tag_list": list(tags),
                "run_untagged": False,
                "locked": True,
                "maximum_timeout": None,
                "access_level": "not_protected",
                "version": None,
                "revision": None,
                "platform": None,
                "architecture": None,
                "contacted_at": None,
                "maintenance_note": None,
                "projects": [],
                "groups": [],
                "token": "glrt-" + secrets.token_urlsafe(15),
                "token_expires_at": self._expiry(),
            }
            self.runners[rid] = runner
            return runner

    def _expiry(self) -> str | None:
        if self.token_lifetime is None:
            return None
        when = datetime.fromtimestamp(time.time() + self.token_lifetime, timezone.utc)
        return when.strftime("%Y-%m-%dT%H:%M:%S.000Z")  # GitLab's form

    def revoke(self, runner_id: int) -> str:
        """The runner's token is reset (the old one is refused from now on); the old token is returned."""
        with self._lock:
            runner = self.runners[runner_id]
            old = runner["token"]
            runner["token"] = "glrt-" + secrets.token_urlsafe(15)
            return old

    def by_token(self, token: str) -> dict[str, Any] | None:
        return next((r for r in self.runners.values() if r["token"] == token), None)

    def by_description(self, description: str) -> list[dict[str, Any]]:
        return [r for r in self.runners.values() if r["description"] == description]

    @staticmethod
    def public(runner: dict[str, Any], details: bool) -> dict[str, Any]:
        keys = ("id", "description", "ip_address", "active", "paused", "is_shared", "runner_type", "name")
        keys += ("online", "status")
        out = {k: runner[k] for k in keys}
        if details:
            out.update({k: v for k, v in runner.items() if k not in ("token", "token_expires_at")})
        return out

    @staticmethod
    def _token_of(req: BaseHTTPRequestHandler) -> str | None:
        token = req.headers.get("PRIVATE-TOKEN")
        if token is None:
            auth = req.headers.get("Authorization") or ""
            if auth.lower().startswith("bearer "):
                token = auth[7:].strip()
        return token

    def _handle(self, req: BaseHTTPRequestHandler, method: str) -> None:
        url = urlparse(req.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            length = int(req.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        raw = req.rfile.read(length) if length > 0 else b""
        body: dict[str, Any] = {}
        bad: str | None = "the Content-Length header is not a number" if length < 0 else None
        if raw:
            if "json" in (req.headers.get("Content-Type") or ""):
                try:
                    parsed = json.loads(raw)
                except ValueError:
                    parsed = None
                if isinstance(parsed, dict):
                    body = parsed
                else:
                    bad = "The provided content-type 'application/json' did not match the body: not a JSON object"
            else:
                body = {k: v[-1] for k, v in parse_qs(raw.decode(errors="replace")).items()}
        with self._lock:
            self.requests.append((method, url.path))
        if bad is not None:
            status, answer = 400, {"error": bad}
        elif url.path.startswith("/api/v4/") or url.path == "/api/v4":
            status, answer = self._route(method, url.path.removeprefix("/api/v4"), query, body, self._token_of(req))
        else:
            status, answer = 404, {"error": "404 Not Found"}
        data = b"" if answer is None else json.dumps(answer).encode()
        req.send_response(status)
        if answer is not None:
            req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        req.wfile.write(data)

    def _route(self, method: str, path: str, query: dict, body: dict, token: str | None) -> tuple[int, Any]:
        unauthorized = (401, {"message": "401 Unauthorized"})
        forbidden = (403, {"message": "403 Forbidden"})
        not_found = (404, {"message": "404 Runner Not Found"})
        user = token is not None and token in (self.admin_token, self.user_token)
        admin = user and token == self.admin_token
        tags = body.get("tag_list") or []
        if isinstance(tags, str):
            tags = [t.strip() for t in tags.split(",") if t.strip()]
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            return 400, {"error": "tag_list is invalid"}
        if path == "/version" and method == "GET":
            if not user:
                return unauthorized
            return 200, {"version": self.version, "revision": "vivian",
                         "kas": {"enabled": False, "externalUrl": None, "version": None}, "enterprise": False}
        if path == "/user/runners" and method == "POST":
            if not user:
                return unauthorized
            if self.user_runners_refused:
                return forbidden
            if "runner_type" not in body:
                return 400, {"error": "runner_type is missing"}
            if body.get("runner_type") not in RUNNER_TYPES:
                return 400, {"error": "runner_type does not have a valid value"}
            if body.get("runner_type") == "instance_type" and not admin:
                return forbidden
            if body["runner_type"] != "instance_type":  # group/project runners need their group or project
                field = "group_id" if body["runner_type"] == "group_type" else "project_id"
                if field not in body:
                    return 400, {"error": f"{field} is missing"}
            r = self.add_runner(str(body.get("description") or ""), tags, body["runner_type"])
            return 201, {"id": r["id"], "token": r["token"], "token_expires_at": r["token_expires_at"]}
        if path == "/runners" and method == "POST":
            if "token" not in body:
                return 400, {"error": "token is missing"}
            if body.get("token") != self.registration_token:
                return forbidden
            r = self.add_runner(str(body.get("description") or ""), tags)
            return 201, {"id": r["id"], "token": r["token"], "token_expires_at": r["token_expires_at"]}
        if path == "/runners" and method == "DELETE":
            if "token" not in query and "token" not in body:
                return 400, {"error": "token is missing"}
            wanted = query.get("token") or body.get("token")
            with self._lock:
                found = [r for r in self.runners.values() if r["token"] == wanted]
                if not found:
                    return forbidden
                del self.runners[found[0]["id"]]
            return 204, None
        if path == "/runners/verify" and method == "POST":
            if self.verify_status is not None:
                text = STATUS_TEXT.get(self.verify_status, "Error")
                return self.verify_status, {"message": f"{self.verify_status} {text}"}
            token_of = body.get("token") or query.get("token")
            if not token_of:
                return 400, {"error": "token is missing"}
            runner = self.by_token(token_of)
            if runner is None:
                return forbidden
            return 200, {"id": runner["id"], "token": runner["token"], "token_expires_at": runner["token_expires_at"]}
        if path == "/runners/all" and method == "GET":
            if not user:
                return unauthorized
            if not admin:
                return forbidden
            return 200, [self.public(r, False) for r in self.runners.values()]
        if path == "/runners" and method == "GET":
            if not user:
                return unauthorized
            return 200, [self.public(r, False) for r in self.runners.values() if admin]
        if path.startswith("/runners/") and path.count("/") == 2 and method in ("GET", "PUT", "DELETE"):
            if not user:
                return unauthorized
            try:
                rid = int(path.rsplit("/", 1)[1])
            except ValueError:
                return 404, {"error": "404 Not Found"}
            runner = self.runners.get(rid)
            if runner is None:
                return not_found
            if not admin:  # a user sees only runners they own: none here
                return forbidden
            if method == "GET":
                return 200, self.public(runner, True)
            if method == "PUT":
                for key in ("description", "run_untagged", "locked", "paused", "maximum_timeout"):
                    if key in body:
                        runner[key] = body[key]
                if "paused" in body:
                    runner["active"] = not bool(body["paused"])
                if "tag_list" in body:
                    runner["tag_list"] = tags
                return 200, self.public(runner, True)
            with self._lock:
                self.runners.pop(rid, None)
            return 204, None
        return 404, {"error": "404 Not Found"}


VivianGitlab = FakeGitlab  # the name the demo uses


# ---------------------------------------------------------------------------------------- the CLI
class ListError(Exception):
    """``--list`` could not get the runners: said in words."""


def fetch_runners(url: str, token: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    """``GET /api/v4/runners/all`` of a running GitLab (this stand-in or a real one, with an admin token)."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ListError(f"--url {url!r} is not an http(s) URL")
    out: list[dict[str, Any]] = []
    page = 1
    while True:
        request = urllib.request.Request(f"{url.rstrip('/')}/api/v4/runners/all?per_page=100&page={page}",
                                         headers={"PRIVATE-TOKEN": token})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                items = json.loads(answer.read() or b"[]")
                next_page = answer.headers.get("X-Next-Page")
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read() or b"{}")
                message = message.get("message") or message.get("error") or message
            except (ValueError, AttributeError):
                message = exc.reason
            why = {401: "the token was refused", 403: "the token is not an administrator's"}.get(exc.code, "")
            raise ListError(f"{url} answered HTTP {exc.code} ({message}){': ' + why if why else ''}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ListError(f"cannot reach {url}: {reason}") from None
        except ValueError:
            raise ListError(f"{url} did not answer JSON: is it a GitLab?") from None
        if not isinstance(items, list):
            raise ListError(f"{url} did not answer a list of runners")
        out.extend(items)
        if not next_page:
            return out
        page = int(next_page)


def format_runners(runners: list[dict[str, Any]]) -> str:
    """The runners as a table: id, description, tags, active/paused, type."""
    rows = [("ID", "DESCRIPTION", "TAGS", "STATE", "TYPE")]
    for r in sorted(runners, key=lambda r: int(r.get("id") or 0)):
        state = "paused" if r.get("paused") or r.get("active") is False else "active"
        tags = r.get("tag_list")
        rows.append((str(r.get("id")), str(r.get("description") or ""),
                     ",".join(tags) if isinstance(tags, list) else "-", state, str(r.get("runner_type") or "")))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    if len(rows) == 1:
        lines.append("(no runners)")
    return "\n".join(lines)


def list_runners(url: str, token: str) -> str:
    """``--list``: each runner with its tags (``GET /runners/all`` has none: ``GET /runners/:id`` each)."""
    runners = fetch_runners(url, token)
    detailed = []
    for r in runners:
        if "tag_list" not in r:
            request = urllib.request.Request(f"{url.rstrip('/')}/api/v4/runners/{int(r['id'])}",
                                             headers={"PRIVATE-TOKEN": token})
            try:
                with urllib.request.urlopen(request, timeout=10) as answer:
                    r = {**r, **json.loads(answer.read())}
            except urllib.error.HTTPError as exc:
                if exc.code != 404:  # a runner deleted meanwhile is left out; other errors are said
                    raise ListError(f"{url} answered HTTP {exc.code} for runner {r['id']}") from None
                continue
            except (urllib.error.URLError, OSError, ValueError) as exc:
                raise ListError(f"cannot read runner {r['id']} from {url}: {exc}") from None
        detailed.append(r)
    return format_runners(detailed)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not between 0 and 65535")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Vivian's GitLab: a stand-in for GitLab's runner API (serve or --list).")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=0, help="port to serve on (default: a free one)")
    p.add_argument("--token", help=f"the admin token (serving: default {ADMIN_TOKEN}; --list: required)")
    p.add_argument("--registration-token", default=REG_TOKEN, help="the legacy registration token")
    p.add_argument("--old-gitlab", action="store_true", help="refuse POST /user/runners (403), as an old GitLab")
    p.add_argument("--verify-status", type=int, metavar="CODE", help="answer POST /runners/verify with this error")
    p.add_argument("--token-lifetime", type=float, metavar="SECONDS", help="runner tokens expire after this")
    p.add_argument("--list", action="store_true",
                   help="list a running GitLab's runners (needs --url and --token, or --data-dir)")
    p.add_argument("--url", help="--list: the GitLab's URL, e.g. http://127.0.0.1:8929")
    p.add_argument("--data-dir", type=Path,
                   help=f"--list: a demo's data directory (its {DEMO_FILE} names the demo's stand-in and token)")
    return p


DEMO_FILE = "vivian-gitlab.json"  # in a demo's data directory: {"url", "token"} of the stand-in it runs


def write_demo_file(data_dir: Path, url: str, token: str) -> Path:
    """Where ``valve-console demo`` says which stand-in it runs (mode 0600: the admin token is in it)."""
    path = data_dir / DEMO_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump({"url": url, "token": token}, out)
    return path


def _read_demo_file(data_dir: Path) -> tuple[str, str]:
    path = data_dir / DEMO_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return str(data["url"]), str(data["token"])
    except FileNotFoundError:
        raise ListError(f"{path} does not exist: is a demo with its GitLab running on that data directory?") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ListError(f"cannot read {path}: {exc}") from None


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.list:
        if args.data_dir is None and (not args.url or not args.token):
            print("vivian/gitlab.py: --list needs --url URL and --token TOKEN (an admin token), or --data-dir DIR "
                  "of a running demo", file=sys.stderr)
            return 2
        try:
            url, token = _read_demo_file(args.data_dir) if args.data_dir is not None else (args.url, args.token)
            print(list_runners(url, token))
        except ListError as exc:
            print(f"vivian/gitlab.py: {exc}", file=sys.stderr)
            return 1
        return 0
    if args.verify_status is not None and not 400 <= args.verify_status <= 599:
        print(f"vivian/gitlab.py: --verify-status {args.verify_status} is not an HTTP error (400-599)",
              file=sys.stderr)
        return 2
    if args.token_lifetime is not None and args.token_lifetime <= 0:
        print("vivian/gitlab.py: --token-lifetime must be more than 0 seconds", file=sys.stderr)
        return 2
    try:
        gitlab = FakeGitlab(args.host, args.port, admin_token=args.token or ADMIN_TOKEN,
                            registration_token=args.registration_token)
    except ValueError as exc:
        print(f"vivian/gitlab.py: {exc}", file=sys.stderr)
        return 2
    gitlab.user_runners_refused = args.old_gitlab
    gitlab.verify_status = args.verify_status
    gitlab.token_lifetime = args.token_lifetime
    try:
        gitlab.start()
    except OSError as exc:
        print(f"vivian/gitlab.py: cannot serve on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(f"Vivian GitLab on {gitlab.url}  admin token {gitlab.admin_token}", flush=True)
    print(f"  list its runners:  python vivian/gitlab.py --list --url {gitlab.url} --token {gitlab.admin_token}",
          flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    gitlab.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
