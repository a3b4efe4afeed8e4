"""Where errors become HTTP answers: the services raise errors.py's types (FarmError and its kinds,
with the status each means), validation fails with 400, and every answer is ``{"error": "..."}``."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from ..errors import FarmError
from .middleware import allow_header

log = logging.getLogger("valve_console.backend.api")


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


async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse({"error": describe_validation(list(exc.errors()))}, status_code=400)


async def farm_error(_: Request, exc: FarmError) -> JSONResponse:
    return JSONResponse({"error": exc.message}, status_code=exc.status)


async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    headers = exc.headers
    if exc.status_code == 405:  # every method of the path, not only those of the first route found
        methods: set[str] = set()
        for route in request.app.router.routes:
            if getattr(route, "methods", None) and route.matches(request.scope)[0] != Match.NONE:
                methods |= route.methods
        headers = {**(headers or {}), "Allow": allow_header(methods)}
    return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=headers)


async def crash(_: Request, exc: Exception) -> JSONResponse:
    log.exception("API handler failed")
    return JSONResponse({"error": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(FarmError, farm_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, crash)
