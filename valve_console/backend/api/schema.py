"""The OpenAPI document as the API answers (FastAPI's defaults say otherwise)."""

from __future__ import annotations

from typing import Any, cast

from .models import MAC_PATTERN

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


def install_conformant_openapi(app: Any) -> None:
    """``app.openapi()`` answers the conformant schema (made once, on the first request)."""
    generate_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            conformant_openapi(generate_openapi())
        return cast(dict[str, Any], app.openapi_schema)

    app.openapi = openapi
