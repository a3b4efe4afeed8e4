"""The farm's effective settings and the few that may change at run time (settings_store.py)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body

from .deps import OPERATOR, SECRET_READ, FarmDep
from .models import ERRORS
from ... import contract

router = APIRouter()

CHANGES = Body(
    ...,
    description="{setting: value}; null puts a setting back to its start-up value (environment or default)",
    examples=[{"training_loops": 10, "training_qualify": 9}],
)


@router.get(
    "/api/v1/settings", tags=["settings"], responses=ERRORS, dependencies=SECRET_READ,
    response_model=contract.FarmSettings, response_model_exclude_unset=True,
)
async def get_settings(farm: FarmDep) -> dict[str, Any]:
    """Every effective setting: value (secrets masked), source, the variable that sets it, editable."""
    return farm.settings_store.describe()


@router.patch(
    "/api/v1/settings", tags=["settings"], responses=ERRORS, dependencies=OPERATOR,
    response_model=contract.FarmSettings, response_model_exclude_unset=True,
)
async def patch_settings(farm: FarmDep, changes: dict[str, Any] = CHANGES) -> dict[str, Any]:
    """Change run-time settings, all or nothing: applied at once and kept in <data>/settings.toml."""
    return await farm.settings_store.update(changes)
