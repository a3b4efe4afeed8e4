"""SnmpPDU: outlet control over an SNMP table (state and command columns), in batches; the generic SNMP PDU
whose OIDs and values the operator gives."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from ..base import BatchFallback, DriverConfig, DriverError, Outlet, OutletError, PortState, parse_config
from .client import MAX_VARBINDS, SnmpClient, SnmpStatusError, _text
from .config import ENTERPRISES, MAX_OUTLETS, SnmpConfig, normalize_oid

REBOOT_PAUSE = 5.0  # seconds off when a table has no reboot command of its own


def as_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        try:
            return int(_text(value))
        except ValueError:
            return None


class SnmpPDU(BatchFallback):
    """An SNMP PDU described by a table. Subclasses set the class attributes below (the table's own, ``labels`` to
    ``commands``, may be set per instance instead: GenericSnmpPDU reads them from its config).

    Column and OID templates may use ``{field}`` placeholders filled from the config (e.g. a unit).
    """

    name: ClassVar[str]
    model: ClassVar[str]  # for messages, e.g. "APC MasterSwitch (sPDU)"
    config_model: ClassVar[type[SnmpConfig]] = SnmpConfig
    labels: str | None = None  # column of outlet names
    count: str | None = None  # scalar: number of outlets (used when the names are missing)
    status: str  # column read for the state
    states: dict[int, PortState]  # status value -> state; other values read UNKNOWN
    commands: dict[PortState, tuple[str, int]]  # state -> (column, value) to write

    def __init__(self, config: SnmpConfig) -> None:
        self.config = config
        self.client = SnmpClient(config)
        self.hostname = self.client.where
        self._params = config.model_dump()
        # Filled on first use: a batch names the same outlets and columns cycle after cycle.
        self._oids: dict[str, str] = {}
        self._indexes: dict[str, str] = {}
        self._outlet_oids: dict[tuple[str, str], str] = {}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "SnmpPDU":
        cfg = parse_config(cls.config_model, config, cls.name)
        assert isinstance(cfg, SnmpConfig)
        return cls(cfg)

    def oid(self, template: str) -> str:
        oid = self._oids.get(template)
        if oid is None:
            oid = self._oids[template] = template.format(**self._params)
        return oid

    def _index(self, port_id: str) -> str:
        index = self._indexes.get(port_id) if type(port_id) is str else None
        if index is not None:
            return index
        text = str(port_id).strip()
        if not text.isdigit() or not 1 <= int(text) <= 1_000_000:
            raise DriverError(f"{self.model} PDU at {self.hostname} has no outlet {port_id!r}: outlets are 1..N")
        index = str(int(text))
        if type(port_id) is str:
            if len(self._indexes) >= 4 * MAX_OUTLETS:
                self._indexes.clear()
            self._indexes[port_id] = index
        return index

    def _outlet_oid(self, column: str, index: str) -> str:
        """The OID of one outlet in a column template (``index`` from :meth:`_index`)."""
        key = (column, index)
        oid = self._outlet_oids.get(key)
        if oid is None:
            if len(self._outlet_oids) >= 4 * MAX_OUTLETS:
                self._outlet_oids.clear()
            oid = self._outlet_oids[key] = f"{self.oid(column)}.{index}"
        return oid

    async def ports(self) -> list[Outlet]:
        outlets: list[Outlet] = []
        if self.labels:
            rows = await self.client.walk(self.oid(self.labels), "outlet names")
            outlets = [Outlet(suffix, _text(value)) for suffix, value in rows if suffix.isdigit()]
        if not outlets and self.count:
            (value,) = await self.client.get([self.oid(self.count)], "outlet count")
            number = as_int(value)
            if number is None or not 0 <= number <= MAX_OUTLETS:
                raise DriverError(f"SNMP agent {self.hostname} gave an odd outlet count {value!r}")
            outlets = [Outlet(str(i), "") for i in range(1, number + 1)]
        if not outlets:
            raise DriverError(
                f"SNMP agent {self.hostname} lists no outlets: is it a {self.model} PDU, "
                "and may this community or user read it?"
            )
        return outlets

    def decode(self, value: Any) -> PortState:
        if type(value) is int:  # what the built-in codec gives for an INTEGER
            return self.states.get(value, PortState.UNKNOWN)
        number = as_int(value)
        if number is None:
            raise DriverError(
                f"SNMP agent {self.hostname} answered {_text(value)!r} where an outlet state was expected: "
                f"is it a {self.model} PDU?"
            )
        return self.states.get(number, PortState.UNKNOWN)

    async def get(self, port_id: str) -> PortState:
        index = self._index(port_id)
        (value,) = await self.client.get([self._outlet_oid(self.status, index)], f"the state of outlet {index}")
        return self.decode(value)

    async def set(self, port_id: str, state: PortState) -> None:
        index = self._index(port_id)
        if state not in (PortState.ON, PortState.OFF, PortState.REBOOT):
            raise DriverError(f"cannot set outlet {index} to {state.value}: use ON, OFF or REBOOT")
        if state == PortState.REBOOT and PortState.REBOOT not in self.commands:
            await self.set(port_id, PortState.OFF)
            await asyncio.sleep(REBOOT_PAUSE)
            await self.set(port_id, PortState.ON)
            return
        column, value = self.commands[state]
        await self.client.set_int(self._outlet_oid(column, index), value, f"outlet {index} {state.value}")

    # Optional batch operations: one request for many outlets (PowerService may use them when present).
    async def get_many(self, port_ids: list[str]) -> dict[str, PortState]:
        """The states of several outlets, MAX_VARBINDS per GET."""
        indexes = [self._index(p) for p in port_ids]
        status = self.status
        states: dict[str, PortState] = {}
        for start in range(0, len(indexes), MAX_VARBINDS):
            chunk = indexes[start:start + MAX_VARBINDS]
            values = await self.client.get([self._outlet_oid(status, i) for i in chunk],
                                           f"the state of outlets {','.join(chunk)}")
            states.update(zip(chunk, map(self.decode, values), strict=True))
        return {p: states[i] for p, i in zip(port_ids, indexes, strict=True)}

    async def set_many(self, states: dict[str, PortState]) -> None:
        """Switch several outlets, MAX_VARBINDS per SET (a REBOOT without a device command goes alone).

        The agent applies each SET whole or not at all. When it blames one var-bind, OutletError
        names that outlet and the outlets of the SETs before (``applied``); the rest were not sent.
        """
        ports: list[str] = []
        writes: list[tuple[str, int]] = []  # (oid, value), one per port in ``ports``
        alone: list[tuple[str, PortState]] = []
        last: Any = None  # the state of the outlet before, and its command: a batch mostly asks one state
        command: tuple[str, int] | None = None
        for port_id, state in states.items():
            if state is not last:
                last = state
                command = self.commands.get(state)
                if command is None and state != PortState.REBOOT:
                    raise DriverError(f"cannot set outlet {port_id} to {state.value}: use ON, OFF or REBOOT")
            if command is None:  # a REBOOT without a device command
                alone.append((port_id, state))
                continue
            ports.append(port_id)
            writes.append((self._outlet_oid(command[0], self._index(port_id)), command[1]))
        applied: list[str] = []
        for start in range(0, len(writes), MAX_VARBINDS):
            chunk = writes[start:start + MAX_VARBINDS]
            chunk_ports = ports[start:start + MAX_VARBINDS]
            if len(chunk) == 1:
                port_id = chunk_ports[0]
                what = f"the write of {chunk[0][1]} for outlet {self._index(port_id)} {states[port_id].value}"
            else:
                what = f"the write for {len(chunk)} outlets"
            try:
                await self.client.set_ints(chunk, what)
            except SnmpStatusError as exc:
                if exc.varbind is None or exc.varbind >= len(chunk):
                    raise
                raise OutletError(chunk_ports[exc.varbind], str(exc), applied) from None
            applied += chunk_ports
        for port_id, state in alone:
            await self.set(port_id, state)

    async def close(self) -> None:
        self.client.close()


def same_column(column: str, on: int, off: int, reboot: int | None = None) -> dict[PortState, tuple[str, int]]:
    """Commands that all write one control column."""
    table = {PortState.ON: (column, on), PortState.OFF: (column, off)}
    if reboot is not None:
        table[PortState.REBOOT] = (column, reboot)
    return table


STATE_NAMES = {"on": PortState.ON, "off": PortState.OFF, "reboot": PortState.REBOOT, "unknown": PortState.UNKNOWN}


class MeterConfig(DriverConfig):
    oid: str = Field(description="OID: for an outlet the column (the outlet index is appended), for a total the object")
    scale: float = Field(default=1.0, gt=0, description="factor to W, A, V or Wh (e.g. 0.1 for tenths of an ampere)")

    @field_validator("oid")
    @classmethod
    def _oid(cls, value: str) -> str:
        return normalize_oid(value)


class GenericSnmpConfig(SnmpConfig):
    outlet_labels: str = Field(description="OID of the column of outlet names (walked)")
    outlet_status: str = Field(description="OID of the column read for an outlet's state")
    outlet_ctrl: str | None = Field(default=None, description="OID of the column written (default outlet_status)")
    outlet_count: str | None = Field(default=None, description="OID of the outlet count, if names are missing")
    system_id: str | None = Field(default=None, description="if set, the OIDs are relative to 1.3.6.1.4.1.<id>")
    state_mapping: dict[str, int] = Field(description="values written: {on, off[, reboot]}")
    inverse_state_mapping: dict[str, str] | None = Field(
        default=None, description="status value -> on|off|reboot|unknown (default: state_mapping reversed)"
    )
    outlet_power: dict[Literal["watts", "amps", "volts", "energy_wh"], MeterConfig] = Field(
        default_factory=dict, description="metered columns per outlet: {watts|amps|volts|energy_wh: {oid, scale}}"
    )
    pdu_power: dict[Literal["watts", "energy_wh"], MeterConfig] = Field(
        default_factory=dict, description="the PDU's own totals: {watts|energy_wh: {oid, scale}}"
    )

    @field_validator("outlet_labels", "outlet_status", "outlet_ctrl", "outlet_count", "system_id")
    @classmethod
    def _oid(cls, value: str | None) -> str | None:
        return None if value is None else normalize_oid(value)

    @field_validator("state_mapping", mode="before")
    @classmethod
    def _mapping(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        out: dict[str, Any] = {}
        for key, number in value.items():
            name = str(key).strip().lower()
            if name not in ("on", "off", "reboot"):
                raise ValueError(f"unknown state {key!r}: the keys are on, off and reboot")
            if isinstance(number, bool) or as_int(number) is None:
                raise ValueError(f"the value for {key!r} must be an integer, not {number!r}")
            out[name] = int(number)
        missing = {"on", "off"} - set(out)
        if missing:
            raise ValueError(f"needs {' and '.join(sorted(missing))}")
        if out["on"] == out["off"]:
            raise ValueError("on and off must be different values")
        return out

    @field_validator("inverse_state_mapping", mode="before")
    @classmethod
    def _inverse(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        out: dict[str, str] = {}
        for key, state in value.items():
            if isinstance(key, bool) or as_int(key) is None:
                raise ValueError(f"the keys are status values (integers), not {key!r}")
            name = str(state).strip().lower()
            if name not in STATE_NAMES:
                raise ValueError(f"{state!r} is not on, off, reboot or unknown")
            out[str(int(key))] = name
        if "on" not in out.values() or "off" not in out.values():
            raise ValueError("needs at least one value that reads on and one that reads off")
        return out

    def full(self, oid: str | None) -> str | None:
        if oid is None or self.system_id is None:
            return oid
        return f"{ENTERPRISES}.{self.system_id}.{oid}"


class GenericSnmpPDU(SnmpPDU):
    """Any SNMP PDU, described entirely by its config (valve-infra's ``snmp`` key, done right)."""

    name: ClassVar[str] = "snmp"
    model: ClassVar[str] = "configured SNMP"
    config_model: ClassVar[type[SnmpConfig]] = GenericSnmpConfig

    def __init__(self, config: SnmpConfig) -> None:
        assert isinstance(config, GenericSnmpConfig)
        super().__init__(config)
        self.labels = config.full(config.outlet_labels)
        self.count = config.full(config.outlet_count)
        self.status = config.full(config.outlet_status) or ""
        ctrl = config.full(config.outlet_ctrl) or self.status
        self.commands = {STATE_NAMES[k]: (ctrl, v) for k, v in config.state_mapping.items()}
        if config.inverse_state_mapping is not None:
            self.states = {int(k): STATE_NAMES[v] for k, v in config.inverse_state_mapping.items()}
        else:
            self.states = {v: STATE_NAMES[k] for k, v in config.state_mapping.items()}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "SnmpPDU":
        """The metered variant (MeteredPDU) when the config names metering OIDs."""
        cfg = parse_config(cls.config_model, config, cls.name)
        assert isinstance(cfg, GenericSnmpConfig)
        if cfg.outlet_power or cfg.pdu_power:
            from .metering import MeteredGenericSnmpPDU

            return MeteredGenericSnmpPDU(cfg)
        return cls(cfg)

    def oid(self, template: str) -> str:
        return template  # configured OIDs are literal
