"""The HTTP side of job submission (``POST /api/v1/jobs``, submission.py's forms) and of large bodies:
the form a request is in, the body read in memory or streamed to a file, the answer as a response."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Optional

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse

from ..errors import BadRequest
from ..submission import (
    CLIENT_HEADER,
    FORM_OVERHEAD,
    MAX_JSON_BODY,
    Protocol,
    Submission,
    answer_body,
    json_submission,
    make_private_dir,
    parse_form,
    too_large,
    v1_submission,
)

SPOOL_FLUSH = 1024 * 1024  # body bytes gathered in memory before a write to the spool file


def protocol_of(request: Request) -> Protocol:
    """The form a request is in, judged from its content type alone (before its body is read)."""
    ctype = request.headers.get("content-type", "").lower()
    return "v1" if ctype.startswith("multipart/") else "ours"


def wants_rich_answer(request: Request) -> bool:
    return CLIENT_HEADER in request.headers


def answer(protocol: Protocol, rich: bool, status: int, error: Optional[str], job: Optional[dict[str, Any]] = None,
           headers: Optional[dict[str, str]] = None) -> JSONResponse:
    """The answer in the form the client reads (submission.answer_body)."""
    return JSONResponse(answer_body(protocol, rich, error, job), status_code=status, headers=headers)


async def read_submission(request: Request, share_limit: int, spool_root: Path) -> Submission:
    """Parse a submission in any of the three forms; ``BadRequest``/``FarmError`` in words. A v1 form's
    body is streamed into a new directory under ``spool_root``: call ``discard()`` on the result."""
    peer = request.client.host if request.client else None
    if protocol_of(request) == "v1":
        return await _read_v1(request, peer, share_limit, spool_root)
    body = await read_body(request, MAX_JSON_BODY, "a JSON job submission")
    return json_submission(body, peer)


async def read_body(request: Request, limit: int, what: str) -> bytes:
    """A small body, in memory, refused (413, in words) as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(what, limit)
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise too_large(what, limit)
    except ClientDisconnect:
        raise BadRequest(f"{what} was cut off: the client went away") from None
    return bytes(body)


async def spool_body(request: Request, limit: int, directory: Path, what: str) -> Path:
    """The request's body streamed into a new file (0600) in ``directory``, never whole in memory;
    refused (413, in words) as soon as it passes ``limit`` bytes, with nothing left on disk."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(what, limit)
    fd, name = await asyncio.to_thread(tempfile.mkstemp, prefix=".body-", dir=directory)
    path = Path(name)
    handle = os.fdopen(fd, "wb")
    try:
        pending: list[bytes] = []
        held = size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large(what, limit)
            pending.append(chunk)
            held += len(chunk)
            if held >= SPOOL_FLUSH:
                await asyncio.to_thread(handle.writelines, pending)
                pending, held = [], 0
        await asyncio.to_thread(_finish, handle, pending)
    except BaseException as exc:
        handle.close()
        path.unlink(missing_ok=True)
        if isinstance(exc, ClientDisconnect):
            raise BadRequest(f"{what} was cut off: the client went away") from None
        raise
    return path


def _finish(handle: Any, pending: list[bytes]) -> None:
    handle.writelines(pending)
    handle.close()


async def _read_v1(request: Request, peer: Optional[str], share_limit: int, spool_root: Path) -> Submission:
    content_type = request.headers.get("content-type", "")
    spool = spool_root / f".incoming-{uuid.uuid4().hex}"
    await asyncio.to_thread(make_private_dir, spool)
    sub: Optional[Submission] = None
    try:
        body = await spool_body(request, share_limit + FORM_OVERHEAD, spool, "the job form")
        parts = await asyncio.to_thread(parse_form, body, content_type, spool, share_limit)
        await asyncio.to_thread(body.unlink)
        sub = v1_submission(parts, peer)
        sub.spool = spool
        return sub
    finally:
        if sub is None:
            await asyncio.to_thread(shutil.rmtree, spool, True)
