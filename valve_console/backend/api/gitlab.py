"""GitLab instances and their runners (gitlab.py's RunnerService)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from ..gitlab import GATEWAY, GitlabInstanceCreate, GitlabInstanceUpdate
from .deps import OPERATOR, FarmDep, mac_of
from .models import ERRORS
from ... import contract

router = APIRouter()


@router.get("/api/v1/gitlab", tags=["gitlab"], response_model=contract.Gitlab, response_model_exclude_unset=True)
async def list_gitlab(farm: FarmDep) -> dict[str, Any]:
    """GitLab instances (tokens masked) with their state (ok, unreachable: reason, last sync) and runners."""
    return farm.gitlab.list_json()


@router.post(
    "/api/v1/gitlab",
    status_code=201,
    responses=ERRORS,
    tags=["gitlab"],
    dependencies=OPERATOR,
    response_model=contract.GitlabInstance, response_model_exclude_unset=True,
)
async def add_gitlab(body: GitlabInstanceCreate, farm: FarmDep) -> dict[str, Any]:
    return await farm.gitlab.add_instance(body)


@router.get(
    "/api/v1/gitlab/{name}",
    responses=ERRORS,
    tags=["gitlab"],
    response_model=contract.GitlabInstance,
    response_model_exclude_unset=True,
)
async def get_gitlab(name: str, farm: FarmDep) -> dict[str, Any]:
    return farm.gitlab.instance_json(name)


@router.patch(
    "/api/v1/gitlab/{name}",
    responses=ERRORS,
    tags=["gitlab"],
    dependencies=OPERATOR,
    response_model=contract.GitlabInstance, response_model_exclude_unset=True,
)
async def patch_gitlab(name: str, body: GitlabInstanceUpdate, farm: FarmDep) -> dict[str, Any]:
    return await farm.gitlab.update_instance(name, body)


@router.delete(
    "/api/v1/gitlab/{name}",
    responses=ERRORS,
    tags=["gitlab"],
    dependencies=OPERATOR,
    response_model=contract.GitlabRemoved, response_model_exclude_unset=True,
)
async def delete_gitlab(name: str, farm: FarmDep) -> dict[str, Any]:
    """Remove an instance; its runners are deleted on GitLab (once, best effort: the ids left are listed)."""
    return await farm.gitlab.remove_instance(name)


@router.post(
    "/api/v1/gitlab/{name}/sync",
    responses=ERRORS,
    tags=["gitlab"],
    dependencies=OPERATOR,
    response_model=contract.GitlabInstance, response_model_exclude_unset=True,
)
async def sync_gitlab(name: str, farm: FarmDep) -> dict[str, Any]:
    """A full sync now (create, update, verify, clean strays); answers the instance's state after it."""
    return await farm.gitlab.sync(name, full=True)


@router.post(
    "/api/v1/gitlab/{name}/runners/{mac}/renew",
    responses=ERRORS,
    tags=["gitlab"],
    dependencies=OPERATOR,
    response_model=contract.GitlabRunner, response_model_exclude_unset=True,
)
async def renew_gitlab_runner(name: str, mac: str, farm: FarmDep) -> dict[str, Any]:
    """Renew a runner's token now (``mac``: the machine's, or ``gateway``): the old runner is deleted on GitLab,
    a new one created with the same description and tags; answers the new runner."""
    return await farm.gitlab.renew(name, GATEWAY if mac == GATEWAY else mac_of(mac))
