"""PDUs and their outlets."""

from __future__ import annotations

import time
from typing import Any, Optional

from fastapi import APIRouter, Query

from ...drivers.pdu import driver_names
from ..errors import BadRequest, Conflict, FarmError
from .deps import OPERATOR, FarmDep
from .models import ERRORS, OutletCommand, PduCreate
from ... import contract

router = APIRouter()


@router.post(
    "/api/v1/pdu/",
    status_code=201,
    responses=ERRORS,
    tags=["pdus"],
    dependencies=OPERATOR,
    response_model=contract.Pdu, response_model_exclude_unset=True,
)
async def create_pdu(body: PduCreate, farm: FarmDep) -> dict[str, Any]:
    driver = body.driver or body.pdu_model
    if not driver:
        raise BadRequest(f"missing field driver (one of: {', '.join(driver_names())})")
    if body.driver and body.pdu_model and body.driver != body.pdu_model:
        raise BadRequest("driver and pdu_model disagree: give one of them")
    return await farm.power.add_pdu(body.name, driver, body.config, [str(p) for p in body.reserved_ports])


router.add_api_route(
    "/api/v1/pdu",
    create_pdu,
    methods=["POST"],
    status_code=201,
    include_in_schema=False,
    dependencies=OPERATOR,
)


@router.get("/api/v1/pdus", tags=["pdus"], response_model=contract.Pdus, response_model_exclude_unset=True)
async def list_pdus(farm: FarmDep) -> dict[str, Any]:
    return {"pdus": farm.power.pdus_json()}


@router.get("/api/v1/pdu/drivers", tags=["pdus"], response_model=contract.Drivers, response_model_exclude_unset=True)
async def list_drivers() -> dict[str, Any]:
    return {"drivers": driver_names()}


@router.get(
    "/api/v1/pdu/{name}",
    responses=ERRORS,
    tags=["pdus"],
    response_model=contract.Pdu,
    response_model_exclude_unset=True,
)
async def get_pdu(name: str, farm: FarmDep) -> dict[str, Any]:
    return farm.power.pdu_json(name)


@router.delete(
    "/api/v1/pdu/{name}",
    responses=ERRORS,
    tags=["pdus"],
    dependencies=OPERATOR,
    response_model=contract.Removed, response_model_exclude_unset=True,
)
async def delete_pdu(name: str, farm: FarmDep) -> dict[str, Any]:
    await farm.power.remove_pdu(name)
    return {"removed": name}


@router.get(
    "/api/v1/pdu/{name}/port/{port_id}",
    responses=ERRORS,
    tags=["pdus"],
    response_model=contract.OutletOf,
    response_model_exclude_unset=True,
)
async def get_port(name: str, port_id: str, farm: FarmDep) -> dict[str, Any]:
    pdu = farm.power.pdu_json(name)
    if port_id not in pdu["ports"]:
        raise FarmError(f"PDU {name} has no outlet {port_id!r}", 404)
    return {"pdu": name, "port_id": port_id, **pdu["ports"][port_id]}


@router.post(
    "/api/v1/pdu/{name}/port/{port_id}/state",
    responses=ERRORS,
    tags=["pdus"],
    dependencies=OPERATOR,
    response_model=contract.OutletSwitched, response_model_exclude_unset=True,
)
async def set_port(name: str, port_id: str, cmd: OutletCommand, farm: FarmDep) -> dict[str, Any]:
    state = await farm.power.set_outlet(name, port_id, cmd.state, source="api")
    return {"pdu": name, "port_id": port_id, "state": state.value}


@router.get(
    "/api/v1/pdu/{name}/port/{port_id}/power",
    responses=ERRORS,
    tags=["pdus"],
    response_model=contract.PowerSeries,
    response_model_exclude_unset=True,
)
async def get_port_power(
    name: str,
    port_id: str,
    farm: FarmDep,
    since: Optional[float] = Query(
        default=None, ge=0, allow_inf_nan=False, description="Unix time in seconds (default: an hour ago)"),
) -> dict[str, Any]:
    """An outlet's power, ``[t, watts]`` oldest first since ``since`` (Unix time; default: an hour ago): the
    recent readings as sampled (memory), older ones one per minute (their average) from the stored history.
    404: unknown PDU or outlet; 400: a ``since`` that is not a time; 409: the outlet is not metered (a
    metering PDU not read yet answers no points). A ``since`` in the future has no points yet."""
    now = time.time()
    start = now - 3600.0 if since is None else min(since, now)
    power = farm.power
    pdu = power.pdu_json(name)  # 404 for an unknown PDU
    if port_id not in pdu["ports"]:
        raise FarmError(f"PDU {name} has no outlet {port_id!r}", 404)
    metered = power.is_metered(name, port_id)
    if metered is False:
        raise Conflict(f"outlet {port_id} of PDU {name} is not metered: no power to show")
    owner = farm.machines.machine_on(name, port_id)
    points = await farm.meter.series(name, port_id, start) if metered else []
    rt = power.pdus[name]
    boots = await power.switched_on(name, port_id, start)
    return {"pdu": name, "port_id": port_id, "machine": owner.mac_address if owner is not None else None,
            "points": [[t, w] for t, w in points], "interval": rt.sample_interval, "boots": boots}
