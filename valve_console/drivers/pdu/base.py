"""The PDU driver interface.

A driver is small and stateless: it knows how to list a PDU's outlets, read one outlet's state
and ask for a new one, and (``get_many``/``set_many``) to do that for several outlets at once.
Everything an operator relies on (one command at a time, read-back, minimum off time, retries,
events) lives in ``valve_console.backend.power.PowerService``.

``BatchFallback`` gives a driver ``get_many``/``set_many`` that go outlet by outlet; a driver whose
protocol can carry several outlets in one request (SNMP var-bind lists, Shelly's and Tasmota's
status calls) overrides them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, TypeVar, cast, runtime_checkable

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


class OutletError(DriverError):
    """The PDU answered but refused the command for one outlet of a ``set_many``.

    ``port_id`` is that outlet; ``applied`` lists the outlets of the same call that were switched
    before it. The others were not switched (an SNMP SET is all or nothing) and may be sent again.
    """

    def __init__(self, port_id: str, message: str, applied: list[str] | tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.port_id = port_id
        self.applied = list(applied)


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

    async def get_many(self, port_ids: list[str]) -> dict[str, PortState]: ...

    async def set_many(self, states: dict[str, PortState]) -> None: ...

    async def close(self) -> None: ...


class BatchFallback:
    """``get_many``/``set_many`` done one outlet at a time, for protocols with one outlet per request.

    Mixed into a driver class that has ``get`` and ``set``."""

    async def get_many(self, port_ids: list[str]) -> dict[str, PortState]:
        """The state of each outlet, in the order asked; the first failure raises."""
        return {port_id: await cast(Any, self).get(port_id) for port_id in port_ids}

    async def set_many(self, states: dict[str, PortState]) -> None:
        """Switch each outlet in order. A failure on the first outlet raises as it is (the PDU may
        be down); a failure after one or more were switched raises OutletError naming them."""
        applied: list[str] = []
        for port_id, state in states.items():
            try:
                await cast(Any, self).set(port_id, state)
            except OutletError:
                raise
            except DriverError as exc:
                if not applied:
                    raise
                raise OutletError(port_id, str(exc), applied) from None
            applied.append(port_id)


async def get_many(driver: Any, port_ids: list[str]) -> dict[str, PortState]:
    """``driver.get_many`` if it has one, else one ``get`` per outlet (drivers written elsewhere)."""
    if hasattr(driver, "get_many"):
        return cast(dict[str, PortState], await driver.get_many(port_ids))
    return await BatchFallback.get_many(driver, port_ids)


async def set_many(driver: Any, states: dict[str, PortState]) -> None:
    """``driver.set_many`` if it has one, else one ``set`` per outlet (drivers written elsewhere)."""
    if hasattr(driver, "set_many"):
        await driver.set_many(states)
    else:
        await BatchFallback.set_many(driver, states)


_ConfigT = TypeVar("_ConfigT", bound=DriverConfig)


def parse_config(model: type[_ConfigT], config: dict[str, Any] | None, driver: str) -> _ConfigT:
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
