"""ASGI middlewares in front of the FastAPI app: BodyLimit (large bodies refused before they are read) and
PathNormaliser (valve-infra's ``//api`` and the trailing-slash twins of our routes, without redirects)."""

from __future__ import annotations

import json
import re
from typing import Optional

from starlette.routing import Match, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import FarmError


class BodyLimit:
    """Refuses request bodies over ``limit`` bytes with 413, whether or not Content-Length is sent.

    Most bodies are small: they are read whole here, before any handler runs. The routes of
    ``streamed`` (method, path regex, limit) take large bodies (a job with its share, a file of a job's
    share): their handlers check the caller, the key and the job first and then stream the body to
    disk themselves; here only the declared length is checked and the bytes received are counted.
    It also reads an API body sent without a JSON content type (``curl -d``) as JSON.
    """

    def __init__(self, app: ASGIApp, limit: int, streamed: Optional[list[tuple[str, str, int]]] = None) -> None:
        self.app = app
        self.limit = limit
        self.streamed = [(m, re.compile(p), n) for m, p, n in streamed or ()]

    def _streamed_limit(self, scope: Scope) -> Optional[int]:
        for method, pattern, limit in self.streamed:
            if scope["method"] == method and pattern.fullmatch(scope["path"]):
                return limit
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope.get("headers", [])
        streamed = self._streamed_limit(scope)
        limit = self.limit if streamed is None else streamed
        for name, value in headers:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await self._refuse(send, limit)
                return
        if scope["method"] in ("POST", "PUT", "PATCH") and scope["path"].startswith("/api/"):
            ctype = next((v for n, v in headers if n == b"content-type"), b"")
            if not ctype or ctype.startswith(b"application/x-www-form-urlencoded"):
                scope = dict(scope)
                scope["headers"] = [(n, v) for n, v in headers if n != b"content-type"] + [
                    (b"content-type", b"application/json")
                ]
        if scope["method"] not in ("POST", "PUT", "PATCH", "DELETE"):
            await self.app(scope, receive, send)
        elif streamed is not None:
            await self.app(scope, _counted(receive, streamed), send)
        else:
            await self._read_then_call(scope, receive, send)

    async def _read_then_call(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Read the whole body first (it is small by definition), so a too-large one is refused
        # before any handler sees it, chunked or not.
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.limit:
                await self._refuse(send, self.limit)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send, limit: Optional[int] = None) -> None:
        body = json.dumps({"error": f"request body too large (limit {limit or self.limit} bytes)"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


class PathNormaliser:
    """valve-infra's paths as its tools write them: ``//api/v1/jobs`` (executorctl's default URL ends in
    ``/``) and the trailing-slash twins of our routes (``/api/v1/machine/<mac>`` and ``.../<mac>/``,
    ``/api/v1/pdus/``) reach the same route, without a redirect (a streamed upload cannot be re-sent)."""

    def __init__(self, app: ASGIApp, router: Router) -> None:
        self.app = app
        self.router = router
        self._cache: dict[tuple[str, str], str] = {}
        self._static: Optional[dict[str, set[str]]] = None

    def _matches(self, scope: Scope, path: str) -> bool:
        probe = {**scope, "path": path}
        return any(route.matches(probe)[0] != Match.NONE for route in self.router.routes)

    def _normalise(self, scope: Scope) -> str:
        path = scope["path"]
        key = (scope["method"], path)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        fixed = re.sub(r"/{2,}", "/", path)
        if not self._matches(scope, fixed) and fixed != "/":
            twin = fixed[:-1] if fixed.endswith("/") else fixed + "/"
            if self._matches(scope, twin):
                fixed = twin
        if len(self._cache) > 4096:
            self._cache.clear()
        self._cache[key] = fixed
        return fixed

    def _static_methods(self, path: str) -> Optional[set[str]]:
        """The methods of the routes whose path is exactly ``path`` (no parameter), or None if none is."""
        if self._static is None:
            self._static = {}
            for route in self.router.routes:
                # Only routes with methods (Route, APIRoute) count; BaseRoute itself declares neither.
                methods: Optional[set[str]] = getattr(route, "methods", None)
                route_path: str = getattr(route, "path", "{")
                if methods and "{" not in route_path:
                    self._static.setdefault(route_path, set()).update(methods)
        return self._static.get(path)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            fixed = self._normalise(scope)
            if fixed != scope["path"]:
                scope = {**scope, "path": fixed, "raw_path": fixed.encode("utf-8", "surrogateescape")}
            # A path of its own (/api/v1/machine/discover, /api/v1/pdu/drivers) is not also a value of
            # a parameter (a machine "discover", a PDU "drivers"): another method is 405, not that route.
            methods = self._static_methods(fixed)
            if methods is not None and scope["method"] not in methods:
                await method_not_allowed(send, methods)
                return
        await self.app(scope, receive, send)


def allow_header(methods: set[str]) -> str:
    return ", ".join(sorted(methods - {"HEAD"}))


async def method_not_allowed(send: Send, methods: set[str]) -> None:
    body = json.dumps({"error": f"Method Not Allowed (allowed: {allow_header(methods)})"}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"allow", allow_header(methods).encode())]
    await send({"type": "http.response.start", "status": 405, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _counted(receive: Receive, limit: int) -> Receive:
    """``receive`` that fails (413, in words) once more than ``limit`` body bytes came: the handler
    reading the body gets the error (a chunked body has no length to check beforehand)."""
    received = 0

    async def counted() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise FarmError(f"request body too large (limit {limit} bytes)", 413)
        return message

    return counted
