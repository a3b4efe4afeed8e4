"""The PDU driver interface.

A driver is small and stateless: it knows how to list a PDU's outlets, read one outlet's state
and ask for a new one. Everything an operator relies on (one command at a time, read-back,
minimum off time, retries, events) lives in ``valve_console.backend.power.PowerService``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, ValidationError


class PortState(enum.Enum):
    UNKNOWN = "UNKNOWN"
    OFF = "OFF"
    ON = "ON"
    REBOOT = "REBOOT"

    @classmethod
    def parse(cls, value: str) -> "PortState":
        try:
            return cls[str(value).strip().upper()]
        except KeyError:
            raise ValueError(f"unknown outlet state {value!r}: use on, off or reboot") from None


@dataclass(frozen=True)
class Outlet:
    """One outlet as the PDU reports it. ``port_id`` is a string, as in valve-infra's API."""

    port_id: str
    label: str = ""


class DriverError(Exception):
    """The PDU could not be reached or refused a command. The message is for the operator."""


class DriverConfigError(ValueError):
    """The configuration given for a driver is not valid. The message names the bad key."""


class DriverConfig(BaseModel):
    """Base of each driver's configuration model: unknown keys are refused."""

    model_config = ConfigDict(extra="forbid")


@runtime_checkable
class PDUDriver(Protocol):
    name: ClassVar[str]

    async def ports(self) -> list[Outlet]: ...

    async def get(self, port_id: str) -> PortState: ...

    async def set(self, port_id: str, state: PortState) -> None: ...

    async def close(self) -> None: ...


def parse_config(model: type[DriverConfig], config: dict[str, Any] | None, driver: str) -> DriverConfig:
    """Validate ``config`` against ``model`` and turn pydantic's report into one readable line."""
    try:
        return model.model_validate(config or {})
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "config"
            if err["type"] == "extra_forbidden":
                problems.append(f"unknown key {where!r}")
            elif err["type"] == "missing":
                problems.append(f"missing key {where!r}")
            else:
                problems.append(f"{where}: {err['msg']}")
        raise DriverConfigError(f"invalid config for driver {driver!r}: " + "; ".join(problems)) from None
