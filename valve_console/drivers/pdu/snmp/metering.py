"""Power metering over SNMP: which columns a PDU meters and how they scale (``Meter``, ``Metering``), and
``MeteredSnmpPDU.read_power``, which GETs them with the var-bind batching of ``get_many``.

A vendor table names, per OutletPower field (watts, amps, volts, energy_wh), the column read and the factor
to SI units, and per PowerReading total (watts, energy_wh) the OID. The outlet's row in a metering column is
its port index unless the table gives a column of outlet numbers (APC's metered outlets are rows of their own,
numbered in column .4): that column is walked, and the map kept for ``ROWS_TTL`` seconds. A column may take its
scale from a column of decimal digits at the same index (Raritan), read once.

A missing object reads "not metered" (None), never an error: a model without a meter answers an empty
``outlets`` and no total. Missing objects are remembered for ``ROWS_TTL`` seconds and not asked again (SNMPv1
refuses a whole GET for each one).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..base import TOTAL_LIMITS, OutletPower, PowerReading, checked_si, outlet_power
from .client import MAX_VARBINDS, _text
from .config import normalize_oid
from .driver import GenericSnmpConfig, GenericSnmpPDU, SnmpPDU, as_int

ROWS_TTL = 600.0  # seconds a walked map of outlet numbers to rows is used before it is walked again
MAX_DIGITS = 9


@dataclass(frozen=True)
class Meter:
    """One metered quantity. For an outlet, ``column`` is a column template: the OID read is
    ``column.<row>`` followed by ``suffix`` (e.g. Raritan's ".5" for activePower). For a total it is the
    whole OID (a template too). The value read is multiplied by ``scale``, and by 10^-digits when ``digits``
    names the column (same index and suffix) of its decimal digits. Digits and availability are read with
    the first reading and kept for ROWS_TTL seconds."""

    column: str
    scale: float = 1.0
    suffix: str = ""
    digits: str | None = None
    available: str | None = None  # column (same index and suffix) of a TruthValue: 2 = no reading now


@dataclass(frozen=True)
class Metering:
    outlets: Mapping[str, Meter] = field(default_factory=dict)  # OutletPower field -> meter
    totals: Mapping[str, Meter] = field(default_factory=dict)  # "watts"/"energy_wh" -> meter
    numbers: str | None = None  # column: each metering row's outlet number (walked); None: row = port index
    modules: str | None = None  # column: each metering row's unit in a chain (with ``numbers``)
    module: str = "1"  # the unit this driver addresses, as ``modules`` reads it (a template)


def raw_number(value: Any) -> Any:
    """A value as the agent sent it, for :func:`checked_si`: a number stays a number, an octet string is
    its text (a garbage string is then refused there, not here)."""
    if value is None or isinstance(value, (int, float, str)):
        return value
    if isinstance(value, bytes):
        return _text(value)
    if type(value).__name__ in ("OctetString", "DisplayString", "Opaque"):
        return _text(value)
    number = as_int(value)  # pysnmp's Integer32, Gauge32, Counter32 ...
    return number if number is not None else _text(value)


class MeteredSnmpPDU(SnmpPDU):
    """An SnmpPDU whose ``metering`` says which columns meter power (implements MeteredPDU)."""

    metering: Metering  # a class attribute of the vendor table (per instance for the generic driver)

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self._rows: dict[str, str] | None = None  # outlet number -> metering row (with Metering.numbers)
        self._rows_at = 0.0
        # Digits and availability OIDs -> value (None: no such row or unreadable), kept for ROWS_TTL seconds.
        self._facts: dict[str, int | None] = {}
        self._facts_at = 0.0
        self._absent: set[str] = set()  # value OIDs the agent has no object at (renewed with the facts)

    async def _row_map(self) -> dict[str, str]:
        """Outlet number -> row of the metering table (walked; cached for ROWS_TTL seconds)."""
        metering = self.metering
        assert metering.numbers is not None
        if self._rows is not None and time.monotonic() - self._rows_at < ROWS_TTL:
            return self._rows
        numbers = await self.client.walk(self.oid(metering.numbers), "metered outlet numbers")
        modules: dict[str, Any] = {}
        if metering.modules is not None:
            modules = dict(await self.client.walk(self.oid(metering.modules), "metered outlet units"))
        unit = as_int(self.oid(metering.module))
        rows: dict[str, str] = {}
        for row, value in numbers:
            number = as_int(value)
            if number is None or number < 1:
                continue
            if metering.modules is not None and as_int(modules.get(row)) != unit:
                continue  # a row of another unit in the chain
            rows.setdefault(str(number), row)
        self._rows, self._rows_at = rows, time.monotonic()
        return rows

    async def read_power(self, port_ids: list[str]) -> PowerReading:
        metering = self.metering
        indexes = [self._index(p) for p in port_ids]
        if time.monotonic() - self._facts_at > ROWS_TTL:
            self._facts, self._absent, self._facts_at = {}, set(), time.monotonic()
        rows: Mapping[str, str] | None = await self._row_map() if metering.numbers else None
        # What to read: per outlet and field the value's OID, and (Raritan) its digits' and availability's
        # OIDs until they are known.
        plan: list[tuple[str, str, str, Meter, str | None, str | None]] = []  # (port_id or "", field, oid, ...)
        for port_id, index in zip(port_ids, indexes, strict=True):
            row = index if rows is None else rows.get(index)
            if row is None:
                continue  # no metering row for this outlet
            for name, meter in metering.outlets.items():
                at = f".{row}{meter.suffix}"
                plan.append((port_id, name, f"{self.oid(meter.column)}{at}", meter,
                             f"{self.oid(meter.digits)}{at}" if meter.digits else None,
                             f"{self.oid(meter.available)}{at}" if meter.available else None))
        for name, meter in metering.totals.items():
            at = meter.suffix
            plan.append(("", name, f"{self.oid(meter.column)}{at}", meter,
                         f"{self.oid(meter.digits)}{at}" if meter.digits else None,
                         f"{self.oid(meter.available)}{at}" if meter.available else None))
        wanted: dict[str, None] = {}
        facts: dict[str, None] = {}  # digits and availability OIDs not known yet
        for _, _, oid, _, digits, available in plan:
            if oid in self._absent:
                continue  # not metered here: not asked again (SNMPv1 would pay a round trip for each)
            wanted[oid] = None
            for fact in (digits, available):
                if fact is not None and fact not in self._facts:
                    wanted[fact] = facts[fact] = None
        values = await self._read(list(wanted))
        self._absent.update(oid for oid in wanted if oid not in values and oid not in facts)
        for oid in facts:  # a missing one is kept as None: no such sensor, not asked again until renewed
            self._facts[oid] = as_int(values[oid]) if oid in values else None
        problems: list[str] = []
        raw: dict[str, dict[str, tuple[Any, float]]] = {}
        totals: dict[str, float | None] = {}
        for port_id, name, oid, meter, digits, available in plan:
            value = raw_number(values.get(oid))
            scale = meter.scale
            where = f"outlet {port_id}" if port_id else "PDU total"
            if available is not None and self._facts.get(available) not in (None, 1):
                value = None  # the PDU says this sensor has no reading now (TruthValue false)
            if digits is not None and value is not None:
                places = self._facts.get(digits)
                if places is None or not 0 <= places <= MAX_DIGITS:
                    problems.append(f"{where} {name}: no usable decimal digits at {digits} (read {places!r})")
                    self._facts.pop(digits, None)  # asked again next time
                    value = None
                else:
                    scale = scale / 10**places
            if port_id:
                raw.setdefault(port_id, {})[name] = (value, scale)
            else:
                totals[name] = checked_si(where + " " + name, value, scale, TOTAL_LIMITS[name], problems)
        outlets: dict[str, OutletPower] = {}
        for port_id in port_ids:
            if port_id in raw and port_id not in outlets:
                reading = outlet_power(f"outlet {port_id}", raw[port_id], problems)
                if reading is not None:
                    outlets[port_id] = reading
        return PowerReading(outlets, totals.get("watts"), totals.get("energy_wh"), tuple(problems))

    async def _read(self, oids: list[str]) -> dict[str, Any]:
        """GET ``oids``, MAX_VARBINDS per request; a missing object is left out."""
        found: dict[str, Any] = {}
        for start in range(0, len(oids), MAX_VARBINDS):
            chunk = oids[start:start + MAX_VARBINDS]
            values = await self.client.get_optional(chunk, "power readings")
            found.update((oid, value) for oid, value in zip(chunk, values, strict=True) if value is not None)
        return found


class MeteredGenericSnmpPDU(MeteredSnmpPDU, GenericSnmpPDU):
    """The ``snmp`` driver when its config names metering OIDs (``outlet_power``, ``pdu_power``)."""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        assert isinstance(config, GenericSnmpConfig)
        full = config.full
        self.metering = Metering(
            outlets={name: Meter(normalize_oid(full(m.oid)), m.scale) for name, m in config.outlet_power.items()},
            totals={name: Meter(normalize_oid(full(m.oid)), m.scale) for name, m in config.pdu_power.items()},
        )
