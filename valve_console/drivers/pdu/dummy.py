"""An in-memory PDU for tests and dry runs: outlets switch instantly and start ON, as in valve-infra."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from .base import BatchFallback, DriverConfig, DriverError, Outlet, PortState, parse_config


class DummyConfig(DriverConfig):
    ports: list[str] | int = Field(default=8, description="outlet labels, or a number of outlets")
    initial_state: str = Field(default="ON", pattern="(?i)^(on|off)$")


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
        return cls(cfg)

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
