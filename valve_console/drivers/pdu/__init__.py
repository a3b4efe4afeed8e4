"""PDU drivers and their registry. Adding a PDU model is one file plus one line in ``DRIVERS``."""

from __future__ import annotations

from typing import Any, Callable

from .base import BatchFallback, DriverConfigError, DriverError, Outlet, OutletError, PDUDriver, PortState

DriverFactory = Callable[[dict[str, Any]], PDUDriver]


def _drivers() -> dict[str, DriverFactory]:
    from . import apc, cyberpower, dummy, eaton, raritan, servertech, shelly, snmp, tasmota, vpdu

    return {
        "dummy": dummy.DummyPDU.from_config,
        "vpdu": vpdu.VirtualPDU.from_config,
        "apc_masterswitch": apc.ApcMasterSwitchPDU.from_config,
        "apc_rpdu": apc.ApcRackPDU.from_config,
        "apc_rpdu2": apc.ApcRackPDU2.from_config,
        "cyberpower_pdu41004": cyberpower.CyberPower41004PDU.from_config,
        "cyberpower_pdu15swhviec12atnet": cyberpower.CyberPowerRmcard205PDU.from_config,
        "raritan_px2": raritan.RaritanPX2PDU.from_config,
        "eaton_epdu": eaton.EatonEPDU.from_config,
        "servertech_sentry3": servertech.Sentry3PDU.from_config,
        "snmp": snmp.GenericSnmpPDU.from_config,
        "tasmota": tasmota.TasmotaPDU.from_config,
        "shelly_gen1": shelly.ShellyGen1PDU.from_config,
        "shelly_gen2": shelly.ShellyGen2PDU.from_config,
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
    "BatchFallback",
    "DriverConfigError",
    "DriverError",
    "Outlet",
    "OutletError",
    "PDUDriver",
    "PortState",
    "create_driver",
    "driver_names",
]
