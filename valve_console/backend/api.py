"""The HTTP API (FastAPI) over a Farm. valve-infra's paths and JSON shapes are kept where they exist.

Errors are always ``{"error": "..."}`` with a 4xx status for bad input. DUT registration is open;
every operator action needs ``Authorization: Bearer <token>`` or the local unix socket.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import logging
import math
import re
from typing import TYPE_CHECKING, Any, AsyncIterator, Literal, Optional

import psutil
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..drivers.pdu import driver_names
from .consoles import SLICE_MAX
from .errors import BadRequest, FarmError
from .gitlab import GitlabInstanceCreate, GitlabInstanceUpdate
from .events import EVENT_TYPES, sse_message
from .jobs.executor import ListenerOverflow
from .registration import MachineUpdate, Registration, SourceRateLimit, is_loopback, normalise_mac, peer_address
from .rules import MAC_PATTERN  # a MAC as normalise_mac() takes it, for the schema
from .submission import FORM_OVERHEAD, answer, protocol_of, read_submission, spool_body, wants_rich_answer

if TYPE_CHECKING:
    from .farm import Farm

log = logging.getLogger(__name__)
KEEPALIVE = 15.0
EVENTS_QUEUE_LEN = 5000  # events queued per /api/v1/events reader...
EVENTS_QUEUE_BYTES = 8 << 20  # ...and bytes of their encoding (a console event is up to 256 KiB)
TOKEN_NEEDED = (
    "operator token required: send 'Authorization: Bearer <token>' (the token is in <data>/token), "
    "or call from a trusted network (the setting trusted_networks)"
)


class ErrorBody(BaseModel):
    error: str


class PduCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(min_length=1, max_length=64)
    driver: Optional[str] = None
    pdu_model: Optional[str] = None
    config: dict[str, Any] = Field(default_factory=dict)
    reserved_ports: list[str | int] = Field(default_factory=list, max_length=2048)


class DiscoverRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pdu: str = Field(min_length=1, max_length=64)
    port_id: str | int
    timeout: Optional[float] = Field(default=None, ge=1, le=3600)


class FindOutlets(BaseModel):
    model_config = ConfigDict(extra="forbid")

    timeout: Optional[float] = Field(default=None, ge=1, le=3600)


class OutletCommand(BaseModel):
    model_config = ConfigDict(extra="forbid")

    state: Literal["on", "off", "reboot", "ON", "OFF", "REBOOT"]


class ConsoleInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: str = Field(max_length=65536)
    writer: Optional[str] = Field(
        default=None,
        min_length=1,
        max_length=64,
        pattern=r"^[!-~]+$",
        description="who types (e.g. a TUI's client id); without it: the anonymous API writer",
    )
    takeover: bool = Field(default=False, description="take write access over from the current writer")


class JobInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: str = Field(max_length=65536, description="keystrokes for the DUT (UTF-8; \\x03 is Ctrl-C)")


JOB_SUBMIT_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["job"],
                    "properties": {
                        "job": {"type": "string", "description": "the job (YAML, a Jinja2 template)"},
                        "target": {
                            "type": "object",
                            "properties": {
                                "id": {"type": "string"},
                                "tags": {"type": "array", "items": {"type": "string"}},
                            },
                        },
                        "job_id": {"type": "string"},
                    },
                }
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "metadata": {"type": "string"},
                        "job": {"type": "string"},
                        "job_bucket_initial_state_tarball_file": {"type": "string", "format": "binary"},
                    },
                }
            },
        },
    }
}


class ConsoleDevice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device: Optional[str] = Field(
        max_length=255, description="a serial device identity (GET /api/v1/consoles → devices), or null"
    )


class ConsoleSource(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: Optional[str] = Field(max_length=300, description="tcp://HOST:PORT or rfc2217://HOST:PORT[?baud=N], or null")


class ConsoleBind(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mac: str = Field(
        min_length=1,
        max_length=64,
        description="the machine whose console the stream becomes",
        # in the schema only: mac_of() refuses other text with a clearer error than a pattern mismatch
        json_schema_extra={"pattern": MAC_PATTERN},
    )
    replace: bool = Field(default=False, description="take the console from the stream it is live on")


ERRORS = {400: {"model": ErrorBody}, 401: {"model": ErrorBody}, 404: {"model": ErrorBody}, 409: {"model": ErrorBody}}


def describe_validation(errors: list[dict[str, Any]]) -> str:
    parts: list[str] = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        field = ".".join(loc)
        kind = err.get("type", "")
        if kind == "extra_forbidden":
            parts.append(f"The field {loc[-1] if loc else '?'} cannot be set/modified")
        elif kind == "json_invalid":
            parts.append(f"malformed JSON: {err.get('ctx', {}).get('error', 'cannot parse the body')}")
        elif kind == "missing":
            parts.append(f"missing field {field}" if field else "missing request body")
        elif kind in ("model_attributes_type", "dict_type") and not loc:
            parts.append("the body must be a JSON object")
        else:
            msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
            parts.append(f"{field}: {msg}" if field else msg)
    return "; ".join(dict.fromkeys(parts)) or "invalid request"


class BodyLimit:
    """Refuses request bodies over ``limit`` bytes with 413, whether or not Content-Length is sent.

    Most bodies are small: they are read whole here, before any handler runs. The routes of
    ``streamed`` (method, path regex, limit) take large bodies (a job with its share, a file of a job's
    share): their handlers check the caller, the key and the job first and then stream the body to
    disk themselves; here only the declared length is checked and the bytes received are counted.
    It also reads an API body sent without a JSON content type (``curl -d``) as JSON.
    """

    def __init__(self, app: Any, limit: int, streamed: Optional[list[tuple[str, str, int]]] = None) -> None:
        self.app = app
        self.limit = limit
        self.streamed = [(m, re.compile(p), n) for m, p, n in streamed or ()]

    def _streamed_limit(self, scope: dict) -> Optional[int]:
        for method, pattern, limit in self.streamed:
            if scope["method"] == method and pattern.fullmatch(scope["path"]):
                return limit
        return None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
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

    async def _read_then_call(self, scope: dict, receive: Any, send: Any) -> None:
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

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Any, limit: Optional[int] = None) -> None:
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

    def __init__(self, app: Any, router: Any) -> None:
        self.app = app
        self.router = router
        self._cache: dict[tuple[str, str], str] = {}
        self._static: Optional[dict[str, set[str]]] = None

    def _matches(self, scope: dict, path: str) -> bool:
        from starlette.routing import Match

        probe = {**scope, "path": path}
        return any(route.matches(probe)[0] != Match.NONE for route in self.router.routes)

    def _normalise(self, scope: dict) -> str:
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
                methods = getattr(route, "methods", None)
                if methods and "{" not in getattr(route, "path", "{"):
                    self._static.setdefault(route.path, set()).update(methods)
        return self._static.get(path)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
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


async def method_not_allowed(send: Any, methods: set[str]) -> None:
    body = json.dumps({"error": f"Method Not Allowed (allowed: {allow_header(methods)})"}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"allow", allow_header(methods).encode())]
    await send({"type": "http.response.start", "status": 405, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _counted(receive: Any, limit: int) -> Any:
    """``receive`` that fails (413, in words) once more than ``limit`` body bytes came: the handler
    reading the body gets the error (a chunked body has no length to check beforehand)."""
    received = 0

    async def counted() -> dict:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise FarmError(f"request body too large (limit {limit} bytes)", 413)
        return message

    return counted


def create_app(farm: "Farm") -> Any:
    app = FastAPI(
        title="valve-console",
        version=__version__,
        description="Backend of a bare-metal CI gateway: machines, PDUs, consoles and events.",
    )

    # ------------------------------------------------------------------ errors
    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": describe_validation(list(exc.errors()))}, status_code=400)

    @app.exception_handler(FarmError)
    async def _farm_error(_: Request, exc: FarmError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = exc.headers
        if exc.status_code == 405:  # every method of the path, not only those of the first route found
            from starlette.routing import Match

            methods: set[str] = set()
            for route in app.router.routes:
                if getattr(route, "methods", None) and route.matches(request.scope)[0] != Match.NONE:
                    methods |= route.methods
            headers = {**(headers or {}), "Allow": allow_header(methods)}
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(Exception)
    async def _crash(_: Request, exc: Exception) -> JSONResponse:
        log.exception("API handler failed")
        return JSONResponse({"error": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500)

    def is_operator(request: Request) -> bool:
        """The unix socket, a trusted source network (trust.py) or the operator token."""
        from .auth import token_matches

        if request.scope.get("valve_trusted"):
            return True
        if farm.trust.is_trusted(request.client.host if request.client else None):
            return True
        return token_matches(farm.token, request.headers.get("authorization"))

    def operator(request: Request) -> None:
        if not is_operator(request):
            raise StarletteHTTPException(401, TOKEN_NEEDED, headers={"WWW-Authenticate": "Bearer"})

    # Reads that carry secrets (console output and logs hold job share URLs with their keys, job texts,
    # what the operator typed) need the operator as writes do. What DUTs and valve-infra's dashboard
    # read stays open: machines, PDUs, boot scripts and files, a DUT's own share with its key, health.
    SECRET_READ = [Depends(operator)]

    def mac_of(mac: str) -> str:
        try:
            return normalise_mac(mac)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None

    machines = lambda: farm.machines  # noqa: E731 - services exist once the farm started
    power = lambda: farm.power  # noqa: E731
    consoles = lambda: farm.consoles  # noqa: E731

    # ------------------------------------------------------------------ machines
    registration_responses: dict[int | str, dict[str, Any]] = {
        202: {"description": "held for the operator: the machine as it is (nothing applied) and a message why"},
        400: {"model": ErrorBody},
        403: {"model": ErrorBody, "description": "a new machine registering from another address than it reports"},
        409: {"model": ErrorBody, "description": "the IP address is pinned to another machine"},
        429: {"model": ErrorBody, "description": "too many registrations from this source address"},
    }
    registrations = SourceRateLimit(farm.settings.registration_rate_per_minute, farm.settings.registration_burst)

    def registering_source(request: Request) -> Optional[str]:
        """The DUT's address, or None when the gateway itself registers: loopback (its own programs:
        Vivian, QEMU DUTs on user networking, the operator's tools), a trusted network, the token."""
        host = request.client.host if request.client else None
        if is_loopback(host) or is_operator(request):
            return None
        return peer_address(host) or str(host)

    def registration_rate(request: Request) -> Optional[str]:
        """Open registration is limited per source address (a token bucket; the gateway is not)."""
        source = registering_source(request)
        if source is not None:
            wait = registrations.take(source)
            if wait > 0:
                raise StarletteHTTPException(
                    429, registrations.refusal(source, wait), headers={"Retry-After": str(math.ceil(wait))}
                )
        return source

    @app.post(
        "/api/v1/machine/",
        responses=registration_responses,
        tags=["machines"],
        summary="Register a DUT (open, rate-limited per source address)",
    )
    async def register(reg: Registration, source: Optional[str] = Depends(registration_rate)) -> Any:
        """valve-infra's registration. A known machine re-registering from another address than its own, or
        changing its identity while ready for service, is held for the operator (202, nothing applied); an IP
        pinned to another machine is refused (409); a new machine registers from the address it reports."""
        done = await machines().register(reg, source)
        if done.held:
            return JSONResponse({**done.machine, "message": done.held}, status_code=202)
        return done.machine

    app.add_api_route(
        "/api/v1/machine/",
        register,
        methods=["PUT"],
        responses=registration_responses,
        tags=["machines"],
        summary="Register a DUT (open; same as POST)",
    )
    app.add_api_route("/api/v1/machine", register, methods=["POST", "PUT"], include_in_schema=False)

    @app.get("/api/v1/registrations/held", tags=["machines"])
    async def held_registrations() -> dict[str, Any]:
        """Registrations held for the operator: per MAC the changes asked, the source, why, and the current values."""
        return {"held": machines().held_json()}

    @app.post(
        "/api/v1/machine/{mac}/registration/{decision}",
        responses=ERRORS,
        tags=["machines"],
        dependencies=[Depends(operator)],
        summary="Approve or reject a machine's held registration",
    )
    async def decide_registration(mac: str, decision: Literal["approve", "reject"]) -> dict[str, Any]:
        """approve: apply the held changes (the IP must still be free); reject: drop them. Answers the machine."""
        if decision == "approve":
            return await machines().approve_registration(mac)
        return await machines().reject_registration(mac)

    @app.post(
        "/api/v1/machine/discover",
        responses={200: {"content": {"text/plain": {}, "application/json": {}}}, **ERRORS},
        tags=["discovery"],
        dependencies=[Depends(operator)],
    )
    async def discover(request: Request, body: DiscoverRequest) -> Response:
        """Power a free outlet on; the next machine that registers without an outlet gets it.

        Answers valve-infra's text; our clients (header ``X-Valve-Console-Client``) get JSON."""
        answer = await farm.discovery.start(body.pdu, body.port_id, body.timeout)
        if wants_rich_answer(request):
            return JSONResponse(answer)
        return PlainTextResponse(answer["message"] + "\n")

    @app.get("/api/v1/machine/discover", tags=["discovery"])
    async def discovery_status(request: Request) -> dict[str, Any]:
        """valve-infra's ``discover_data`` (``{}`` when none runs); our clients get the queue too."""
        if wants_rich_answer(request):
            return farm.discovery.status()
        return farm.discovery.valve_infra_status()

    @app.delete("/api/v1/machine/discover", tags=["discovery"], dependencies=[Depends(operator)])
    async def discovery_cancel(request: Request) -> dict[str, Any]:
        status = await farm.discovery.cancel()
        return status if wants_rich_answer(request) else {}

    @app.post("/api/v1/pdu/{name}/discover", responses=ERRORS, tags=["discovery"], dependencies=[Depends(operator)])
    async def find_outlets(name: str, body: Optional[FindOutlets] = None) -> dict[str, Any]:
        """Discover every free outlet of a PDU, one after another."""
        return await farm.discovery.find_outlets(name, body.timeout if body else None)

    @app.get("/api/v1/machines", tags=["machines"], response_model=dict[str, Any])
    async def list_machines() -> Any:
        # JSON-native already: encoded at once, without FastAPI's per-value walk (a large farm's list)
        return JSONResponse({"machines": machines().list_json()})

    @app.get("/api/v1/machine/{mac}/", responses=ERRORS, tags=["machines"])
    async def get_machine(mac: str) -> dict[str, Any]:
        return machines().to_json(machines().get(mac))

    app.add_api_route("/api/v1/machine/{mac}", get_machine, methods=["GET"], include_in_schema=False)

    @app.patch("/api/v1/machine/{mac}/", responses=ERRORS, tags=["machines"], dependencies=[Depends(operator)])
    async def patch_machine(mac: str, patch: MachineUpdate) -> dict[str, Any]:
        return await machines().update(mac, patch)

    app.add_api_route(
        "/api/v1/machine/{mac}",
        patch_machine,
        methods=["PATCH"],
        include_in_schema=False,
        dependencies=[Depends(operator)],
    )

    @app.delete("/api/v1/machine/{mac}/", responses=ERRORS, tags=["machines"], dependencies=[Depends(operator)])
    async def delete_machine(mac: str) -> dict[str, Any]:
        return await machines().remove(mac)

    app.add_api_route(
        "/api/v1/machine/{mac}",
        delete_machine,
        methods=["DELETE"],
        include_in_schema=False,
        dependencies=[Depends(operator)],
    )

    @app.post(
        "/api/v1/machine/{mac}/retire",
        responses=ERRORS,
        tags=["machines"],
        dependencies=[Depends(operator)],
        response_class=PlainTextResponse,
    )
    async def retire(mac: str) -> str:
        return await machines().set_retired(mac, True) + "\n"

    @app.post(
        "/api/v1/machine/{mac}/activate",
        responses=ERRORS,
        tags=["machines"],
        dependencies=[Depends(operator)],
        response_class=PlainTextResponse,
    )
    async def activate(mac: str) -> str:
        return await machines().set_retired(mac, False) + "\n"

    # ------------------------------------------------------------------ Sgt. Hartman (training.py)
    @app.post(
        "/api/v1/machine/{mac}/training/{action}",
        responses=ERRORS,
        tags=["machines"],
        dependencies=[Depends(operator)],
        summary="Start, stop or skip a machine's pre-service training",
    )
    async def training_action(mac: str, action: Literal["start", "stop", "skip"]) -> dict[str, Any]:
        """start: (re)train now; stop: no training until started; skip: ready for service without loops."""
        service = farm.training
        if service is None:
            raise FarmError("the training service is not running", 503)
        if action == "start":
            return await service.start_training(mac)
        if action == "stop":
            return await service.stop_training(mac)
        return await service.skip_training(mac)

    # ------------------------------------------------------------------ PDUs
    @app.post("/api/v1/pdu/", status_code=201, responses=ERRORS, tags=["pdus"], dependencies=[Depends(operator)])
    async def create_pdu(body: PduCreate) -> dict[str, Any]:
        driver = body.driver or body.pdu_model
        if not driver:
            raise BadRequest(f"missing field driver (one of: {', '.join(driver_names())})")
        if body.driver and body.pdu_model and body.driver != body.pdu_model:
            raise BadRequest("driver and pdu_model disagree: give one of them")
        return await power().add_pdu(body.name, driver, body.config, [str(p) for p in body.reserved_ports])

    app.add_api_route(
        "/api/v1/pdu",
        create_pdu,
        methods=["POST"],
        status_code=201,
        include_in_schema=False,
        dependencies=[Depends(operator)],
    )

    @app.get("/api/v1/pdus", tags=["pdus"])
    async def list_pdus() -> dict[str, Any]:
        return {"pdus": power().pdus_json()}

    @app.get("/api/v1/pdu/drivers", tags=["pdus"])
    async def list_drivers() -> dict[str, Any]:
        return {"drivers": driver_names()}

    @app.get("/api/v1/pdu/{name}", responses=ERRORS, tags=["pdus"])
    async def get_pdu(name: str) -> dict[str, Any]:
        return power().pdu_json(name)

    @app.delete("/api/v1/pdu/{name}", responses=ERRORS, tags=["pdus"], dependencies=[Depends(operator)])
    async def delete_pdu(name: str) -> dict[str, Any]:
        await power().remove_pdu(name)
        return {"removed": name}

    @app.get("/api/v1/pdu/{name}/port/{port_id}", responses=ERRORS, tags=["pdus"])
    async def get_port(name: str, port_id: str) -> dict[str, Any]:
        pdu = power().pdu_json(name)
        if port_id not in pdu["ports"]:
            raise FarmError(f"PDU {name} has no outlet {port_id!r}", 404)
        return {"pdu": name, "port_id": port_id, **pdu["ports"][port_id]}

    @app.post(
        "/api/v1/pdu/{name}/port/{port_id}/state", responses=ERRORS, tags=["pdus"], dependencies=[Depends(operator)]
    )
    async def set_port(name: str, port_id: str, cmd: OutletCommand) -> dict[str, Any]:
        state = await power().set_outlet(name, port_id, cmd.state, source="api")
        return {"pdu": name, "port_id": port_id, "state": state.value}

    # ------------------------------------------------------------------ consoles
    @app.get("/api/v1/consoles", tags=["consoles"])
    async def list_consoles() -> dict[str, Any]:
        """Every machine's console (source, device, tcp_port, writer, viewers...) and the serial devices seen."""
        return {"consoles": consoles().list_json(), "devices": consoles().devices_json()}

    @app.get("/api/v1/console/{mac}", responses=ERRORS, tags=["consoles"])
    async def get_console(mac: str) -> dict[str, Any]:
        return consoles().console(mac_of(mac), create=False).to_json()

    @app.get("/api/v1/console/{mac}/log", responses=ERRORS, tags=["consoles"], response_class=PlainTextResponse,
             dependencies=SECRET_READ)
    async def console_log(
        mac: str,
        raw: bool = False,
        start: Optional[int] = Query(default=None, ge=0, description="first byte offset (a job's mark)"),
        end: Optional[int] = Query(default=None, ge=0, description="offset past the last byte (default: now)"),
    ) -> Response:
        """The ring buffer, or with start/end the bytes [start, end) of the machine's whole stream.

        Headers ``X-Console-Start``/``X-Console-End`` give the range actually returned (bytes rotated
        out of every log file are gone), ``X-Console-Total`` the stream's current end.
        """
        console = consoles().console(mac_of(mac), create=False)
        if start is None and end is None:
            data = console.contents()
            first, last = console.total - len(data), console.total
        else:
            first = start or 0
            if end is not None and first > end:
                raise BadRequest(f"start ({first}) is after end ({end})")
            upto = console.total if end is None else min(end, console.total)
            if upto - first > SLICE_MAX:
                raise BadRequest(f"ask for at most {SLICE_MAX} bytes at a time (start={first}, end={upto})")
            reader = console.open_slice(first, upto)
            data = await asyncio.to_thread(reader.read)
            first, last = reader.start, reader.end
        headers = {"X-Console-Start": str(first), "X-Console-End": str(last), "X-Console-Total": str(console.total)}
        if raw:
            return Response(data, media_type="application/octet-stream", headers=headers)
        return PlainTextResponse(data.decode("utf-8", "replace"), headers=headers)

    @app.get("/api/v1/console/{mac}/stream", responses=ERRORS, tags=["consoles"], dependencies=SECRET_READ)
    async def console_stream(mac: str, replay: bool = False) -> StreamingResponse:
        """Live console output as SSE (a read-only viewer, counted in ``viewers``)."""
        key = mac_of(mac)
        hub = consoles()
        sub = hub.subscribe(key, who="api")
        existing = hub.consoles[key]
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

        async def gen() -> AsyncIterator[bytes]:
            try:
                yield b"retry: 2000\n\n"
                if replay:
                    yield _sse("console", {"mac": key, "text": decoder.decode(existing.contents())})
                while not farm.stopping.is_set():
                    chunk = await sub.get(KEEPALIVE)
                    if chunk is None:
                        break
                    if not chunk:
                        yield b": keepalive\n\n"
                        continue
                    yield _sse("console", {"mac": key, "text": decoder.decode(chunk)})
            finally:
                hub.unsubscribe(key, sub)

        return StreamingResponse(gen(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.post("/api/v1/console/{mac}/input", responses=ERRORS, tags=["consoles"], dependencies=[Depends(operator)])
    async def console_input(mac: str, body: ConsoleInput) -> dict[str, Any]:
        """Type into the console. One writer at a time: 409 while someone else writes, unless takeover."""
        try:
            data = body.data.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            data = body.data.encode("utf-8", "replace")
        return {"written": consoles().input(mac_of(mac), data, body.writer, body.takeover)}

    @app.delete("/api/v1/console/{mac}/writer", responses=ERRORS, tags=["consoles"], dependencies=[Depends(operator)])
    async def console_release_writer(
        mac: str, writer: Optional[str] = Query(default=None, min_length=1, max_length=64)
    ) -> dict[str, Any]:
        """Give write access back (an API writer is also let go after a minute without input)."""
        return consoles().release_writer(mac_of(mac), writer)

    @app.put("/api/v1/console/{mac}/device", responses=ERRORS, tags=["consoles"], dependencies=[Depends(operator)])
    async def console_set_device(mac: str, body: ConsoleDevice) -> dict[str, Any]:
        """Bind a serial device (its identity) to the machine, or unbind it with null. Stored."""
        return await consoles().set_device(mac_of(mac), body.device)

    @app.put("/api/v1/console/{mac}/source", responses=ERRORS, tags=["consoles"], dependencies=[Depends(operator)])
    async def console_set_source(mac: str, body: ConsoleSource) -> dict[str, Any]:
        """Read the machine's console from a console server (ser2net), or stop with null. Stored."""
        return await consoles().set_remote(mac_of(mac), body.url)

    @app.delete("/api/v1/console/{mac}", responses=ERRORS, tags=["consoles"], dependencies=[Depends(operator)])
    async def console_remove(mac: str) -> dict[str, Any]:
        """Remove a machine's console: its TCP port, logs, stored settings and device binding (its
        netconsole connection is dropped). 409 while a job reads it. A registered machine gets a new one
        with its next console output."""
        return consoles().remove(mac_of(mac))

    @app.get("/api/v1/consoles/unbound", responses=ERRORS, tags=["consoles"], dependencies=[Depends(operator)])
    async def consoles_unbound() -> dict[str, Any]:
        """Console streams bound to no machine: where from, what they announced, why they wait, their
        last output (``tail``). Netconsole streams are closed after console_unbound_ttl s."""
        return {"streams": consoles().unbound_json()}

    @app.post(
        "/api/v1/consoles/unbound/{stream_id}/bind",
        responses=ERRORS,
        tags=["consoles"],
        dependencies=[Depends(operator)],
    )
    async def consoles_bind(stream_id: str, body: ConsoleBind) -> dict[str, Any]:
        """Bind a stream to a machine by hand (it stays there: its markers no longer move it). 409 if the
        machine's console is live on another stream, unless replace."""
        return consoles().bind_by_hand(stream_id[:32], mac_of(body.mac), body.replace)

    @app.delete(
        "/api/v1/consoles/unbound/{stream_id}", responses=ERRORS, tags=["consoles"], dependencies=[Depends(operator)]
    )
    async def consoles_close_unbound(stream_id: str) -> dict[str, Any]:
        """Drop a netconsole connection."""
        return consoles().close_unbound(stream_id[:32])

    # ------------------------------------------------------------------ jobs
    jobs = lambda: farm.jobs  # noqa: E731

    @app.post(
        "/api/v1/jobs",
        responses={**ERRORS, 406: {"model": ErrorBody}},
        tags=["jobs"],
        openapi_extra=JOB_SUBMIT_SCHEMA,
    )
    async def submit_job(request: Request) -> Response:
        """Submit a job: JSON ``{"job", "target"?, "job_id"?}``, or valve-infra's v1 form (metadata + job
        + share tarball; with ``callback`` the gateway connects to the client) or v0 JSON.

        A busy machine does not refuse the job: it is queued (FIFO) and ``position`` says how many
        jobs are ahead of it. 404 unknown target id, 406 no machine with the tags, 409 retired or not
        ready for service, 400 invalid job (line and field named). valve-infra's forms get valve-infra's
        answers (``{"version": 1, "error_msg"}``, ``{"reason"}``) unless ``X-Valve-Console-Client`` is sent.
        """
        protocol = protocol_of(request)
        rich = wants_rich_answer(request)
        if not is_operator(request):  # before a byte of the body is read
            return answer(protocol, rich, 401, TOKEN_NEEDED, headers={"WWW-Authenticate": "Bearer"})
        sub = None
        try:
            sub = await read_submission(request, farm.settings.job_share_max_bytes, jobs().shares.root)
            protocol = sub.protocol
            job = await jobs().submit(sub.text, sub.target, sub.job_id, share=sub.share, callback=sub.callback)
        except FarmError as exc:
            return answer(protocol, rich, exc.status, exc.message)
        finally:
            if sub is not None:
                await sub.discard()
        return answer(protocol, rich, 200, None, job, headers={"Location": f"/api/v1/job/{job['id']}"})

    @app.get("/api/v1/jobs", tags=["jobs"])
    async def list_jobs() -> dict[str, Any]:
        """Every job kept (newest first): id, machine, status, state, position, timestamps."""
        return {"jobs": jobs().list_json()}

    @app.get("/api/v1/job/{job_id}", responses=ERRORS, tags=["jobs"])
    async def get_job(job_id: str, request: Request) -> dict[str, Any]:
        """The job as ``/api/v1/jobs`` lists it; with its text (``job``) for the operator only."""
        return jobs().job_json(jobs().get(job_id), with_text=is_operator(request))

    @app.delete("/api/v1/job/{job_id}", responses=ERRORS, tags=["jobs"], dependencies=[Depends(operator)])
    async def cancel_job(job_id: str) -> dict[str, Any]:
        """Cancel: a queued job leaves the queue; a running one is stopped (INCOMPLETE, DUT powered off)."""
        return await jobs().cancel(job_id)

    @app.post(
        "/api/v1/machine/{mac}/cancel_job",
        responses={200: {"content": {"text/plain": {}, "application/json": {}}}, **ERRORS},
        tags=["jobs"],
        dependencies=[Depends(operator)],
    )
    async def cancel_machine_job(request: Request, mac: str) -> Response:
        """valve-infra's cancel_job: cancel the job running on a machine (text; JSON for our clients)."""
        key = mac_of(mac)
        machine = machines().get(key)
        job_id = jobs().running.get(key)
        if job_id is None or job_id in jobs().training_jobs:
            state = machines().state_of(machine)
            raise BadRequest(f"The machine {key} isn't running a job. Current state is {state}")
        answer = await jobs().cancel(job_id)
        if wants_rich_answer(request):
            return JSONResponse(answer)
        return PlainTextResponse(f"Canceling job in machine {machine.ip_address}\n")

    @app.get(
        "/api/v1/job/{job_id}/console",
        responses=ERRORS,
        tags=["jobs"],
        response_class=PlainTextResponse,
        dependencies=SECRET_READ,
    )
    async def job_console(job_id: str, raw: bool = False) -> Response:
        """The job's console (so far, while it runs)."""
        job = jobs().get(job_id)
        data = await asyncio.to_thread(jobs().console_slice, job)
        if raw:
            return Response(data, media_type="application/octet-stream")
        return PlainTextResponse(data.decode("utf-8", "replace"))

    @app.post("/api/v1/job/{job_id}/input", responses=ERRORS, tags=["jobs"], dependencies=[Depends(operator)])
    async def job_input(job_id: str, body: JobInput) -> dict[str, Any]:
        """Keystrokes for the DUT of a running job."""
        data = body.data.encode("utf-8", "surrogateescape") if body.data else b""
        return {"written": jobs().input(job_id, data) if data else 0}

    @app.get("/api/v1/job/{job_id}/events", responses=ERRORS, tags=["jobs"], dependencies=SECRET_READ)
    async def job_events(
        job_id: str,
        io_offset: int = Query(default=0, ge=0, description="console bytes of the job already received"),
        ctrl_offset: int = Query(default=0, ge=0, description="control messages already received"),
    ) -> StreamingResponse:
        """SSE: ``queue`` {position}, ``ctrl`` {msg, severity}, ``job_io`` {data: base85 bytes}, then
        ``session_end`` {status}. Reconnect with io_offset/ctrl_offset to resume without repeats."""
        import base64

        service = jobs()
        job = service.get(job_id)
        queue = service.listen(job)
        backlog = list(job.ctrl)[ctrl_offset:]
        console = service.console_slice(job, io_offset) if job.fed > io_offset or job.done.is_set() else b""
        done = job.done.is_set()

        async def gen() -> AsyncIterator[bytes]:
            try:
                yield b"retry: 2000\n\n"
                if job.row.status == "QUEUED":
                    yield _sse("queue", {"position": service.position(job)})
                for entry in backlog:
                    yield _sse("ctrl", entry)
                if console:
                    yield _sse("job_io", {"data": base64.b85encode(console).decode("ascii")})
                if done:
                    yield _sse("session_end", {"status": job.row.status})
                    return
                while not farm.stopping.is_set():
                    try:
                        kind, data = await asyncio.wait_for(queue.get(), 1.0)
                    except asyncio.TimeoutError:
                        continue
                    except ListenerOverflow:
                        return  # fallen too far behind: the client reconnects with its offsets
                    yield _sse(kind, data)
                    if kind == "session_end":
                        return
            finally:
                service.unlisten(job, queue)

        return StreamingResponse(gen(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    # ------------------------------------------------------------------ job shares (share.py)
    if farm.jobs is not None:
        from .jobs.executor import default_boot_urls as _boot_urls

        farm.jobs.api_host = lambda: _boot_urls(farm.settings, farm.api_address)[2]

    async def _share_call(func: Any, *args: Any) -> Any:
        from .share import ShareError

        try:
            return await asyncio.to_thread(func, *args)
        except ShareError as exc:
            raise FarmError(exc.message, exc.status) from None
        except OSError as exc:
            raise FarmError(f"job share: {exc.strerror or exc}", 507) from None

    async def _dut_share(job_id: str, key: str) -> Any:
        service = jobs()
        job = service.get(job_id)
        if not await asyncio.to_thread(service.shares.check_key, job_id, key):
            raise FarmError("wrong key for this job's share (the job's DUT gets its key in job_share_url)", 403)
        if job.row.status != "RUNNING":
            raise FarmError(f"job {job_id} is {job.row.status}: its share is open to the DUT only while it runs", 409)
        return service

    @app.get(
        "/api/v1/job/{job_id}/share",
        tags=["jobs"],
        responses={200: {"content": {"application/gzip": {}}}, **ERRORS, 410: {"model": ErrorBody}},
        response_class=Response,
        dependencies=[Depends(operator)],
    )
    async def job_share_tarball(job_id: str) -> Response:
        """The job's share as a tar.gz, once the job is over (not when it was cancelled, like valve-infra)."""
        service = jobs()
        job = service.get(job_id)
        if not job.done.is_set():
            raise FarmError(f"job {job_id} is {job.row.status}: its share is given back when it ends", 409)
        if job.row.state == "cancelled":
            raise FarmError(f"job {job_id} was cancelled: its share is not given back", 409)
        data = await _share_call(service.shares.pack, job_id)
        disposition = f'attachment; filename="{job_id}-share.tar.gz"'
        return Response(data, media_type="application/gzip", headers={"Content-Disposition": disposition})

    @app.get(
        "/api/v1/job/{job_id}/share/{key}/{path:path}",
        tags=["jobs"],
        responses={200: {"content": {"application/octet-stream": {}}}, **ERRORS, 403: {"model": ErrorBody}},
        response_class=Response,
    )
    async def job_share_get(job_id: str, key: str, path: str) -> Response:
        """DUT-facing (the key is the secret): a file of the job's share, or with an empty path the list
        of its files as JSON. Only while the job runs."""
        from fastapi.responses import FileResponse

        service = await _dut_share(job_id, key)
        if not path.strip("/"):
            return JSONResponse({"files": await _share_call(service.shares.listing, job_id)})
        target = await _share_call(service.shares.read_path, job_id, path)
        return FileResponse(target, media_type="application/octet-stream")

    @app.put(
        "/api/v1/job/{job_id}/share/{key}/{path:path}",
        tags=["jobs"],
        responses={**ERRORS, 403: {"model": ErrorBody}, 413: {"model": ErrorBody}},
        openapi_extra={"requestBody": {"content": {"application/octet-stream": {"schema": {"type": "string"}}}}},
    )
    async def job_share_put(job_id: str, key: str, path: str, request: Request) -> dict[str, Any]:
        """DUT-facing: write (replace) a file of the job's share, within its size limit. Only while it runs.

        The key, the job and the path are checked before the body is read; the body is streamed to a
        file next to the share and moved in once complete."""
        service = await _dut_share(job_id, key)
        room = await _share_call(service.shares.check_write, job_id, path)
        directory = await _share_call(service.shares.upload_dir, job_id)
        upload = await spool_body(request, room, directory, f"the file (job {job_id}'s share has {room} bytes left)")
        try:
            size = await _share_call(service.shares.write, job_id, path, upload, service.finished_oldest_first())
        finally:
            await asyncio.to_thread(upload.unlink, missing_ok=True)
        return {"path": path, "size": size}

    # ------------------------------------------------------------------ network boot (open, DUT-facing)
    @app.get("/boot/{mac}/boot.ipxe", tags=["boot"], response_class=PlainTextResponse)
    async def boot_ipxe(
        mac: str,
        platform: Optional[str] = Query(default=None, max_length=32),
        buildarch: Optional[str] = Query(default=None, max_length=32),
    ) -> str:
        """The DUT's iPXE script: its job's current boot, or the registration boot."""
        from .boot import ipxe_script, registration_boot
        from .jobs.executor import default_boot_urls

        try:
            key: Optional[str] = normalise_mac(mac)
        except ValueError:
            key = None
        config = jobs().boot_config(key) if key else None
        if key is not None:  # platform and buildarch come from the DUT: escaped, they cannot forge log lines
            log.info("%s queried its boot configuration as a %s / %s platform", key, loggable(platform),
                     loggable(buildarch))
        if config is None:
            kernel, initrd, host = default_boot_urls(farm.settings, farm.api_address)
            try:
                config = registration_boot(kernel_url=kernel, initrd_url=initrd, api_host=host)
            except ValueError as exc:
                raise FarmError(f"the default boot is misconfigured: {exc}", 503) from None
        return ipxe_script(config, platform, buildarch)

    @app.get(
        "/boot/{name}",
        tags=["boot"],
        responses={200: {"content": {"application/octet-stream": {}}}, 307: {"description": "elsewhere"}, **ERRORS},
        response_class=Response,
    )
    async def default_boot_file(name: Literal["default_kernel", "default_boot2container.cpio.xz"]) -> Response:
        """valve-infra's MinIO ``boot`` bucket: ``{{ minio_url }}/boot/default_kernel`` and
        ``.../default_boot2container.cpio.xz`` are this gateway's default boot kernel and initramfs."""
        from fastapi.responses import FileResponse, RedirectResponse

        from .jobs.executor import default_boot_urls

        kernel, initrd, host = default_boot_urls(farm.settings, farm.api_address)
        url = kernel if name == "default_kernel" else initrd
        ours = f"http://{host}/files/"
        if not url.startswith(ours):
            return RedirectResponse(url, status_code=307)
        from .boot import safe_file_name

        if not safe_file_name(url[len(ours):]):
            raise FarmError(f"the default boot URL {url} is not a file of this gateway's files directory", 404)
        path = farm.settings.data_dir / "files" / url[len(ours):]
        if not await asyncio.to_thread(path.is_file):
            raise FarmError(f"this gateway has no default boot file {url[len(ours):]!r} in its files directory", 404)
        return FileResponse(path, media_type="application/octet-stream")

    @app.get(
        "/files/{name}",
        tags=["boot"],
        responses={200: {"content": {"application/octet-stream": {}}}, **ERRORS},
        response_class=Response,
    )
    async def boot_file(name: str) -> Response:
        """A boot artefact (kernel, initramfs) from ``<data>/files/`` (open, DUT-facing)."""
        from fastapi.responses import FileResponse

        from .boot import safe_file_name

        if not safe_file_name(name):
            raise BadRequest(
                f"{name[:80]!r} is not a file name: 1-200 letters, digits and . _ + - only, not starting with '.'"
            )
        path = farm.settings.data_dir / "files" / name
        if not await asyncio.to_thread(path.is_file):
            raise FarmError(f"no file {name!r} on this gateway", 404)
        return FileResponse(path, media_type="application/octet-stream")

    # ------------------------------------------------------------------ events, health, gateway
    @app.get("/api/v1/events", tags=["events"], responses=ERRORS, dependencies=SECRET_READ)
    async def events(types: Optional[str] = Query(default=None, description="comma-separated event types")):
        wanted = None
        if types:
            wanted = {t.strip() for t in types.split(",") if t.strip()}
            unknown = wanted - set(EVENT_TYPES)
            if unknown:
                raise BadRequest(f"unknown event types: {', '.join(sorted(unknown))} (known: {', '.join(EVENT_TYPES)})")
            wanted.add("dropped")
        sub = farm.bus.subscribe(wanted, maxlen=EVENTS_QUEUE_LEN, maxbytes=EVENTS_QUEUE_BYTES)

        async def gen() -> AsyncIterator[bytes]:
            # Events are taken in pieces of at most 64 KiB, each event encoded once for every reader: a
            # reader that stops reading holds one piece in its connection and at most EVENTS_QUEUE_BYTES
            # of shared events in its queue (the oldest are dropped, then a "dropped" marker is sent).
            try:
                yield b"retry: 2000\n\n"
                while not sub.closed:
                    if not await sub.wait(timeout=KEEPALIVE):
                        yield b": keepalive\n\n"
                        continue
                    chunk = sub.take()
                    if chunk:
                        yield chunk
                    # A write the kernel takes at once does not suspend: let other readers and
                    # requests run between pieces, or one reader's backlog holds the loop.
                    await asyncio.sleep(0)
            finally:
                sub.close()

        return StreamingResponse(gen(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    # ------------------------------------------------------------------ GitLab runners
    gitlab = lambda: farm.gitlab  # noqa: E731

    @app.get("/api/v1/gitlab", tags=["gitlab"])
    async def list_gitlab() -> dict[str, Any]:
        """GitLab instances (tokens masked) with their state (ok, unreachable: reason, last sync) and runners."""
        return gitlab().list_json()

    @app.post("/api/v1/gitlab", status_code=201, responses=ERRORS, tags=["gitlab"], dependencies=[Depends(operator)])
    async def add_gitlab(body: GitlabInstanceCreate) -> dict[str, Any]:
        return await gitlab().add_instance(body)

    @app.get("/api/v1/gitlab/{name}", responses=ERRORS, tags=["gitlab"])
    async def get_gitlab(name: str) -> dict[str, Any]:
        return gitlab().instance_json(name)

    @app.patch("/api/v1/gitlab/{name}", responses=ERRORS, tags=["gitlab"], dependencies=[Depends(operator)])
    async def patch_gitlab(name: str, body: GitlabInstanceUpdate) -> dict[str, Any]:
        return await gitlab().update_instance(name, body)

    @app.delete("/api/v1/gitlab/{name}", responses=ERRORS, tags=["gitlab"], dependencies=[Depends(operator)])
    async def delete_gitlab(name: str) -> dict[str, Any]:
        """Remove an instance; its runners are deleted on GitLab (once, best effort: the ids left are listed)."""
        return await gitlab().remove_instance(name)

    @app.post("/api/v1/gitlab/{name}/sync", responses=ERRORS, tags=["gitlab"], dependencies=[Depends(operator)])
    async def sync_gitlab(name: str) -> dict[str, Any]:
        """A full sync now (create, update, verify, clean strays); answers the instance's state after it."""
        return await gitlab().sync(name, full=True)

    @app.get("/api/v1/health", tags=["health"])
    async def health() -> dict[str, Any]:
        return farm.health()

    @app.get("/api/v1/log", tags=["health"], responses=ERRORS, dependencies=SECRET_READ)
    async def backend_log(lines: int = Query(default=500, ge=1, le=2000)) -> dict[str, Any]:
        return {"entries": farm.recent_log[-lines:]}

    @app.get("/api/v1/journal", tags=["health"], responses=ERRORS, dependencies=SECRET_READ)
    async def system_journal(lines: int = Query(default=500, ge=1, le=2000)) -> dict[str, Any]:
        recent = list(farm.journal.recent) if farm.journal else []
        return {
            "entries": recent[-lines:],
            "state": farm.journal.state if farm.journal else "starting",
            "reason": farm.journal.reason if farm.journal else None,
        }

    @app.get("/api/v1/gateway", tags=["health"])
    async def gateway() -> dict[str, Any]:
        return {"interfaces": await asyncio.to_thread(network_interfaces)}

    @app.get("/metrics", response_class=PlainTextResponse, tags=["health"])
    async def metrics() -> Response:
        from .metrics import CONTENT_TYPE, render

        return Response(await render(farm), media_type=CONTENT_TYPE)

    app.router.redirect_slashes = False  # PathNormaliser finds the twin instead of redirecting
    generate_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            conformant_openapi(generate_openapi())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    served: Any = PathNormaliser(app, app.router)
    if not farm.settings.max_body_bytes:
        return served
    share_limit = farm.settings.job_share_max_bytes
    streamed = [
        ("POST", r"/api/v1/jobs/?", share_limit + FORM_OVERHEAD),
        ("PUT", r"/api/v1/job/[^/]+/share/[^/]+/.+", share_limit),
    ]
    return BodyLimit(served, farm.settings.max_body_bytes, streamed)


# ---------------------------------------------------------------------------------------- the schema
# A boot file name as boot.safe_file_name takes it: a letter or digit, then letters, digits and . _ + -, no "..".
FILE_NAME_PATTERN = r"^[A-Za-z0-9](?:\.?[A-Za-z0-9_+-])*\.?$"
ERROR_JSON = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
# valve-infra's job forms answer in their own shapes (submission.answer), errors included
JOB_ANSWER_JSON = {
    "application/json": {
        "schema": {
            "anyOf": [
                {"$ref": "#/components/schemas/ErrorBody"},
                {"type": "object", "required": ["version", "error_msg"],
                 "properties": {"version": {"type": "integer"}, "error_msg": {"type": ["string", "null"]}}},
                {"type": "object", "required": ["reason"], "properties": {"reason": {"type": ["string", "null"]}}},
            ]
        }
    }
}
STREAM_RESPONSE = {
    "description": "Server-Sent Events",
    "content": {"text/event-stream": {"schema": {"type": "string"}}},
}


def conformant_openapi(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema as the API answers (FastAPI's defaults say otherwise): invalid input is 400, not 422;
    every error is JSON ``{"error"}`` (text routes too) and any 4xx/5xx may come (the farm's state decides:
    a missing machine, a busy outlet, an unreachable PDU); a ``mac`` is a MAC; event streams are SSE."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    for path, item in schema.get("paths", {}).items():
        for op in item.values():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            _conformant_operation(path, op)
    return schema


def _conformant_operation(path: str, op: dict[str, Any]) -> None:
    responses = op["responses"]
    responses.pop("422", None)
    errors = JOB_ANSWER_JSON if path == "/api/v1/jobs" else ERROR_JSON
    for code, response in list(responses.items()):
        if code[0] in "45":
            response["content"] = errors
    responses.setdefault("400", {"description": "Invalid input", "content": errors})
    responses.setdefault("4XX", {"description": "Refused (the error says why)", "content": errors})
    responses.setdefault("5XX", {"description": "The farm cannot do it now", "content": errors})
    if path.endswith(("/events", "/stream")):
        responses["200"] = STREAM_RESPONSE
    for param in op.get("parameters", []):
        if param.get("in") != "path":
            continue
        if param.get("name") == "mac" and path.startswith("/api/"):
            param["schema"] = {**param.get("schema", {}), "type": "string", "pattern": MAC_PATTERN}
        elif path == "/files/{name}":
            param["schema"] = {**param.get("schema", {}), "type": "string", "pattern": FILE_NAME_PATTERN,
                               "maxLength": 200}


def _sse(event: str, data: dict[str, Any], seq: int | None = None) -> bytes:
    return sse_message(event, data, seq)


def loggable(value: Optional[str]) -> str:
    """A value from the network as it may be logged: control characters (C0, DEL, C1), line and
    paragraph separators and format characters (bidi overrides) escaped as ``\\xNN``/``\\uNNNN``."""
    if value is None:
        return "None"
    return "".join(c if c.isprintable() else (f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}")
                   for c in value)


def network_interfaces() -> list[dict[str, Any]]:
    import socket

    stats = psutil.net_if_stats()
    result = []
    for name, addrs in sorted(psutil.net_if_addrs().items()):
        st = stats.get(name)
        result.append(
            {
                "name": name,
                "state": "up" if st and st.isup else "down",
                "speed": st.speed if st else None,
                "mac": next((a.address for a in addrs if a.family == psutil.AF_LINK), None),
                "addresses": [a.address for a in addrs if a.family in (socket.AF_INET, socket.AF_INET6)],
            }
        )
    return result
