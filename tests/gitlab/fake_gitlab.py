"""A small fake of GitLab's runner REST API (v4), served by http.server in a thread.

It answers what python-gitlab sends for runners, with GitLab's payload shapes: ``POST /user/runners``
(201 ``{id, token: "glrt-...", token_expires_at}``), ``POST /runners`` (registration token),
``GET /runners``, ``GET /runners/all`` (admin only), ``GET/PUT/DELETE /runners/:id``,
``DELETE /runners?token=``, ``POST /runners/verify`` (200 ``{id, token, token_expires_at}`` for a live
token, 403 otherwise); errors are ``{"message": "401 Unauthorized"}`` and the like. ``stop()`` closes the
socket (GitLab down); ``start()`` serves again on the same port. Knobs: ``token_lifetime`` (seconds: new
tokens get a ``token_expires_at``), ``revoke(id)`` (the runner stays, its token changes, as after an
admin's token reset), ``verify_status`` (answer every verify with this HTTP error, e.g. 500).
"""

from __future__ import annotations

import itertools
import json
import secrets
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

ADMIN_TOKEN = "glpat-admin-0123456789abcdef"
USER_TOKEN = "glpat-user-0123456789abcdef"  # may create runners, is not an admin
REG_TOKEN = "GR1348941regtoken0123456789"


class FakeGitlab:
    def __init__(self) -> None:
        self.runners: dict[int, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        self.user_runners_refused = False  # True: POST /user/runners answers 403 (old GitLab, no scope)
        self.token_lifetime: float | None = None  # seconds a new runner token lives (None: no expiry)
        self.verify_status: int | None = None  # POST /runners/verify answers this error code (e.g. 500)
        self._ids = itertools.count(101)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

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

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
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

    def _handle(self, req: BaseHTTPRequestHandler, method: str) -> None:
        url = urlparse(req.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        length = int(req.headers.get("Content-Length") or 0)
        raw = req.rfile.read(length) if length else b""
        body: dict[str, Any] = {}
        if raw:
            if "json" in (req.headers.get("Content-Type") or ""):
                body = json.loads(raw)
            else:
                body = {k: v[-1] for k, v in parse_qs(raw.decode()).items()}
        with self._lock:
            self.requests.append((method, url.path))
        token = req.headers.get("PRIVATE-TOKEN")
        status, answer = self._route(method, url.path.removeprefix("/api/v4"), query, body, token)
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
        user = token in (ADMIN_TOKEN, USER_TOKEN)
        tags = body.get("tag_list") or []
        if isinstance(tags, str):
            tags = [t for t in tags.split(",") if t]
        if path == "/user/runners" and method == "POST":
            if not user:
                return unauthorized
            if self.user_runners_refused:
                return forbidden
            if body.get("runner_type") not in ("instance_type", "group_type", "project_type"):
                return 400, {"message": {"runner_type": ["does not have a valid value"]}}
            if body.get("runner_type") == "instance_type" and token != ADMIN_TOKEN:
                return forbidden
            r = self.add_runner(body.get("description") or "", tags, body["runner_type"])
            return 201, {"id": r["id"], "token": r["token"], "token_expires_at": r["token_expires_at"]}
        if path == "/runners" and method == "POST":
            if body.get("token") != REG_TOKEN:
                return forbidden
            r = self.add_runner(body.get("description") or "", tags)
            return 201, {"id": r["id"], "token": r["token"], "token_expires_at": r["token_expires_at"]}
        if path == "/runners" and method == "DELETE":
            found = [r for r in self.runners.values() if r["token"] == query.get("token")]
            if not found:
                return forbidden
            del self.runners[found[0]["id"]]
            return 204, None
        if path == "/runners/verify" and method == "POST":
            if self.verify_status is not None:
                return self.verify_status, {"message": f"{self.verify_status} Internal Server Error"}
            token_of = body.get("token") or query.get("token")
            runner = next((r for r in self.runners.values() if r["token"] == token_of), None) if token_of else None
            if runner is None:
                return forbidden
            return 200, {"id": runner["id"], "token": runner["token"], "token_expires_at": runner["token_expires_at"]}
        if path == "/runners/all" and method == "GET":
            if not user:
                return unauthorized
            if token != ADMIN_TOKEN:
                return forbidden
            return 200, [self.public(r, False) for r in self.runners.values()]
        if path == "/runners" and method == "GET":
            if not user:
                return unauthorized
            return 200, [self.public(r, False) for r in self.runners.values() if token == ADMIN_TOKEN]
        if path.startswith("/runners/"):
            if not user:
                return unauthorized
            try:
                rid = int(path.rsplit("/", 1)[1])
            except ValueError:
                return 404, {"error": "404 Not Found"}
            runner = self.runners.get(rid)
            if runner is None:
                return not_found
            if method == "GET":
                return 200, self.public(runner, True)
            if method == "PUT":
                for key in ("description", "run_untagged", "locked", "paused", "maximum_timeout"):
                    if key in body:
                        runner[key] = body[key]
                if "tag_list" in body:
                    runner["tag_list"] = tags
                return 200, self.public(runner, True)
            if method == "DELETE":
                del self.runners[rid]
                return 204, None
        return 404, {"error": "404 Not Found"}


def _self_test() -> None:  # pragma: no cover - handy by hand
    fake = FakeGitlab()
    fake.start()
    print(fake.url)
    fake.stop()


if __name__ == "__main__":  # pragma: no cover
    _self_test()
