"""PDU drivers and their registry. Adding a PDU model is one file plus one line in ``DRIVERS``."""

from __future__ import annotations

from typing import Any, Callable

from .base import DriverConfigError, DriverError, Outlet, PDUDriver, PortState

DriverFactory = Callable[[dict[str, Any]], PDUDriver]


def _drivers() -> dict[str, DriverFactory]:
    from . import dummy, vpdu

    return {
        "dummy": dummy.DummyPDU.from_config,
        "vpdu": vpdu.VirtualPDU.from_config,
    }


def driver_names() -> list[str]:
    return sorted(_drivers())


def create_driver(driver: str, config: dict[str, Any] | None) -> PDUDriver:
    """Build a driver from its registry key and config; a bad key or config raises DriverConfigError."""
    factories = _drivers()
    if driver not in factories:
        raise DriverConfigError(f"unknown PDU driver {driver!r}; known drivers: {', '.join(sorted(factories))}")
    if config is not None and not isinstance(config, dict):
        raise DriverConfigError("config must be a JSON object")
    return factories[driver](config or {})


__all__ = [
    "DriverConfigError",
    "DriverError",
    "Outlet",
    "PDUDriver",
    "PortState",
    "create_driver",
    "driver_names",
]
