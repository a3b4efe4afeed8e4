"""Machines: DUT registration (open, rate-limited), held registrations, the operator's changes, retire and
activate, discovery of machines (a free outlet powered for the next registration), training (Sgt. Hartman)."""

from __future__ import annotations

from typing import Any, Literal, Optional

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from ..registration import MachineUpdate, Registration
from .deps import OPERATOR, FarmDep, registration_rate
from .models import ERRORS, DiscoverRequest, ErrorBody, FindOutlets
from .submit import wants_rich_answer
from ... import contract

router = APIRouter()

REGISTRATION_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {"description": "held for the operator: the machine as it is (nothing applied) and a message why"},
    400: {"model": ErrorBody},
    403: {"model": ErrorBody, "description": "a new machine registering from another address than it reports"},
    409: {"model": ErrorBody, "description": "the IP address is pinned to another machine"},
    429: {"model": ErrorBody, "description": "too many registrations from this source address"},
}


@router.post(
    "/api/v1/machine/",
    responses=REGISTRATION_RESPONSES,
    tags=["machines"],
    summary="Register a DUT (open, rate-limited per source address)",
    response_model=contract.Machine, response_model_exclude_unset=True,
)
async def register(reg: Registration, farm: FarmDep, source: Optional[str] = Depends(registration_rate)) -> Any:
    """valve-infra's registration. A known machine re-registering from another address than its own, or
    changing its identity while ready for service, is held for the operator (202, nothing applied); an IP
    pinned to another machine is refused (409); a new machine registers from the address it reports."""
    done = await farm.machines.register(reg, source)
    if done.held:
        return JSONResponse({**farm.view.json(done.machine), "message": done.held}, status_code=202)
    return farm.view.json(done.machine)


router.add_api_route(
    "/api/v1/machine/",
    register,
    methods=["PUT"],
    responses=REGISTRATION_RESPONSES,
    tags=["machines"],
    summary="Register a DUT (open; same as POST)",
)
router.add_api_route("/api/v1/machine", register, methods=["POST", "PUT"], include_in_schema=False)


@router.get("/api/v1/registrations/held", tags=["machines"])
async def held_registrations(farm: FarmDep) -> dict[str, Any]:
    """Registrations held for the operator: per MAC the changes asked, the source, why, and the current values."""
    return {"held": farm.machines.held_json()}


@router.post(
    "/api/v1/machine/{mac}/registration/{decision}",
    responses=ERRORS,
    tags=["machines"],
    dependencies=OPERATOR,
    summary="Approve or reject a machine's held registration",
)
async def decide_registration(mac: str, decision: Literal["approve", "reject"], farm: FarmDep) -> dict[str, Any]:
    """approve: apply the held changes (the IP must still be free); reject: drop them. Answers the machine."""
    if decision == "approve":
        return farm.view.json(await farm.machines.approve_registration(mac))
    return farm.view.json(await farm.machines.reject_registration(mac))


# ---------------------------------------------------------------------------------------- discovery
@router.post(
    "/api/v1/machine/discover",
    responses={200: {"content": {"text/plain": {}, "application/json": {}}}, **ERRORS},
    tags=["discovery"],
    dependencies=OPERATOR,
)
async def discover(request: Request, body: DiscoverRequest, farm: FarmDep) -> Response:
    """Power a free outlet on; the next machine that registers without an outlet gets it.

    Answers valve-infra's text; our clients (header ``X-Valve-Console-Client``) get JSON."""
    answer = await farm.discovery.start(body.pdu, body.port_id, body.timeout)
    if wants_rich_answer(request):
        return JSONResponse(answer)
    return PlainTextResponse(answer["message"] + "\n")


@router.get("/api/v1/machine/discover", tags=["discovery"])
async def discovery_status(request: Request, farm: FarmDep) -> dict[str, Any]:
    """valve-infra's ``discover_data`` (``{}`` when none runs); our clients get the queue too."""
    if wants_rich_answer(request):
        return farm.discovery.status()
    return farm.discovery.valve_infra_status()


@router.delete("/api/v1/machine/discover", tags=["discovery"], dependencies=OPERATOR)
async def discovery_cancel(request: Request, farm: FarmDep) -> dict[str, Any]:
    status = await farm.discovery.cancel()
    return status if wants_rich_answer(request) else {}


@router.post("/api/v1/pdu/{name}/discover", responses=ERRORS, tags=["discovery"], dependencies=OPERATOR)
async def find_outlets(name: str, farm: FarmDep, body: Optional[FindOutlets] = None) -> dict[str, Any]:
    """Discover every free outlet of a PDU, one after another."""
    return await farm.discovery.find_outlets(name, body.timeout if body else None)


# ---------------------------------------------------------------------------------------- machines
@router.get("/api/v1/machines", tags=["machines"], response_model=contract.Machines, response_model_exclude_unset=True)
async def list_machines(farm: FarmDep) -> dict[str, Any]:
    return {"machines": farm.view.machines()}


@router.get(
    "/api/v1/machine/{mac}/",
    responses=ERRORS,
    tags=["machines"],
    response_model=contract.Machine,
    response_model_exclude_unset=True,
)
async def get_machine(mac: str, farm: FarmDep) -> dict[str, Any]:
    return farm.view.machine(mac)


router.add_api_route("/api/v1/machine/{mac}", get_machine, methods=["GET"], include_in_schema=False)


@router.patch(
    "/api/v1/machine/{mac}/",
    responses=ERRORS,
    tags=["machines"],
    dependencies=OPERATOR,
    response_model=contract.Machine, response_model_exclude_unset=True,
)
async def patch_machine(mac: str, patch: MachineUpdate, farm: FarmDep) -> dict[str, Any]:
    return farm.view.json(await farm.machines.update(mac, patch))


router.add_api_route(
    "/api/v1/machine/{mac}",
    patch_machine,
    methods=["PATCH"],
    include_in_schema=False,
    dependencies=OPERATOR,
)


@router.delete(
    "/api/v1/machine/{mac}/",
    responses=ERRORS,
    tags=["machines"],
    dependencies=OPERATOR,
    response_model=contract.Removed, response_model_exclude_unset=True,
)
async def delete_machine(mac: str, farm: FarmDep) -> dict[str, Any]:
    return await farm.machines.remove(mac, busy=farm.view.activity)


router.add_api_route(
    "/api/v1/machine/{mac}",
    delete_machine,
    methods=["DELETE"],
    include_in_schema=False,
    dependencies=OPERATOR,
)


@router.post(
    "/api/v1/machine/{mac}/retire",
    responses=ERRORS,
    tags=["machines"],
    dependencies=OPERATOR,
    response_class=PlainTextResponse,
)
async def retire(mac: str, farm: FarmDep) -> str:
    return await farm.machines.set_retired(mac, True) + "\n"


@router.post(
    "/api/v1/machine/{mac}/activate",
    responses=ERRORS,
    tags=["machines"],
    dependencies=OPERATOR,
    response_class=PlainTextResponse,
)
async def activate(mac: str, farm: FarmDep) -> str:
    return await farm.machines.set_retired(mac, False) + "\n"


# ---------------------------------------------------------------------------------------- Sgt. Hartman (training.py)
@router.post(
    "/api/v1/machine/{mac}/training/{action}",
    responses=ERRORS,
    tags=["machines"],
    dependencies=OPERATOR,
    summary="Start, stop or skip a machine's pre-service training",
)
async def training_action(mac: str, action: Literal["start", "stop", "skip"], farm: FarmDep) -> dict[str, Any]:
    """start: (re)train now; stop: no training until started; skip: ready for service without loops."""
    service = farm.training
    if action == "start":
        return farm.view.json(await service.start_training(mac))
    if action == "stop":
        return farm.view.json(await service.stop_training(mac))
    return farm.view.json(await service.skip_training(mac))
