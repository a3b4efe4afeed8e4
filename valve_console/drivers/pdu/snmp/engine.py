"""pysnmp's engine: one per event loop, shared by the drivers using it, closed with the last of them."""

from __future__ import annotations

import asyncio
from typing import Any

_engines: dict[asyncio.AbstractEventLoop, Any] = {}
_users: dict[asyncio.AbstractEventLoop, set[int]] = {}
_shared_view: Any = None


def _engine(user: int) -> Any:
    """The running loop's SnmpEngine, created on first use; ``user`` is counted until released."""
    from pysnmp.hlapi.v3arch.asyncio import SnmpEngine

    global _shared_view
    loop = asyncio.get_running_loop()
    for old in [lp for lp in _engines if lp.is_closed()]:  # its dispatcher cannot be closed any more
        _engines.pop(old, None)
        _users.pop(old, None)
    engine = _engines.get(loop)
    if engine is None:
        engine = _engines[loop] = SnmpEngine()
        # Resolving numeric OIDs needs only a MIB view, but the first one costs ~300 ms (pysmi
        # builds its parser). Share it between engines so a new loop does not pay again.
        if _shared_view is None:
            _shared_view = engine.cache.get("mibViewController")
        elif "mibViewController" in engine.cache:
            engine.cache["mibViewController"] = _shared_view
    _users.setdefault(loop, set()).add(user)
    return engine


def _release(user: int) -> None:
    """Forget ``user``; close the current loop's engine when it was the last one."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    users = _users.get(loop)
    if users is None:
        return
    users.discard(user)
    if not users:
        engine = _engines.pop(loop, None)
        _users.pop(loop, None)
        if engine is not None:
            engine.close_dispatcher()


async def close_engines() -> None:
    """Close the running loop's SnmpEngine (call before the loop ends; the next request makes a new one)."""
    loop = asyncio.get_running_loop()
    engine = _engines.pop(loop, None)
    _users.pop(loop, None)
    if engine is not None:
        engine.close_dispatcher()
