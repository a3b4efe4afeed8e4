"""Job submissions (``POST /api/v1/jobs``) in their three forms, and the answers each form expects.

- **v1** (valve-infra's job client ``executorctl``, 2022): ``multipart/form-data`` with the parts
  ``metadata`` (JSON, ``version: 1``: ``job_id``, ``callback {port, host?}``, ``target {id, tags}``,
  ``minio``), ``job`` (the YAML template) and optionally ``job_bucket_initial_state_tarball_file``
  (a tar or tar.gz of the client's share directory). Parsed with python-multipart, as FastAPI's forms are.
- **v0** (valve-infra's deprecated JSON form): ``{"metadata": {"callback_host", "callback_port"}, "job"}``.
- **ours** (``valve-console job run``, curl): ``{"job", "target"?, "job_id"?}``; it follows the job over
  ``GET /api/v1/job/{id}/events`` and needs no callback.

valve-infra's clients build their answer object from every key of the JSON, so v1 answers are exactly
``{"version": 1, "error_msg": ...}`` and v0 answers ``{"reason": ...}``. Our clients send the header
``X-Valve-Console-Client`` and then get the richer answer (``id``, ``status``, ``position``,
``machine``); errors in our form are ``{"error": ...}``. Every success also carries ``Location:
/api/v1/job/<id>``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal, Optional

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse

from .errors import BadRequest, FarmError

Protocol = Literal["v0", "v1", "ours"]
CLIENT_HEADER = "x-valve-console-client"  # our clients ask for the rich answer with it
SHARE_PART = "job_bucket_initial_state_tarball_file"  # valve-infra's name of the share's tar(.gz) part
MAX_FORM_PARTS = 16  # metadata, job, the share, and a few attachments newer clients may send
MAX_TEXT_PART = 1024 * 1024  # metadata and job parts (the job template is limited to 1 MiB too)


@dataclass
class Callback:
    """Where the gateway connects to speak to the client (valve-infra §4.5): v1 framing, or v0 raw bytes."""

    host: str
    port: int
    version: int = 1


@dataclass
class Submission:
    text: str
    target: Optional[dict[str, Any]]
    job_id: Optional[str]
    share: Optional[bytes]
    protocol: Protocol
    callback: Optional[Callback] = None


def protocol_of(request: Request) -> Protocol:
    """The form a request is in, judged from its content type alone (before its body is read)."""
    ctype = request.headers.get("content-type", "").lower()
    return "v1" if ctype.startswith("multipart/") else "ours"


def wants_rich_answer(request: Request) -> bool:
    return CLIENT_HEADER in request.headers


def answer(protocol: Protocol, rich: bool, status: int, error: Optional[str], job: Optional[dict[str, Any]] = None,
           headers: Optional[dict[str, str]] = None) -> JSONResponse:
    """The answer in the form the client reads: see the module's docstring."""
    body: dict[str, Any]
    if protocol == "ours" or (rich and error is not None):
        body = {"error": error} if error is not None else dict(job or {})
    elif protocol == "v0":
        body = {"reason": error}
    else:
        body = {"version": 1, "error_msg": error}
    if rich and error is None and protocol != "ours":
        body.update(job or {})
    return JSONResponse(body, status_code=status, headers=headers)


async def _part_bytes(value: Any, name: str, limit: int) -> bytes:
    """A form part's content (a file part or a plain field), refused in words when over ``limit``."""
    if isinstance(value, UploadFile):
        data = await value.read(limit + 1)
    else:
        data = str(value).encode("utf-8")
    if len(data) > limit:
        raise FarmError(f"the {name} part is larger than {limit} bytes", 413)
    return data


def _check_mimetype(value: Any, name: str, expected: str) -> None:
    """valve-infra refuses a part whose declared type is wrong (a part without a type passes)."""
    if isinstance(value, UploadFile) and value.content_type and value.content_type.split(";")[0] != expected:
        raise BadRequest(f"the {name} part has the type {value.content_type!r} instead of {expected}")


def _callback(meta: dict[str, Any], peer: Optional[str], version: int) -> Optional[Callback]:
    if version == 1:
        spec = meta.get("callback")
        if spec is None:
            return None
        if not isinstance(spec, dict):
            raise BadRequest("metadata.callback must be an object {port, host?}")
        port, host = spec.get("port"), spec.get("host")
    else:
        port, host = meta.get("callback_port"), meta.get("callback_host")
        if port is None:
            return None
    if isinstance(port, str) and port.isdigit():
        port = int(port)
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise BadRequest(f"the callback port {str(port)[:20]!r} is not a TCP port (1-65535)")
    if host is None:
        host = peer
    if not isinstance(host, str) or not host or len(host) > 255 or any(c.isspace() for c in host):
        raise BadRequest("the callback host is missing (and the request has no peer address to default to)"
                         if host is None else f"the callback host {str(host)[:40]!r} is not a host name or address")
    return Callback(host=host, port=port, version=version)


def _target(value: Any) -> Optional[dict[str, Any]]:
    """The metadata's target override: ``null`` fields mean absent (executorctl sends ``"tags": null``)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadRequest("target must be an object {id?, tags?}")
    return {k: v for k, v in value.items() if v is not None} or None


async def read_submission(request: Request, share_limit: int) -> Submission:
    """Parse a submission in any of the three forms; ``BadRequest``/``FarmError`` in words."""
    peer = request.client.host if request.client else None
    if protocol_of(request) == "v1":
        return await _read_v1(request, peer, share_limit)
    body = await request.body()
    try:
        data = json.loads(body or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest('the body must be a JSON object {"job": "<yaml>", "target"?, "job_id"?}')
    if "metadata" in data:
        meta = data.get("metadata")
        if not isinstance(meta, dict):
            raise BadRequest("metadata must be a JSON object")
        if set(data) - {"metadata", "job"}:
            raise BadRequest(f"unknown fields: {', '.join(sorted(set(data) - {'metadata', 'job'}))}")
        text = data.get("job")
        if not isinstance(text, str):
            raise BadRequest("missing field job (the job's YAML text)")
        sub = Submission(text, None, None, None, "v0", _callback(meta, peer, 0))
        return sub
    unknown = set(data) - {"job", "target", "job_id"}
    if unknown:
        raise BadRequest(f"unknown fields: {', '.join(sorted(unknown))}")
    text, target, job_id = data.get("job"), data.get("target"), data.get("job_id")
    if not isinstance(text, str):
        raise BadRequest("missing field job (the job's YAML text)")
    if job_id is not None and not isinstance(job_id, str):
        raise BadRequest("job_id must be a string")
    return Submission(text, _target(target), job_id, None, "ours")


async def _read_v1(request: Request, peer: Optional[str], share_limit: int) -> Submission:
    from python_multipart.exceptions import MultipartParseError

    try:
        form = await request.form(max_files=MAX_FORM_PARTS, max_fields=MAX_FORM_PARTS, max_part_size=MAX_TEXT_PART)
    except MultipartParseError as exc:
        raise BadRequest(f"cannot parse the multipart form: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - starlette wraps the parser's errors in its own types
        status = getattr(exc, "status_code", 400)
        detail = getattr(exc, "detail", None) or str(exc) or type(exc).__name__
        raise FarmError(f"cannot parse the multipart form: {detail}", status if 400 <= status < 500 else 400) from None
    try:
        if "metadata" not in form or "job" not in form:
            raise BadRequest("the form needs a 'metadata' part (JSON, version 1) and a 'job' part (YAML)")
        _check_mimetype(form["metadata"], "metadata", "application/json")
        _check_mimetype(form["job"], "job", "application/x-yaml")
        try:
            meta = json.loads(await _part_bytes(form["metadata"], "metadata", MAX_TEXT_PART))
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest(f"the metadata part is not JSON: {exc}") from None
        if not isinstance(meta, dict) or meta.get("version") != 1:
            version = meta.get("version") if isinstance(meta, dict) else None
            raise BadRequest(f"the metadata must be a JSON object with version 1 (got version {version!r})")
        try:
            text = (await _part_bytes(form["job"], "job", MAX_TEXT_PART)).decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("the job part is not UTF-8 text") from None
        share = None
        if SHARE_PART in form:
            _check_mimetype(form[SHARE_PART], SHARE_PART, "application/octet-stream")
            share = await _part_bytes(form[SHARE_PART], SHARE_PART, share_limit)
        job_id = meta.get("job_id")
        if job_id is not None and not isinstance(job_id, (str, int)):
            raise BadRequest("metadata.job_id must be a string")
        return Submission(
            text,
            _target(meta.get("target")),
            None if job_id is None else str(job_id),
            share,
            "v1",
            _callback(meta, peer, 1),
        )
    finally:
        await form.close()
