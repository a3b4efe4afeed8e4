"""Power as the console shows it: watts and energy in human units, the farm's load, and a small recent-watts
buffer per outlet (the PDU grid's sparklines) fed from the ``outlet``/``pdu`` readings the model receives.

Plain data: no Textual. Every helper takes what the API may send (None, NaN, infinities) without raising.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass

from ..contract import Outlet, Pdu

RECENT_POINTS = 60
"""Readings kept per outlet for its sparkline (the backend rate-limits outlet events to a few seconds,
so this is the last few minutes)."""
RECENT_SECONDS = 600.0
"""Readings older than this (relative to the newest one) leave the buffer."""
MAX_OUTLETS = 4096
"""Outlets kept at most (a farm is far smaller; the bound keeps a misbehaving backend from growing us)."""
BOOT_MARKS = 32
"""ON changes kept per outlet (the machine detail's plot marks boots with them)."""


def finite(value: object) -> float | None:
    """``value`` as a finite float, or None (None, NaN, infinities, text that is no number)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _trim(number: float) -> str:
    """Three significant digits at most: 143, 14.3, 1.43."""
    size = abs(number)
    if size >= 99.95:
        return f"{number:.0f}"
    if size >= 9.995:
        return f"{number:.1f}"
    return f"{number:.2f}"


def _si(number: float, unit: str, prefixes: tuple[tuple[float, str], ...]) -> str:
    """``number`` in ``unit`` with the largest of ``prefixes`` (factor, prefix) it reaches, trimmed."""
    for limit, prefix in prefixes:
        if abs(number) >= limit * 0.9995:
            return f"{_trim(number / limit)} {prefix}{unit}"
    if number == 0:
        return f"0 {unit}"
    return f"{_trim(number)} {unit}"


KILO_MEGA = ((1e6, "M"), (1e3, "k"))


def format_watts(watts: object) -> str:
    """``143 W``, ``4.20 W``, ``1.25 kW``, ``3.10 MW``; '' when there is no (finite) reading."""
    number = finite(watts)
    return "" if number is None else _si(number, "W", KILO_MEGA)


def format_joules(joules: object) -> str:
    """Energy in SI: ``850 J``, ``12.3 kJ``, ``4.50 MJ``, ``1.20 GJ``; '' when unknown."""
    number = finite(joules)
    return "" if number is None else _si(number, "J", ((1e9, "G"), *KILO_MEGA))


def format_wh(joules: object) -> str:
    """The same energy as a meter reads it: ``0.41 Wh``, ``3.42 kWh``; '' when unknown."""
    number = finite(joules)
    return "" if number is None else _si(number / 3600.0, "Wh", KILO_MEGA)


def outlet_watts(outlet: Outlet | None) -> float | None:
    """The outlet's latest watts, or None (unmetered, no reading yet, or a reading without watts)."""
    if outlet is None or not outlet.metered or outlet.power is None:
        return None
    return finite(outlet.power.watts)


def pdu_watts(pdu: Pdu) -> float | None:
    """The PDU's load: its own total where it reports one, else the sum of its metered outlets; None
    when it meters nothing."""
    total = finite(pdu.total_watts)
    if total is not None:
        return total
    readings = [w for w in (outlet_watts(o) for o in pdu.ports.values()) if w is not None]
    return sum(readings) if readings else None


def farm_watts(pdus: dict[str, Pdu]) -> float | None:
    """The farm's load: the sum of every PDU's load; None when no PDU meters anything."""
    loads = [w for w in (pdu_watts(p) for p in pdus.values()) if w is not None]
    return sum(loads) if loads else None


@dataclass(frozen=True)
class Reading:
    at: float
    watts: float


class PowerHistory:
    """The recent watts of each outlet (bounded in points, age and outlets) and when each was switched ON."""

    def __init__(self, points: int = RECENT_POINTS, seconds: float = RECENT_SECONDS,
                 max_outlets: int = MAX_OUTLETS) -> None:
        self.points = max(1, points)
        self.seconds = seconds
        self.max_outlets = max_outlets
        self._recent: dict[tuple[str, str], deque[Reading]] = {}
        self._state: dict[tuple[str, str], str] = {}
        self._boots: dict[tuple[str, str], deque[float]] = {}

    def add(self, pdu: str, port: str, outlet: Outlet | None) -> bool:
        """Note ``outlet``'s state and reading; True when a new reading was kept."""
        if outlet is None:
            return False
        key = (pdu, str(port))
        self._note_state(key, outlet)
        watts = outlet_watts(outlet)
        at = finite(outlet.power.at) if outlet.power is not None else None
        if watts is None or at is None:
            return False
        recent = self._recent.get(key)
        if recent is None:
            if len(self._recent) >= self.max_outlets:
                self._recent.pop(next(iter(self._recent)))
            recent = self._recent[key] = deque(maxlen=self.points)
        if recent and at <= recent[-1].at:
            return False  # the same reading again (a pdu event repeats its outlets), or an older one
        recent.append(Reading(at, watts))
        while recent and recent[0].at < at - self.seconds:
            recent.popleft()
        return True

    def add_pdu(self, name: str, pdu: Pdu) -> None:
        for port, outlet in pdu.ports.items():
            self.add(name, port, outlet)

    def _note_state(self, key: tuple[str, str], outlet: Outlet) -> None:
        state = str(outlet.state or "").upper()
        before = self._state.get(key)
        if len(self._state) >= self.max_outlets and key not in self._state:
            self._state.pop(next(iter(self._state)))
        self._state[key] = state
        if state == "ON" and before is not None and before != "ON":
            at = finite(outlet.changed_at) or time.time()
            boots = self._boots.setdefault(key, deque(maxlen=BOOT_MARKS))
            boots.append(at)
            if len(self._boots) > self.max_outlets:
                self._boots.pop(next(iter(self._boots)))

    def forget_pdu(self, name: str) -> None:
        for key in [k for k in self._recent if k[0] == name]:
            del self._recent[key]
        for key in [k for k in self._state if k[0] == name]:
            del self._state[key]
        for key in [k for k in self._boots if k[0] == name]:
            del self._boots[key]

    def recent(self, pdu: str, port: str) -> list[Reading]:
        return list(self._recent.get((pdu, str(port)), ()))

    def recent_watts(self, pdu: str, port: str) -> list[float]:
        return [r.watts for r in self._recent.get((pdu, str(port)), ())]

    def boots(self, pdu: str, port: str, outlet: Outlet | None = None) -> list[float]:
        """When the outlet was switched ON (seen by this console), plus its last change if it is ON now."""
        seen = list(self._boots.get((pdu, str(port)), ()))
        if outlet is not None and str(outlet.state or "").upper() == "ON":
            at = finite(outlet.changed_at)
            if at is not None and at not in seen:
                seen.append(at)
        return sorted(seen)
