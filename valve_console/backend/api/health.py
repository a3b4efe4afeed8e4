"""The gateway itself: health of each service, the backend's log, the system journal, network
interfaces, Prometheus metrics."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import psutil
from fastapi import APIRouter, Query
from fastapi.responses import PlainTextResponse, Response

from ..metrics import CONTENT_TYPE, render
from .deps import SECRET_READ, FarmDep
from .models import ERRORS
from ... import contract

router = APIRouter()


@router.get("/api/v1/health", tags=["health"], response_model=contract.Health, response_model_exclude_unset=True)
async def health(farm: FarmDep) -> dict[str, Any]:
    return farm.health()


@router.get("/api/v1/log", tags=["health"], responses=ERRORS, dependencies=SECRET_READ)
async def backend_log(farm: FarmDep, lines: int = Query(default=500, ge=1, le=2000)) -> dict[str, Any]:
    return {"entries": farm.recent_log[-lines:]}


@router.get("/api/v1/journal", tags=["health"], responses=ERRORS, dependencies=SECRET_READ)
async def system_journal(farm: FarmDep, lines: int = Query(default=500, ge=1, le=2000)) -> dict[str, Any]:
    recent = list(farm.journal.recent) if farm.journal else []
    return {
        "entries": recent[-lines:],
        "state": farm.journal.state if farm.journal else "starting",
        "reason": farm.journal.reason if farm.journal else None,
    }


@router.get("/api/v1/gateway", tags=["health"])
async def gateway() -> dict[str, Any]:
    return {"interfaces": await asyncio.to_thread(network_interfaces)}


@router.get("/metrics", response_class=PlainTextResponse, tags=["health"])
async def metrics(farm: FarmDep) -> Response:
    return Response(await render(farm), media_type=CONTENT_TYPE)


def network_interfaces() -> list[dict[str, Any]]:
    stats = psutil.net_if_stats()
    result = []
    for name, addrs in sorted(psutil.net_if_addrs().items()):
        st = stats.get(name)
        result.append(
            {
                "name": name,
                "state": "up" if st and st.isup else "down",
                "speed": st.speed if st else None,
                "mac": next((a.address for a in addrs if a.family == psutil.AF_LINK), None),
                "addresses": [a.address for a in addrs if a.family in (socket.AF_INET, socket.AF_INET6)],
            }
        )
    return result
