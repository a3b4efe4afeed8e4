"""Outlet discovery: which machine is behind which outlet, found by powering the outlet on.

valve-infra's step 9 set the PDU port by hand ("not auto-discovered currently"); its later
discovery gave the outlet to *any* next registration and left the outlet on after a timeout.
Here an outlet is powered on only if it is off, free and not reserved; the next registration of
a machine that has no outlet yet (a new MAC, or a known machine without a PDU port) gets it; the
outlet is switched off again if nothing registers before the timeout; and "find outlets" walks
every free outlet of a PDU one after another.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..drivers.pdu import PortState
from .errors import BadRequest, Conflict
from .events import EventBus

if TYPE_CHECKING:
    from .models import Machine
    from .power import PowerService
    from .registration import MachineService

log = logging.getLogger(__name__)
DEFAULT_TIMEOUT = 150.0


@dataclass
class Pending:
    pdu: str
    port_id: str
    timeout: float
    started_at: float = field(default_factory=time.time)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    result: str | None = None  # found:<mac> | timeout | cancelled | failed:<reason>
    armed: bool = False  # the outlet is on: registrations may claim it
    timer: asyncio.Task[None] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "pdu": self.pdu,
            "port_id": self.port_id,
            "timeout": self.timeout,
            "started_at": self.started_at,
            "remaining": max(0.0, self.started_at + self.timeout - time.time()),
            "waiting": self.armed,  # false while the outlet is still being switched on
        }


class DiscoveryService:
    def __init__(self, machines: "MachineService", power: "PowerService", bus: EventBus) -> None:
        self.machines = machines
        self.power = power
        self.bus = bus
        self.current: Pending | None = None
        self.queue: list[tuple[str, str]] = []
        self._scan: asyncio.Task[None] | None = None
        self._scan_timeout = DEFAULT_TIMEOUT

    # ---------------------------------------------------------------- state
    def status(self) -> dict[str, Any]:
        return {
            "current": self.current.to_json() if self.current else None,
            "queue": [{"pdu": p, "port_id": o} for p, o in self.queue],
        }

    def valve_infra_status(self) -> dict[str, Any]:
        """valve-infra's ``discover_data``: ``{pdu, port_id, date, timeout, started_at}``, or ``{}``."""
        pending = self.current
        if pending is None:
            return {}
        from email.utils import formatdate

        return {
            "pdu": pending.pdu,
            "port_id": pending.port_id,
            "date": formatdate(pending.started_at, usegmt=True),  # as Flask's jsonify wrote a datetime
            "timeout": int(pending.timeout),
            "started_at": pending.started_at,
        }

    def _publish(self, state: str, pending: Pending, **extra: Any) -> None:
        self.bus.publish(
            "discovery",
            {"state": state, "pdu": pending.pdu, "port_id": pending.port_id, **extra,
             "queue": [{"pdu": p, "port_id": o} for p, o in self.queue]},
        )

    # ---------------------------------------------------------------- checks
    def _refusal(self, pdu: str, port_id: str) -> str | None:
        """Why this outlet cannot be discovered now, or None."""
        if self.power.is_reserved(pdu, port_id):
            return f"outlet {port_id} of PDU {pdu} is reserved"
        other = self.machines.machine_on(pdu, port_id)
        if other is not None:
            return f"outlet {port_id} of PDU {pdu} is already used by {self.machines.full_name(other)}"
        return None

    def free_outlets(self, pdu: str) -> list[str]:
        ids = self.power.outlet_ids(pdu)
        if ids is None:
            raise Conflict(f"the outlets of PDU {pdu} are not known yet (is it reachable?)")
        return [p for p in ids if self._refusal(pdu, p) is None and self.power.outlet_state(pdu, p) == PortState.OFF]

    # ---------------------------------------------------------------- one outlet
    async def start(self, pdu: str, port_id: str | int, timeout: float | None = None) -> dict[str, Any]:
        port_id = str(port_id)
        if self.current is not None or (self._scan is not None and not self._scan.done()):
            running = self.current.to_json() if self.current else None
            where = f"outlet {running['port_id']} of {running['pdu']}" if running else "a scan"
            raise Conflict(f"a discovery is already running ({where}); cancel it first")
        pending = await self._begin(pdu, port_id, timeout or DEFAULT_TIMEOUT)
        return {
            "message": f"Booting machine behind port {port_id} from PDU {pdu}. "
            f"Discovery will time out after {pending.timeout:g} seconds.",
            "discovery": pending.to_json(),
        }

    async def _begin(self, pdu: str, port_id: str, timeout: float) -> Pending:
        if not 1 <= timeout <= 3600:
            raise BadRequest("timeout must be between 1 and 3600 seconds")
        self.power.outlet_ids(pdu)  # unknown PDU → 404 (an unknown outlet is refused by read_outlet)
        reason = self._refusal(pdu, port_id)
        if reason:
            raise Conflict(reason)
        state = await self.power.read_outlet(pdu, port_id)
        if state != PortState.OFF:
            raise Conflict(f"The port {port_id} of PDU {pdu} is already on use! (it reads {state.value})")
        pending = Pending(pdu, port_id, timeout)
        self.current = pending  # from here on, a second discovery is refused
        try:
            await self.power.set_outlet(pdu, port_id, PortState.ON, source="discovery")
        except Exception:
            self.current = None
            raise
        # Only now, with the outlet on, may a registration claim it ("started" always comes first).
        pending.armed = True
        pending.started_at = time.time()
        pending.timer = asyncio.create_task(self._expire(pending), name="discovery-timeout")
        log.info("discovery: outlet %s/%s on, waiting %g s for a registration", pdu, port_id, timeout)
        self._publish("started", pending, timeout=timeout)
        return pending

    async def _expire(self, pending: Pending) -> None:
        await asyncio.sleep(pending.timeout)
        if self.current is not pending:
            return
        self.current = None
        try:
            await self.power.set_outlet(pending.pdu, pending.port_id, PortState.OFF, source="discovery")
        except Exception as exc:  # noqa: BLE001 - reported to the operator, the scan goes on
            log.error("discovery: could not switch outlet %s/%s off again: %s", pending.pdu, pending.port_id, exc)
        log.info("discovery: nothing registered behind %s/%s", pending.pdu, pending.port_id)
        self._finish(pending, "timeout")

    def _finish(self, pending: Pending, result: str, **extra: Any) -> None:
        pending.result = result
        pending.done.set()
        self._publish(result.split(":")[0], pending, **extra)

    def claim(self, mac: str, existing: "Machine | None") -> tuple[str, str] | None:
        """Called by a registration: the outlet under discovery, if this machine may take it."""
        pending = self.current
        if pending is None or not pending.armed:
            return None
        if existing is not None and existing.pdu is not None and existing.pdu_port_id is not None:
            return None  # a machine that already has an outlet (re-registering, retraining) never takes one
        if self._refusal(pending.pdu, pending.port_id):
            return None
        self.current = None
        if pending.timer is not None:
            pending.timer.cancel()
        log.info("discovery: %s is behind outlet %s/%s", mac, pending.pdu, pending.port_id)
        self._finish(pending, f"found:{mac}", mac=mac)
        return pending.pdu, pending.port_id

    async def cancel(self) -> dict[str, Any]:
        self.queue.clear()
        pending = self.current
        if self._scan is not None and not self._scan.done():
            self._scan.cancel()
        if pending is not None:
            self.current = None
            if pending.timer is not None:
                pending.timer.cancel()
            try:
                await self.power.set_outlet(pending.pdu, pending.port_id, PortState.OFF, source="discovery")
            except Exception as exc:  # noqa: BLE001
                log.error("discovery: could not switch outlet %s/%s off: %s", pending.pdu, pending.port_id, exc)
            self._finish(pending, "cancelled")
        return self.status()

    # ---------------------------------------------------------------- find outlets
    async def find_outlets(self, pdu: str, timeout: float | None = None) -> dict[str, Any]:
        if self.current is not None or (self._scan is not None and not self._scan.done()):
            raise Conflict("a discovery is already running; cancel it first")
        free = self.free_outlets(pdu)
        if not free:
            raise Conflict(f"PDU {pdu} has no free outlet that is off")
        self.queue = [(pdu, p) for p in free]
        self._scan_timeout = timeout or DEFAULT_TIMEOUT
        self._scan = asyncio.create_task(self._run_scan(), name=f"find-outlets-{pdu}")
        return {"message": f"discovering {len(free)} free outlets of {pdu}, one after another", **self.status()}

    async def _run_scan(self) -> None:
        while self.queue:
            pdu, port_id = self.queue.pop(0)
            if self._refusal(pdu, port_id) or self.power.outlet_state(pdu, port_id) != PortState.OFF:
                continue
            try:
                pending = await self._begin(pdu, port_id, self._scan_timeout)
            except Exception as exc:  # noqa: BLE001 - skip this outlet, try the next
                log.warning("find outlets: %s/%s skipped: %s", pdu, port_id, exc)
                continue
            await pending.done.wait()

    async def stop(self) -> None:
        if self._scan is not None:
            self._scan.cancel()
        if self.current is not None and self.current.timer is not None:
            self.current.timer.cancel()
