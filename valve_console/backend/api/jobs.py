"""Jobs: submission in its three forms (submission.py), the queue and history, cancel, console, input,
and the job's event stream."""

from __future__ import annotations

import asyncio
import base64
from typing import Any, AsyncIterator

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from sse_starlette import EventSourceResponse

from ..errors import BadRequest, FarmError
from ..jobs.executor import ListenerOverflow
from .deps import OPERATOR, SECRET_READ, TOKEN_NEEDED, FarmDep, is_operator, mac_of
from .models import ERRORS, JOB_SUBMIT_SCHEMA, ErrorBody, JobInput
from .streams import RETRY, event_stream, sse
from .submit import answer, protocol_of, read_submission, wants_rich_answer
from ... import contract

router = APIRouter()


@router.post(
    "/api/v1/jobs",
    responses={**ERRORS, 406: {"model": ErrorBody}},
    tags=["jobs"],
    openapi_extra=JOB_SUBMIT_SCHEMA,
)
async def submit_job(request: Request, farm: FarmDep) -> Response:
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
    jobs = farm.jobs
    sub = None
    try:
        sub = await read_submission(request, farm.settings.job_share_max_bytes, jobs.shares.root)
        protocol = sub.protocol
        job = await jobs.submit(sub.text, sub.target, sub.job_id, share=sub.share, callback=sub.callback)
    except FarmError as exc:
        return answer(protocol, rich, exc.status, exc.message)
    finally:
        if sub is not None:
            await sub.discard()
    return answer(protocol, rich, 200, None, job, headers={"Location": f"/api/v1/job/{job['id']}"})


@router.get("/api/v1/jobs", tags=["jobs"], response_model=contract.Jobs, response_model_exclude_unset=True)
async def list_jobs(farm: FarmDep) -> dict[str, Any]:
    """Every job kept (newest first): id, machine, status, state, position, timestamps."""
    return {"jobs": farm.jobs.list_json()}


@router.get(
    "/api/v1/job/{job_id}",
    responses=ERRORS,
    tags=["jobs"],
    response_model=contract.Job,
    response_model_exclude_unset=True,
)
async def get_job(job_id: str, request: Request, farm: FarmDep) -> dict[str, Any]:
    """The job as ``/api/v1/jobs`` lists it; with its text (``job``) for the operator only."""
    return farm.jobs.job_json(farm.jobs.get(job_id), with_text=is_operator(request))


@router.delete("/api/v1/job/{job_id}", responses=ERRORS, tags=["jobs"], dependencies=OPERATOR)
async def cancel_job(job_id: str, farm: FarmDep) -> dict[str, Any]:
    """Cancel: a queued job leaves the queue; a running one is stopped (INCOMPLETE, DUT powered off)."""
    return await farm.jobs.cancel(job_id)


@router.post(
    "/api/v1/machine/{mac}/cancel_job",
    responses={200: {"content": {"text/plain": {}, "application/json": {}}}, **ERRORS},
    tags=["jobs"],
    dependencies=OPERATOR,
)
async def cancel_machine_job(request: Request, mac: str, farm: FarmDep) -> Response:
    """valve-infra's cancel_job: cancel the job running on a machine (text; JSON for our clients)."""
    key = mac_of(mac)
    machines, jobs = farm.machines, farm.jobs
    machine = machines.get(key)
    job_id = jobs.running.get(key)
    if job_id is None or job_id in jobs.training_jobs:
        state = farm.view.state(machine)
        raise BadRequest(f"The machine {key} isn't running a job. Current state is {state}")
    answer = await jobs.cancel(job_id)
    if wants_rich_answer(request):
        return JSONResponse(answer)
    return PlainTextResponse(f"Canceling job in machine {machine.ip_address}\n")


@router.get(
    "/api/v1/job/{job_id}/console",
    responses=ERRORS,
    tags=["jobs"],
    response_class=PlainTextResponse,
    dependencies=SECRET_READ,
)
async def job_console(job_id: str, farm: FarmDep, raw: bool = False) -> Response:
    """The job's console (so far, while it runs)."""
    job = farm.jobs.get(job_id)
    data = await asyncio.to_thread(farm.jobs.console_slice, job)
    if raw:
        return Response(data, media_type="application/octet-stream")
    return PlainTextResponse(data.decode("utf-8", "replace"))


@router.post(
    "/api/v1/job/{job_id}/input",
    responses=ERRORS,
    tags=["jobs"],
    dependencies=OPERATOR,
    response_model=contract.Written, response_model_exclude_unset=True,
)
async def job_input(job_id: str, body: JobInput, farm: FarmDep) -> dict[str, Any]:
    """Keystrokes for the DUT of a running job."""
    data = body.data.encode("utf-8", "surrogateescape") if body.data else b""
    return {"written": farm.jobs.input(job_id, data) if data else 0}


@router.get("/api/v1/job/{job_id}/events", responses=ERRORS, tags=["jobs"], dependencies=SECRET_READ)
async def job_events(
    job_id: str,
    farm: FarmDep,
    io_offset: int = Query(default=0, ge=0, description="console bytes of the job already received"),
    ctrl_offset: int = Query(default=0, ge=0, description="control messages already received"),
) -> EventSourceResponse:
    """SSE: ``queue`` {position}, ``ctrl`` {msg, severity}, ``job_io`` {data: base85 bytes}, then
    ``session_end`` {status}. Reconnect with io_offset/ctrl_offset to resume without repeats."""
    service = farm.jobs
    job = service.get(job_id)
    queue = service.listen(job)
    backlog = list(job.ctrl)[ctrl_offset:]
    console = service.console_slice(job, io_offset) if job.fed > io_offset or job.done.is_set() else b""
    done = job.done.is_set()

    async def gen() -> AsyncIterator[bytes]:
        try:
            yield RETRY
            if job.row.status == "QUEUED":
                yield sse("queue", {"position": service.position(job)})
            for entry in backlog:
                yield sse("ctrl", entry)
            if console:
                yield sse("job_io", {"data": base64.b85encode(console).decode("ascii")})
            if done:
                yield sse("session_end", {"status": job.row.status})
                return
            while not farm.stopping.is_set():
                try:
                    kind, data = await asyncio.wait_for(queue.get(), 1.0)
                except asyncio.TimeoutError:
                    continue
                except ListenerOverflow:
                    return  # fallen too far behind: the client reconnects with its offsets
                yield sse(kind, data)
                if kind == "session_end":
                    return
        finally:
            service.unlisten(job, queue)

    return event_stream(gen(), lambda: service.unlisten(job, queue))
