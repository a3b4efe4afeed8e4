"""PowerMeter: what the PDUs' meters said, kept and judged (issue 18).

``PowerService`` reads each metered PDU (its sampler, see power.py) and hands every ``PowerReading`` to
:meth:`PowerMeter.take`. The meter keeps, per outlet:

* the latest reading (the outlet's and PDU's JSON) and a bounded recent series (``power_recent_seconds``
  at the sampling rate: a deque with maxlen);
* a downsampled history: one ``PowerHistory`` row per outlet per minute (avg/min/max W, energy), written
  in batches by the store thread (a writer task every ``FLUSH_EVERY`` s and at stop), pruned after
  ``power_history_days``;
* a cumulative energy in joules since the start (``/metrics`` counter; a job's energy is the difference
  between its end and its start): from the meter's own counter where it has one and the step is
  plausible, else W x dt; a counter that goes down (wrap, reset) or jumps beyond what ``MAX_OUTLET_WATTS``
  x dt allows is not believed for that step (integrated instead) and said once;
* the machine's power flag: ``no_draw`` (ON, below ``power_no_draw_watts`` for ``power_no_draw_seconds``)
  or ``silent`` (steady power, console silent for ``power_silent_seconds``); set and cleared here, told
  through ``changed(mac, "updated")`` (a ``machine`` event) and to training.

Nothing here talks to a PDU or to FastAPI; the loop never waits for the database (writes go through the
store thread).
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from sqlalchemy import Table, delete, insert, select

from ..drivers.pdu.base import MAX_OUTLET_WATTS, MAX_PDU_WATTS, OutletPower, PortState, PowerReading
from .models import PowerHistory
from .store import Store

log = logging.getLogger(__name__)

PERIOD = 60.0  # seconds per stored history row
FLUSH_EVERY = 30.0  # seconds between writes of finished periods
PRUNE_EVERY = 3600.0  # seconds between prunings of the history
MAX_GAP = 60.0  # seconds of W x dt at most between two readings (a longer gap is not integrated over)
_HISTORY: Table = PowerHistory.__table__  # type: ignore[attr-defined]
_HistoryRow = dict[str, Any]


@dataclass
class _Period:
    start: float
    total_w: float = 0.0
    samples: int = 0
    min_w: float = math.inf
    max_w: float = 0.0
    energy_j: float = 0.0

    def row(self, pdu: str, port_id: str) -> _HistoryRow:
        avg = self.total_w / self.samples if self.samples else 0.0
        return {"pdu": pdu, "port_id": port_id, "at": self.start, "avg_w": avg,
                "min_w": self.min_w if self.samples else 0.0, "max_w": self.max_w, "energy_j": self.energy_j,
                "samples": self.samples}


@dataclass
class OutletMeter:
    latest: Optional[OutletPower] = None
    at: Optional[float] = None
    series: deque[tuple[float, float]] = field(default_factory=deque)
    energy_j: float = 0.0  # since the start (monotonic)
    counter_wh: Optional[float] = None  # the meter's counter at the last reading
    last_watts: Optional[float] = None
    last_t: Optional[float] = None
    period: Optional[_Period] = None
    last_event: float = -math.inf
    low_since: Optional[float] = None
    steady_since: Optional[float] = None


@dataclass
class PduMeter:
    metered: Optional[bool] = None  # None: not read yet
    total_watts: Optional[float] = None
    at: Optional[float] = None
    interval: float = 1.0
    last_event: float = -math.inf
    reads: int = 0
    failures: int = 0
    preempted: int = 0  # reads given up for a switch
    skipped: int = 0  # samples not taken: switches were waiting


class PowerMeter:
    def __init__(
        self,
        store: Store,
        *,
        recent_seconds: float = 3600.0,
        event_interval: float = 5.0,
        history_days: float = 7.0,
        no_draw_watts: float = 2.0,
        no_draw_seconds: float = 30.0,
        silent_seconds: float = 300.0,
        machine_at: Callable[[str, str], Optional[str]] = lambda pdu, port: None,
        console_activity: Callable[[str], Optional[float]] = lambda mac: None,
        changed: Callable[[str, str], None] = lambda mac, action: None,
        training_note: Callable[[str, dict[str, Any]], None] = lambda mac, flag: None,
    ) -> None:
        self.store = store
        self.recent_seconds = recent_seconds
        self.event_interval = event_interval
        self.history_days = history_days
        self.no_draw_watts = no_draw_watts
        self.no_draw_seconds = no_draw_seconds
        self.silent_seconds = silent_seconds
        self.machine_at = machine_at
        self.console_activity = console_activity
        self.changed = changed
        self.training_note = training_note
        self.outlets: dict[tuple[str, str], OutletMeter] = {}
        self.pdus: dict[str, PduMeter] = {}
        self.flags: dict[str, dict[str, Any]] = {}  # mac -> {kind, reason, since}
        self.problems: Counter[tuple[str, str]] = Counter()  # (pdu, kind) -> count
        self._rows: list[_HistoryRow] = []
        self._task: Optional[asyncio.Task[None]] = None
        self._last_prune = -math.inf

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        self._task = asyncio.create_task(self._writer(), name="power-history-writer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for (pdu, port), meter in self.outlets.items():  # the minute in progress is kept too
            if meter.period is not None and meter.period.samples:
                self._rows.append(meter.period.row(pdu, port))
            meter.period = None
        await self.flush()

    async def _writer(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_EVERY)
            self._close_periods(time.time())
            await self.flush()
            if time.time() - self._last_prune >= PRUNE_EVERY:
                await self.prune()

    async def flush(self) -> None:
        """Write the finished periods (one transaction, in the store thread)."""
        rows, self._rows = self._rows, []
        if not rows:
            return
        try:
            await self.store.run_raw(self._insert, rows, write=True)
        except Exception as exc:  # noqa: BLE001 - the history is best effort; the storage's health says why
            log.error("power history not written (%d rows): %s", len(rows), getattr(exc, "message", exc))

    def _insert(self, rows: list[_HistoryRow]) -> None:
        engine = self.store.engine
        assert engine is not None, "store not open"
        stmt = insert(_HISTORY)
        if engine.dialect.name == "sqlite":
            stmt = stmt.prefix_with("OR REPLACE")  # the same minute again (a restart within it): the last wins
        with engine.begin() as conn:
            conn.execute(stmt, rows)

    async def prune(self, now: Optional[float] = None) -> int:
        """Delete history older than ``history_days``; the rows deleted."""
        cutoff = (now if now is not None else time.time()) - self.history_days * 86400
        self._last_prune = time.time()

        def run() -> int:
            engine = self.store.engine
            assert engine is not None, "store not open"
            with engine.begin() as conn:
                return int(conn.execute(delete(_HISTORY).where(_HISTORY.c.at < cutoff)).rowcount or 0)

        try:
            return await self.store.run_raw(run, write=True)
        except Exception as exc:  # noqa: BLE001 - tried again at the next pruning
            log.error("power history not pruned: %s", getattr(exc, "message", exc))
            return 0

    def _close_periods(self, now: float) -> None:
        """Periods that ended (their outlet no longer read, or not since) go to the writer."""
        for (pdu, port), meter in self.outlets.items():
            period = meter.period
            if period is not None and now >= period.start + PERIOD:
                if period.samples:
                    self._rows.append(period.row(pdu, port))
                meter.period = None

    # ---------------------------------------------------------------- problems
    def problem(self, pdu: str, text: str) -> None:
        """A refused reading or a failed read: counted; logged once per kind (numbers aside) and PDU."""
        kind = re.sub(r"-?\d+(\.\d+)?(e[-+]?\d+)?", "#", text)[:120]
        self.problems[(pdu, kind)] += 1
        if self.problems[(pdu, kind)] == 1:
            log.warning("PDU %s power: %s (said once; counted in /metrics)", pdu, text)

    def read_failed(self, pdu: str, exc: BaseException) -> None:
        self.pdu(pdu).failures += 1
        words = str(exc) or type(exc).__name__
        if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
            words = "the power read timed out"
        self.problem(pdu, f"read failed: {words}")

    def problem_counts(self) -> dict[str, int]:
        counts: Counter[str] = Counter()
        for (pdu, _), n in self.problems.items():
            counts[pdu] += n
        return dict(counts)

    # ---------------------------------------------------------------- readings
    def pdu(self, name: str) -> PduMeter:
        meter = self.pdus.get(name)
        if meter is None:
            meter = self.pdus[name] = PduMeter()
        return meter

    def outlet(self, pdu: str, port_id: str) -> Optional[OutletMeter]:
        return self.outlets.get((pdu, port_id))

    def forget(self, pdu: str) -> None:
        """A PDU removed: its in-memory readings go (its stored history stays until pruned)."""
        self._close_periods(math.inf)
        self.pdus.pop(pdu, None)
        for key in [key for key in self.outlets if key[0] == pdu]:
            del self.outlets[key]

    def take(self, pdu: str, reading: PowerReading, at: float, states: dict[str, PortState],
             interval: float) -> tuple[list[str], bool]:
        """Take one reading of ``pdu`` made at ``at``; ``states``: its outlets' states. Returns the outlets
        whose (rate-limited) ``outlet`` event is due and whether the PDU's ``pdu`` event is."""
        pm = self.pdu(pdu)
        pm.reads += 1
        pm.interval = interval
        for text in reading.problems:
            self.problem(pdu, text)
        total = _plausible(reading.total_watts, MAX_PDU_WATTS)
        if reading.total_watts is not None and total is None:
            self.problem(pdu, f"total: {reading.total_watts!r} W refused")
        pm.metered = bool(reading.outlets) or total is not None
        pm.total_watts, pm.at = total, at
        maxlen = max(1, int(self.recent_seconds / max(interval, 0.01)))
        due: list[str] = []
        for port_id, power in reading.outlets.items():
            if port_id not in states:
                self.problem(pdu, f"a reading for outlet {port_id!r}, which the PDU does not have")
                continue
            meter = self.outlets.get((pdu, port_id))
            if meter is None:
                meter = self.outlets[(pdu, port_id)] = OutletMeter(series=deque(maxlen=maxlen))
            elif meter.series.maxlen != maxlen:  # the PDU's interval changed
                meter.series = deque(meter.series, maxlen=maxlen)
            power = self._sane(pdu, port_id, power)
            self._account(pdu, port_id, meter, power, at)
            self._judge(pdu, port_id, meter, states.get(port_id, PortState.UNKNOWN), at)
            if at - meter.last_event >= self.event_interval:
                meter.last_event = at
                due.append(port_id)
        pdu_due = at - pm.last_event >= self.event_interval
        if pdu_due:
            pm.last_event = at
        return due, pdu_due

    def _sane(self, pdu: str, port_id: str, power: OutletPower) -> OutletPower:
        """The driver's checks, again: a number, finite, not negative, plausible."""
        watts = _plausible(power.watts, MAX_OUTLET_WATTS)
        amps = _plausible(power.amps, 200.0)
        volts = _plausible(power.volts, 1000.0)
        energy = _plausible(power.energy_wh, math.inf)
        for name, raw, kept in (("watts", power.watts, watts), ("amps", power.amps, amps),
                                ("volts", power.volts, volts), ("energy_wh", power.energy_wh, energy)):
            if raw is not None and kept is None:
                self.problem(pdu, f"outlet {port_id} {name}: {str(raw)[:40]!r} refused")
        return OutletPower(watts, amps, volts, energy)

    def _account(self, pdu: str, port_id: str, meter: OutletMeter, power: OutletPower, at: float) -> None:
        """The reading into the latest, the series, the period and the energy."""
        step: Optional[float] = None  # joules since the last reading
        believable = power.watts is not None or power.energy_wh is not None
        if believable and meter.last_t is not None and at > meter.last_t:  # else the next one spans the gap
            dt = at - meter.last_t
            if power.energy_wh is not None and meter.counter_wh is not None:
                delta = (power.energy_wh - meter.counter_wh) * 3600.0
                if delta < 0:
                    self.problem(pdu, f"outlet {port_id}: the energy counter went down (wrap or reset): "
                                      f"W x dt for that step")
                elif delta > MAX_OUTLET_WATTS * dt + 3600.0:  # beyond any outlet's power (1 Wh of slack)
                    self.problem(pdu, f"outlet {port_id}: the energy counter jumped by {delta / 3600:.0f} Wh "
                                      f"in {dt:.0f} s: W x dt for that step")
                else:
                    step = delta
            if step is None:
                watts = [w for w in (meter.last_watts, power.watts) if w is not None]
                if watts:
                    step = sum(watts) / len(watts) * min(dt, MAX_GAP)
        if power.energy_wh is not None:
            meter.counter_wh = power.energy_wh
        if believable:
            meter.last_t = at
        if power.watts is not None:
            meter.last_watts = power.watts
        meter.latest, meter.at = power, at
        if step is not None:
            meter.energy_j += step
        start = math.floor(at / PERIOD) * PERIOD
        period = meter.period
        if period is not None and period.start != start:
            if period.samples:
                self._rows.append(period.row(pdu, port_id))
            period = None
        if period is None:
            period = meter.period = _Period(start)
        if step is not None:
            period.energy_j += step
        if power.watts is not None:
            meter.series.append((at, power.watts))
            period.total_w += power.watts
            period.samples += 1
            period.min_w = min(period.min_w, power.watts)
            period.max_w = max(period.max_w, power.watts)

    # ---------------------------------------------------------------- flags
    def _judge(self, pdu: str, port_id: str, meter: OutletMeter, state: PortState, at: float) -> None:
        mac = self.machine_at(pdu, port_id)
        if mac is None:
            return
        watts = meter.latest.watts if meter.latest is not None else None
        want: Optional[tuple[str, str]] = None
        if state != PortState.ON or watts is None:
            meter.low_since = meter.steady_since = None
        elif watts < self.no_draw_watts:
            meter.steady_since = None
            meter.low_since = meter.low_since if meter.low_since is not None else at
            if at - meter.low_since >= self.no_draw_seconds:
                want = ("no_draw", "no power draw: check its plug or PSU")
        else:
            meter.low_since = None
            meter.steady_since = meter.steady_since if meter.steady_since is not None else at
            quiet_from = max(meter.steady_since, self.console_activity(mac) or 0.0)
            if at - quiet_from >= self.silent_seconds:
                want = ("silent", "powered but silent")
        self._flag(mac, want, at)

    def _flag(self, mac: str, want: Optional[tuple[str, str]], at: float) -> None:
        current = self.flags.get(mac)
        if want is None:
            if current is None:
                return
            del self.flags[mac]
            log.info("machine %s: power flag %s cleared", mac, current["kind"])
        else:
            if current is not None and current["kind"] == want[0]:
                return
            flag = self.flags[mac] = {"kind": want[0], "reason": want[1], "since": at}
            log.warning("machine %s: %s", mac, want[1])
            try:
                self.training_note(mac, dict(flag))
            except Exception:  # noqa: BLE001 - a note must not stop the sampler
                log.exception("machine %s: the power flag was not noted in its training", mac)
        self.changed(mac, "updated")

    def power_flag(self, mac: str) -> Optional[dict[str, Any]]:
        flag = self.flags.get(mac)
        return dict(flag) if flag is not None else None

    # ---------------------------------------------------------------- answers
    def outlet_power(self, pdu: str, port_id: str) -> Optional[dict[str, Any]]:
        """The latest reading as ``contract.OutletPower`` (None: none yet)."""
        meter = self.outlets.get((pdu, port_id))
        if meter is None or meter.latest is None or meter.at is None:
            return None
        p = meter.latest
        return {"watts": p.watts, "amps": p.amps, "volts": p.volts, "energy_wh": p.energy_wh, "at": meter.at}

    def energy_j(self, pdu: str, port_id: str) -> Optional[float]:
        """Joules the outlet drew since the start (None: never metered)."""
        meter = self.outlets.get((pdu, port_id))
        return meter.energy_j if meter is not None else None

    async def series(self, pdu: str, port_id: str, since: float) -> list[tuple[float, float]]:
        """``[t, watts]`` since ``since``, oldest first: the stored minutes (their average, at their start)
        before the recent series in memory, then that series."""
        meter = self.outlets.get((pdu, port_id))
        recent = [point for point in (meter.series if meter else ()) if point[0] >= since]
        until = recent[0][0] if recent else math.inf
        if meter is not None and meter.series and meter.series[0][0] <= since:
            return recent  # memory covers it all

        def stored() -> list[tuple[float, float]]:
            engine = self.store.engine
            assert engine is not None, "store not open"
            query = (select(_HISTORY.c.at, _HISTORY.c.avg_w)
                     .where(_HISTORY.c.pdu == pdu, _HISTORY.c.port_id == port_id, _HISTORY.c.at >= since,
                            _HISTORY.c.at < until)
                     .order_by(_HISTORY.c.at))
            with engine.connect() as conn:
                return [(float(at), float(w)) for at, w in conn.execute(query)]

        older = await self.store.run_raw(stored)
        # Periods not written yet (in memory, before the recent series: after a restart, none)
        pending = sorted((row["at"], row["avg_w"]) for row in self._rows
                         if row["pdu"] == pdu and row["port_id"] == port_id and since <= row["at"] < until)
        return sorted({*older, *pending}) + recent


def _plausible(value: Optional[float], limit: float) -> Optional[float]:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    if not math.isfinite(number) or number < 0 or number > limit:
        return None
    return number
