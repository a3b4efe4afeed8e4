"""Consoles: each machine's console (log, live stream, input, writer, device, remote source) and the
console streams bound to no machine yet."""

from __future__ import annotations

import asyncio
import codecs
from typing import Any, AsyncIterator, Optional

from fastapi import APIRouter, Query
from fastapi.responses import PlainTextResponse, Response
from sse_starlette import EventSourceResponse

from ..consoles import SLICE_MAX
from ..errors import BadRequest
from .deps import OPERATOR, SECRET_READ, FarmDep, mac_of
from .models import ERRORS, ConsoleBind, ConsoleDevice, ConsoleInput, ConsoleSource
from .streams import KEEPALIVE, KEEPALIVE_COMMENT, RETRY, event_stream, sse
from ... import contract

router = APIRouter()


@router.get("/api/v1/consoles", tags=["consoles"], response_model=contract.Consoles, response_model_exclude_unset=True)
async def list_consoles(farm: FarmDep) -> dict[str, Any]:
    """Every machine's console (source, device, tcp_port, writer, viewers...) and the serial devices seen."""
    return {"consoles": farm.consoles.list_json(), "devices": farm.consoles.devices_json()}


@router.get(
    "/api/v1/console/{mac}",
    responses=ERRORS,
    tags=["consoles"],
    response_model=contract.Console,
    response_model_exclude_unset=True,
)
async def get_console(mac: str, farm: FarmDep) -> dict[str, Any]:
    return farm.consoles.console(mac_of(mac), create=False).to_json()


@router.get("/api/v1/console/{mac}/log", responses=ERRORS, tags=["consoles"], response_class=PlainTextResponse,
            dependencies=SECRET_READ)
async def console_log(
    mac: str,
    farm: FarmDep,
    raw: bool = False,
    start: Optional[int] = Query(default=None, ge=0, description="first byte offset (a job's mark)"),
    end: Optional[int] = Query(default=None, ge=0, description="offset past the last byte (default: now)"),
) -> Response:
    """The ring buffer, or with start/end the bytes [start, end) of the machine's whole stream.

    Headers ``X-Console-Start``/``X-Console-End`` give the range actually returned (bytes rotated
    out of every log file are gone), ``X-Console-Total`` the stream's current end.
    """
    console = farm.consoles.console(mac_of(mac), create=False)
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


@router.get("/api/v1/console/{mac}/stream", responses=ERRORS, tags=["consoles"], dependencies=SECRET_READ)
async def console_stream(mac: str, farm: FarmDep, replay: bool = False) -> EventSourceResponse:
    """Live console output as SSE (a read-only viewer, counted in ``viewers``)."""
    key = mac_of(mac)
    hub = farm.consoles
    sub = hub.subscribe(key, who="api")
    existing = hub.consoles[key]
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    async def gen() -> AsyncIterator[bytes]:
        try:
            yield RETRY
            if replay:
                yield sse("console", {"mac": key, "text": decoder.decode(existing.contents())})
            while not farm.stopping.is_set():
                chunk = await sub.get(KEEPALIVE)
                if chunk is None:
                    break
                if not chunk:
                    yield KEEPALIVE_COMMENT
                    continue
                yield sse("console", {"mac": key, "text": decoder.decode(chunk)})
        finally:
            hub.unsubscribe(key, sub)

    return event_stream(gen(), lambda: hub.unsubscribe(key, sub))


@router.post(
    "/api/v1/console/{mac}/input",
    responses=ERRORS,
    tags=["consoles"],
    dependencies=OPERATOR,
    response_model=contract.Written, response_model_exclude_unset=True,
)
async def console_input(mac: str, body: ConsoleInput, farm: FarmDep) -> dict[str, Any]:
    """Type into the console. One writer at a time: 409 while someone else writes, unless takeover."""
    try:
        data = body.data.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        data = body.data.encode("utf-8", "replace")
    return {"written": farm.consoles.input(mac_of(mac), data, body.writer, body.takeover)}


@router.delete("/api/v1/console/{mac}/writer", responses=ERRORS, tags=["consoles"], dependencies=OPERATOR)
async def console_release_writer(
    mac: str, farm: FarmDep, writer: Optional[str] = Query(default=None, min_length=1, max_length=64)
) -> dict[str, Any]:
    """Give write access back (an API writer is also let go after a minute without input)."""
    return farm.consoles.release_writer(mac_of(mac), writer)


@router.put("/api/v1/console/{mac}/device", responses=ERRORS, tags=["consoles"], dependencies=OPERATOR)
async def console_set_device(mac: str, body: ConsoleDevice, farm: FarmDep) -> dict[str, Any]:
    """Bind a serial device (its identity) to the machine, or unbind it with null. Stored."""
    return await farm.consoles.set_device(mac_of(mac), body.device)


@router.put("/api/v1/console/{mac}/source", responses=ERRORS, tags=["consoles"], dependencies=OPERATOR)
async def console_set_source(mac: str, body: ConsoleSource, farm: FarmDep) -> dict[str, Any]:
    """Read the machine's console from a console server (ser2net), or stop with null. Stored."""
    return await farm.consoles.set_remote(mac_of(mac), body.url)


@router.delete("/api/v1/console/{mac}", responses=ERRORS, tags=["consoles"], dependencies=OPERATOR)
async def console_remove(mac: str, farm: FarmDep) -> dict[str, Any]:
    """Remove a machine's console: its TCP port, logs, stored settings and device binding (its
    netconsole connection is dropped). 409 while a job reads it. A registered machine gets a new one
    with its next console output."""
    return farm.consoles.remove(mac_of(mac))


@router.get(
    "/api/v1/consoles/unbound",
    responses=ERRORS,
    tags=["consoles"],
    dependencies=OPERATOR,
    response_model=contract.UnboundStreams, response_model_exclude_unset=True,
)
async def consoles_unbound(farm: FarmDep) -> dict[str, Any]:
    """Console streams bound to no machine: where from, what they announced, why they wait, their
    last output (``tail``). Netconsole streams are closed after console_unbound_ttl s."""
    return {"streams": farm.consoles.unbound_json()}


@router.post(
    "/api/v1/consoles/unbound/{stream_id}/bind",
    responses=ERRORS,
    tags=["consoles"],
    dependencies=OPERATOR,
)
async def consoles_bind(stream_id: str, body: ConsoleBind, farm: FarmDep) -> dict[str, Any]:
    """Bind a stream to a machine by hand (it stays there: its markers no longer move it). 409 if the
    machine's console is live on another stream, unless replace."""
    return farm.consoles.bind_by_hand(stream_id[:32], mac_of(body.mac), body.replace)


@router.delete("/api/v1/consoles/unbound/{stream_id}", responses=ERRORS, tags=["consoles"], dependencies=OPERATOR)
async def consoles_close_unbound(stream_id: str, farm: FarmDep) -> dict[str, Any]:
    """Drop a netconsole connection."""
    return farm.consoles.close_unbound(stream_id[:32])
