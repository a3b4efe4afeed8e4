"""Job shares (share.py): the operator's tarball once a job is over, the DUT's reads and writes (its key
is the secret) while the job runs."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from ..errors import FarmError
from ..share import ShareError
from .deps import OPERATOR, FarmDep
from .models import ERRORS, ErrorBody
from .submit import spool_body

router = APIRouter()


async def share_call(func: Any, *args: Any) -> Any:
    """A ShareStore call in a worker thread; its errors as FarmErrors (a full disk is 507)."""
    try:
        return await asyncio.to_thread(func, *args)
    except ShareError as exc:
        raise FarmError(exc.message, exc.status) from None
    except OSError as exc:
        raise FarmError(f"job share: {exc.strerror or exc}", 507) from None


async def dut_share(farm: Any, job_id: str, key: str) -> Any:
    """The job service once the key is the job's and the job runs."""
    service = farm.jobs
    job = service.get(job_id)
    if not await asyncio.to_thread(service.shares.check_key, job_id, key):
        raise FarmError("wrong key for this job's share (the job's DUT gets its key in job_share_url)", 403)
    if job.row.status != "RUNNING":
        raise FarmError(f"job {job_id} is {job.row.status}: its share is open to the DUT only while it runs", 409)
    return service


@router.get(
    "/api/v1/job/{job_id}/share",
    tags=["jobs"],
    responses={200: {"content": {"application/gzip": {}}}, **ERRORS, 410: {"model": ErrorBody}},
    response_class=Response,
    dependencies=OPERATOR,
)
async def job_share_tarball(job_id: str, farm: FarmDep) -> Response:
    """The job's share as a tar.gz, once the job is over (not when it was cancelled, like valve-infra)."""
    service = farm.jobs
    job = service.get(job_id)
    if not job.over:
        raise FarmError(f"job {job_id} is {job.row.status}: its share is given back when it ends", 409)
    if job.row.state == "cancelled":
        raise FarmError(f"job {job_id} was cancelled: its share is not given back", 409)
    data = await share_call(service.shares.pack, job_id)
    disposition = f'attachment; filename="{job_id}-share.tar.gz"'
    return Response(data, media_type="application/gzip", headers={"Content-Disposition": disposition})


@router.get(
    "/api/v1/job/{job_id}/share/{key}/{path:path}",
    tags=["jobs"],
    responses={200: {"content": {"application/octet-stream": {}}}, **ERRORS, 403: {"model": ErrorBody}},
    response_class=Response,
)
async def job_share_get(job_id: str, key: str, path: str, farm: FarmDep) -> Response:
    """DUT-facing (the key is the secret): a file of the job's share, or with an empty path the list
    of its files as JSON. Only while the job runs."""
    service = await dut_share(farm, job_id, key)
    if not path.strip("/"):
        return JSONResponse({"files": await share_call(service.shares.listing, job_id)})
    target = await share_call(service.shares.read_path, job_id, path)
    return FileResponse(target, media_type="application/octet-stream")


@router.put(
    "/api/v1/job/{job_id}/share/{key}/{path:path}",
    tags=["jobs"],
    responses={**ERRORS, 403: {"model": ErrorBody}, 413: {"model": ErrorBody}},
    openapi_extra={"requestBody": {"content": {"application/octet-stream": {"schema": {"type": "string"}}}}},
)
async def job_share_put(job_id: str, key: str, path: str, request: Request, farm: FarmDep) -> dict[str, Any]:
    """DUT-facing: write (replace) a file of the job's share, within its size limit. Only while it runs.

    The key, the job and the path are checked before the body is read; the body is streamed to a
    file next to the share and moved in once complete."""
    service = await dut_share(farm, job_id, key)
    room = await share_call(service.shares.check_write, job_id, path)
    directory = await share_call(service.shares.upload_dir, job_id)
    upload = await spool_body(request, room, directory, f"the file (job {job_id}'s share has {room} bytes left)")
    try:
        size = await share_call(service.shares.write, job_id, path, upload, service.finished_oldest_first())
    finally:
        await asyncio.to_thread(upload.unlink, missing_ok=True)
    return {"path": path, "size": size}
