"""An in-memory PDU for tests and dry runs: outlets switch instantly and start ON, as in valve-infra.

With ``meter: true`` it also meters (:class:`MeteredDummyPDU`): an ON outlet draws ``meter_watts``, an OFF
one nothing, unless a test set an outlet's reading (``set_power``: a profile per outlet, or an exception to
raise); ``read_delay`` makes every read that slow (the sampler must never hold a switch up)."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

import asyncio

from .base import BatchFallback, DriverConfig, DriverError, Outlet, OutletPower, PortState, PowerReading, parse_config


class DummyConfig(DriverConfig):
    ports: list[str] | int = Field(default=8, description="outlet labels, or a number of outlets")
    initial_state: str = Field(default="ON", pattern="(?i)^(on|off)$")
    meter: bool = Field(default=False, description="meter power (read_power)")
    meter_watts: float = Field(default=42.0, ge=0, description="an ON outlet's draw (unless set_power)")


class DummyPDU(BatchFallback):
    name: ClassVar[str] = "dummy"

    def __init__(self, config: DummyConfig) -> None:
        labels = config.ports if isinstance(config.ports, list) else [f"port{i}" for i in range(config.ports)]
        if not 0 < len(labels) <= 1024:
            raise DriverError("a dummy PDU has between 1 and 1024 outlets")
        self._outlets = [Outlet(str(i), label) for i, label in enumerate(labels)]
        start = PortState.parse(config.initial_state)
        self._state = {o.port_id: start for o in self._outlets}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "DummyPDU":
        cfg = parse_config(DummyConfig, config, cls.name)
        if isinstance(cfg.ports, int) and not 0 < cfg.ports <= 1024:
            from .base import DriverConfigError

            raise DriverConfigError("invalid config for driver 'dummy': ports must be between 1 and 1024")
        return MeteredDummyPDU(cfg) if cfg.meter else cls(cfg)

    async def ports(self) -> list[Outlet]:
        return list(self._outlets)

    def _check(self, port_id: str) -> None:
        if port_id not in self._state:
            raise DriverError(f"dummy PDU has no outlet {port_id}")

    async def get(self, port_id: str) -> PortState:
        self._check(port_id)
        return self._state[port_id]

    async def set(self, port_id: str, state: PortState) -> None:
        self._check(port_id)
        self._state[port_id] = PortState.ON if state == PortState.REBOOT else state

    async def close(self) -> None:
        return None


class MeteredDummyPDU(DummyPDU):
    """The dummy PDU with a meter: the test hooks are ``set_power``, ``read_delay``, ``read_error`` and
    ``reads`` (reads started, and finished)."""

    def __init__(self, config: DummyConfig) -> None:
        super().__init__(config)
        self.meter_watts = config.meter_watts
        self.profile: dict[str, OutletPower | None] = {}  # None: that outlet has no meter
        self.total_watts: float | None = None  # None: the sum of the outlets' watts
        self.problems: tuple[str, ...] = ()
        self.read_delay = 0.0
        self.read_error: Exception | None = None
        self.reads_started = 0
        self.reads_done = 0

    def set_power(self, port_id: str, watts: float | None = None, *, energy_wh: float | None = None,
                  amps: float | None = None, volts: float | None = None, metered: bool = True) -> None:
        """The reading ``port_id`` gives from now on (``metered=False``: it has no meter)."""
        self._check(port_id)
        self.profile[port_id] = OutletPower(watts, amps, volts, energy_wh) if metered else None

    async def read_power(self, port_ids: list[str]) -> PowerReading:
        self.reads_started += 1
        if self.read_delay:
            await asyncio.sleep(self.read_delay)
        if self.read_error is not None:
            raise self.read_error
        outlets: dict[str, OutletPower] = {}
        for port_id in port_ids:
            self._check(port_id)
            if port_id in self.profile:
                reading = self.profile[port_id]
                if reading is not None:
                    outlets[port_id] = reading
            else:
                outlets[port_id] = OutletPower(watts=self.meter_watts if self._state[port_id] == PortState.ON else 0.0)
        total = self.total_watts
        if total is None:
            total = sum(o.watts for o in outlets.values() if o.watts is not None)
        self.reads_done += 1
        return PowerReading(outlets, total_watts=total, problems=self.problems)
