"""PDUs and their outlets."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from ...drivers.pdu import driver_names
from ..errors import BadRequest, FarmError
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
