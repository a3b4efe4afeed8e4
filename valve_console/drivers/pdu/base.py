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


# ---------------------------------------------------------------------------------------- metering
# A reading above these is not believed (a meter answering garbage): the quantity is dropped, and said.
MAX_OUTLET_WATTS = 20_000.0
MAX_PDU_WATTS = 200_000.0
MAX_AMPS = 200.0
MAX_VOLTS = 1_000.0
MAX_ENERGY_WH = 1e10  # 10 GWh: a PDU inlet's lifetime counter is tens of MWh


@dataclass(frozen=True)
class OutletPower:
    """One outlet's meter reading, scaled to SI units; None for a quantity this meter does not offer (or
    that failed its check: then ``PowerReading.problems`` says why). Never an invented zero."""

    watts: float | None = None
    amps: float | None = None
    volts: float | None = None
    energy_wh: float | None = None  # the meter's cumulative counter as read: it may wrap or be reset


@dataclass(frozen=True)
class PowerReading:
    """What one ``read_power`` got: the metered outlets (an outlet absent here has no meter), the PDU's
    own total where it reports one, and what was refused, in words."""

    outlets: dict[str, OutletPower]
    total_watts: float | None = None
    total_energy_wh: float | None = None
    problems: tuple[str, ...] = ()


@runtime_checkable
class MeteredPDU(Protocol):
    """A driver whose PDU meters power implements this besides :class:`PDUDriver`. ``read_power`` reads the
    asked outlets (in as few requests as the protocol allows; the outlet states' batch where it can) and
    raises DriverError when the PDU does not answer. A driver that can only tell at run time whether the PDU
    meters (a model without metering) answers an empty ``outlets`` and ``total_watts=None``."""

    async def read_power(self, port_ids: list[str]) -> PowerReading: ...


def meters(driver: Any) -> bool:
    """Whether the driver can read power (it implements :class:`MeteredPDU`)."""
    return isinstance(driver, MeteredPDU)


def checked_value(name: str, value: Any, scale: float, limit: float, problems: list[str]) -> float | None:
    """``value`` (a number as the meter sent it) × ``scale``, or None with a line in ``problems`` when it is
    not a finite number, negative (vendors' "-1 = not available" is None without a problem) or above
    ``limit``."""
    import math

    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        problems.append(f"{name}: {str(value)[:40]!r} is not a number")
        return None
    if not math.isfinite(number):
        problems.append(f"{name}: {value!r} is not a finite number")
        return None
    if number == -1:
        return None
    if number < 0:
        problems.append(f"{name}: {number:g} is negative")
        return None
    scaled = number * scale
    if scaled > limit:
        problems.append(f"{name}: {scaled:g} is beyond any plausible reading (limit {limit:g})")
        return None
    return scaled


# The limit of each OutletPower field, and of PowerReading's totals (helpers for the drivers).
OUTLET_LIMITS = {"watts": MAX_OUTLET_WATTS, "amps": MAX_AMPS, "volts": MAX_VOLTS, "energy_wh": MAX_ENERGY_WH}
TOTAL_LIMITS = {"watts": MAX_PDU_WATTS, "energy_wh": MAX_ENERGY_WH}


def checked_si(name: str, value: Any, scale: float, limit: float, problems: list[str]) -> float | None:
    """:func:`checked_value` rounded to 12 significant digits, so that 12 tenths of an ampere read 1.2,
    not 1.2000000000000002; a boolean is not a number."""
    if isinstance(value, bool):  # JSON true/false where a number belongs
        problems.append(f"{name}: {value!r} is not a number")
        return None
    number = checked_value(name, value, scale, limit, problems)
    return None if number is None else float(f"{number:.12g}")


def outlet_power(where: str, raw: dict[str, tuple[Any, float]], problems: list[str]) -> OutletPower | None:
    """An OutletPower from ``raw`` (field -> (value as the meter sent it, scale to SI)), each field through
    :func:`checked_value` named "``where`` field"; None when no field is left (nothing metered, or all refused:
    ``problems`` says which)."""
    fields = {name: checked_si(f"{where} {name}", value, scale, OUTLET_LIMITS[name], problems)
              for name, (value, scale) in raw.items()}
    if all(v is None for v in fields.values()):
        return None
    return OutletPower(**fields)


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
