"""PowerService: the only code that switches outlets.

Guarantees: one command at a time per PDU, in order (one worker task and queue per PDU); every
set is read back and a mismatch is an error; an outlet stays off for its minimum off time (the
machine's ``pdu_off_delay``), also across restarts (``OutletLog``); a reboot is off, wait, on; a
PDU that stops answering is marked unreachable with the reason and polled again with back-off
while the other PDUs keep working; outlet changes are published as ``outlet`` events.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, TypeVar

from sqlmodel import Session, delete, func, select

from ..drivers.pdu import DriverConfigError, DriverError, Outlet, PDUDriver, PortState, create_driver
from .errors import BadRequest, Conflict, FarmError, NotFound
from .events import EventBus
from .models import Machine, OutletLog, Pdu
from .store import Store

log = logging.getLogger(__name__)
T = TypeVar("T")

PDU_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
READBACK_SETTLE = 5.0  # seconds a PDU gets to report the state it was asked for
MAX_BACKOFF = 60.0


SECRET_KEYS = {"community", "read_community", "auth_key", "priv_key", "password", "token"}


def masked(config: dict[str, Any]) -> dict[str, Any]:
    """A PDU's config as the API shows it: community strings, keys and passwords hidden."""
    return {k: ("********" if k in SECRET_KEYS and v else v) for k, v in config.items()}


class BrokenDriver:
    """Stands in for a stored PDU whose driver cannot be built (e.g. a driver removed by an upgrade)."""

    name = "broken"

    def __init__(self, reason: str) -> None:
        self.reason = reason

    async def ports(self) -> list[Outlet]:
        raise DriverError(self.reason)

    async def get(self, port_id: str) -> PortState:
        raise DriverError(self.reason)

    async def set(self, port_id: str, state: PortState) -> None:
        raise DriverError(self.reason)

    async def close(self) -> None:
        return None


class PowerError(FarmError):
    """A PDU did not do what it was asked (unreachable, refused, or read back the wrong state)."""

    status = 409


@dataclass
class OutletInfo:
    port_id: str
    label: str
    state: PortState = PortState.UNKNOWN
    changed_at: float | None = None


@dataclass
class PduRuntime:
    name: str
    driver_name: str
    config: dict[str, Any]
    reserved: set[str]
    driver: PDUDriver
    outlets: dict[str, OutletInfo] = field(default_factory=dict)
    discovered: bool = False
    reachable: bool | None = None
    error: str | None = None
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    tasks: list[asyncio.Task] = field(default_factory=list)
    port_locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    failures: int = 0
    locked_by: dict[str, str] = field(default_factory=dict)
    wake_poll: asyncio.Event = field(default_factory=asyncio.Event)

    def lock(self, port_id: str) -> asyncio.Lock:
        return self.port_locks.setdefault(port_id, asyncio.Lock())


class PowerService:
    def __init__(
        self,
        store: Store,
        bus: EventBus,
        *,
        default_off_delay: float = 5.0,
        poll_interval: float = 10.0,
        timeout: float = 3.0,
        off_delay_for: Callable[[str, str], float | None] | None = None,
    ) -> None:
        self.store = store
        self.bus = bus
        self.default_off_delay = default_off_delay
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.off_delay_for = off_delay_for or (lambda pdu, port: None)
        self.pdus: dict[str, PduRuntime] = {}
        self._last_off: dict[tuple[str, str], float] = {}
        self.state = "starting"
        self.reason: str | None = None
        self.on_health_change: Callable[[], None] = lambda: None

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        def load(session: Session) -> tuple[list[Pdu], list[tuple[str, str, float]]]:
            pdus = list(session.exec(select(Pdu)).all())
            offs = session.exec(
                select(OutletLog.pdu, OutletLog.port_id, func.max(OutletLog.at))
                .where(OutletLog.state == PortState.OFF.value)
                .group_by(OutletLog.pdu, OutletLog.port_id)
            ).all()
            return pdus, [tuple(row) for row in offs]

        pdus, offs = await self.store.run(load)
        self._last_off = {(p, port): at for p, port, at in offs}
        for row in pdus:
            try:
                driver: PDUDriver = create_driver(row.driver, row.config)
            except (DriverConfigError, DriverError) as exc:
                # Keep it listed, unreachable with the reason, rather than hiding a stored PDU.
                log.error("PDU %s cannot be loaded: %s", row.name, exc)
                driver = BrokenDriver(f"cannot load driver {row.driver!r}: {exc}")
            self._launch(PduRuntime(row.name, row.driver, row.config, set(row.reserved_ports), driver))
        self._update_health()

    async def stop(self) -> None:
        for rt in list(self.pdus.values()):
            await self._shutdown(rt)
        self.pdus.clear()
        from ..drivers.pdu.snmp import close_engines

        await close_engines()  # the loop's SNMP engine, even if a driver was never closed

    def _launch(self, rt: PduRuntime) -> None:
        self.pdus[rt.name] = rt
        rt.tasks = [
            asyncio.create_task(self._worker(rt), name=f"pdu-{rt.name}-worker"),
            asyncio.create_task(self._poller(rt), name=f"pdu-{rt.name}-poll"),
        ]

    async def _shutdown(self, rt: PduRuntime) -> None:
        for task in rt.tasks:
            task.cancel()
        await asyncio.gather(*rt.tasks, return_exceptions=True)
        while not rt.queue.empty():
            _, fut = rt.queue.get_nowait()
            if not fut.done():
                fut.set_exception(PowerError(f"PDU {rt.name} was removed"))
        try:
            await rt.driver.close()
        except Exception:  # noqa: BLE001 - closing a broken driver must not stop the farm
            log.exception("closing PDU %s", rt.name)

    # ---------------------------------------------------------------- worker
    async def _worker(self, rt: PduRuntime) -> None:
        while True:
            op, fut = await rt.queue.get()
            if fut.cancelled():
                continue
            try:
                result = await asyncio.wait_for(op(), timeout=self.timeout * 4 + READBACK_SETTLE)
            except PowerError as exc:  # the PDU answered, but not as asked
                self._mark(rt, None)
                if not fut.done():
                    fut.set_exception(exc)
            except asyncio.TimeoutError:
                err = DriverError(f"PDU {rt.name} did not answer in time")
                self._mark(rt, err)
                if not fut.done():
                    fut.set_exception(PowerError(str(err)))
            except DriverError as exc:
                self._mark(rt, exc)
                if not fut.done():
                    fut.set_exception(PowerError(f"PDU {rt.name}: {exc}"))
            except Exception as exc:  # noqa: BLE001 - a driver bug must not kill the worker
                log.exception("PDU %s command failed", rt.name)
                self._mark(rt, exc)
                if not fut.done():
                    fut.set_exception(PowerError(f"PDU {rt.name}: {exc}"))
            else:
                self._mark(rt, None)
                if not fut.done():
                    fut.set_result(result)

    async def _submit(self, rt: PduRuntime, op: Callable[[], Awaitable[T]]) -> T:
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        await rt.queue.put((op, fut))
        return await fut

    def _mark(self, rt: PduRuntime, error: BaseException | None) -> None:
        before = (rt.reachable, rt.error)
        if error is None:
            rt.reachable, rt.error, rt.failures = True, None, 0
        else:
            rt.reachable, rt.error = False, str(error) or type(error).__name__
            rt.failures += 1
        if (rt.reachable, rt.error) != before:
            if rt.reachable:
                log.info("PDU %s is reachable", rt.name)
            else:
                log.warning("PDU %s is unreachable: %s", rt.name, rt.error)
            self.bus.publish("pdu", {"action": "updated", "name": rt.name, "pdu": self.pdu_json(rt.name)})
            self._update_health()

    def _update_health(self) -> None:
        down = sorted(name for name, rt in self.pdus.items() if rt.reachable is False)
        state, reason = ("degraded", "unreachable: " + ", ".join(down)) if down else ("ok", None)
        if (state, reason) != (self.state, self.reason):
            self.state, self.reason = state, reason
            self.on_health_change()

    # ---------------------------------------------------------------- polling
    async def _poller(self, rt: PduRuntime) -> None:
        while True:
            try:
                await self._submit(rt, lambda: self._poll_once(rt))
            except PowerError:
                pass
            if rt.reachable is False:
                delay = min(MAX_BACKOFF, 2 ** min(rt.failures - 1, 6))
            else:
                delay = self.poll_interval
            rt.wake_poll.clear()
            try:
                await asyncio.wait_for(rt.wake_poll.wait(), delay)
            except asyncio.TimeoutError:
                pass

    async def _poll_once(self, rt: PduRuntime) -> None:
        if not rt.discovered:
            outlets: list[Outlet] = await rt.driver.ports()
            rt.outlets = {o.port_id: OutletInfo(o.port_id, o.label) for o in outlets}
            rt.discovered = True
            self.bus.publish("pdu", {"action": "updated", "name": rt.name, "pdu": self.pdu_json(rt.name)})
        for port_id in list(rt.outlets):
            state = await rt.driver.get(port_id)
            await self._record(rt, port_id, state, source="poll")

    async def _record(self, rt: PduRuntime, port_id: str, state: PortState, source: str) -> None:
        info = rt.outlets.get(port_id)
        if info is None:
            info = rt.outlets[port_id] = OutletInfo(port_id, "")
        if info.state == state:
            return
        previous, info.state, info.changed_at = info.state, state, time.time()
        key = (rt.name, port_id)
        if previous == PortState.UNKNOWN and state == PortState.OFF and key in self._last_off:
            # First sight after a start of an outlet we saw go off before: it has been off since then.
            info.changed_at = self._last_off[key]
        else:
            if state == PortState.OFF:
                self._last_off[key] = info.changed_at
            entry = OutletLog(pdu=rt.name, port_id=port_id, state=state.value, at=info.changed_at, source=source)
            await self.store.run(lambda s: s.add(entry))
        self.bus.publish("outlet", self.outlet_json(rt, info))

    # ---------------------------------------------------------------- commands
    def _runtime(self, name: str) -> PduRuntime:
        rt = self.pdus.get(name)
        if rt is None:
            raise NotFound(f"unknown PDU {name!r}")
        return rt

    def min_off_time(self, pdu: str, port_id: str) -> float:
        delay = self.off_delay_for(pdu, port_id)
        return self.default_off_delay if delay is None else float(delay)

    def _check_port(self, rt: PduRuntime, port_id: str) -> None:
        if rt.discovered and port_id not in rt.outlets:
            ids = list(rt.outlets)
            span = f"{ids[0]}..{ids[-1]}" if ids else "none"
            raise NotFound(f"PDU {rt.name} has no outlet {port_id!r} (outlets: {span})")

    # ---------------------------------------------------------------- locks
    def lock(self, pdu: str, port_id: str, owner: str) -> None:
        """Reserve an outlet for ``owner`` (a job): nobody else may switch it until unlock()."""
        rt = self._runtime(pdu)
        self._check_port(rt, port_id)
        holder = rt.locked_by.get(port_id)
        if holder is not None and holder != owner:
            raise Conflict(f"outlet {port_id} of PDU {pdu} is locked by {holder}")
        rt.locked_by[port_id] = owner
        self.bus.publish("outlet", self.outlet_json(rt, rt.outlets.get(port_id) or OutletInfo(port_id, "")))

    def unlock(self, pdu: str, port_id: str, owner: str) -> None:
        rt = self.pdus.get(pdu)
        if rt is not None and rt.locked_by.get(port_id) == owner:
            del rt.locked_by[port_id]
            self.bus.publish("outlet", self.outlet_json(rt, rt.outlets.get(port_id) or OutletInfo(port_id, "")))

    async def set_outlet(
        self, pdu: str, port_id: str | int, state: PortState | str, source: str = "api", owner: str | None = None
    ) -> PortState:
        """Switch an outlet and return the state read back from the PDU.

        A locked outlet can only be switched by its lock's ``owner``.
        """
        rt = self._runtime(pdu)
        port_id = str(port_id)
        holder = rt.locked_by.get(port_id)
        if holder is not None and holder != owner:
            raise Conflict(f"outlet {port_id} of PDU {pdu} is locked by {holder}")
        target = state if isinstance(state, PortState) else PortState.parse(state)
        if target == PortState.UNKNOWN:
            raise BadRequest("an outlet can be switched on, off or rebooted, not to UNKNOWN")
        self._check_port(rt, port_id)
        if port_id in rt.reserved:
            raise Conflict(f"outlet {port_id} of PDU {pdu} is reserved: the farm never switches it")
        if rt.reachable is False and not rt.discovered:
            raise PowerError(f"PDU {pdu} is unreachable: {rt.error}")
        async with rt.lock(port_id):
            if target == PortState.REBOOT:
                await self._switch(rt, port_id, PortState.OFF, source)
                return await self._switch(rt, port_id, PortState.ON, source)
            return await self._switch(rt, port_id, target, source)

    async def _switch(self, rt: PduRuntime, port_id: str, target: PortState, source: str) -> PortState:
        if target == PortState.ON:
            last_off = self._last_off.get((rt.name, port_id))
            if last_off is not None:
                wait = last_off + self.min_off_time(rt.name, port_id) - time.time()
                if wait > 0:
                    log.info("outlet %s/%s: enforcing %.1f s of down time before power on", rt.name, port_id, wait)
                    await asyncio.sleep(wait)

        async def op() -> PortState:
            await rt.driver.set(port_id, target)
            deadline = time.monotonic() + READBACK_SETTLE
            while True:
                got = await rt.driver.get(port_id)
                if got == target or time.monotonic() >= deadline:
                    break
                await asyncio.sleep(0.2)
            await self._record(rt, port_id, got, source=source)
            if got != target:
                raise PowerError(f"outlet {port_id} of PDU {rt.name} reads {got.value} after switching {target.value}")
            return got

        result = await self._submit(rt, op)
        log.info("outlet %s/%s is %s (%s)", rt.name, port_id, result.value, source)
        return result

    async def read_outlet(self, pdu: str, port_id: str) -> PortState:
        """Read one outlet's state from the PDU now (through its queue) and record it."""
        rt = self._runtime(pdu)
        self._check_port(rt, port_id)

        async def op() -> PortState:
            state = await rt.driver.get(port_id)
            await self._record(rt, port_id, state, source="poll")
            return state

        return await self._submit(rt, op)

    async def refresh(self, pdu: str) -> None:
        """Ask the PDU's poller to read every outlet now."""
        self._runtime(pdu).wake_poll.set()

    # ---------------------------------------------------------------- PDUs
    async def add_pdu(self, name: str, driver: str, config: dict[str, Any] | None, reserved: list[str] | None = None):
        if not isinstance(name, str) or not PDU_NAME.match(name):
            raise BadRequest("a PDU name is 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
        if name in self.pdus:
            raise Conflict(f"a PDU named {name!r} already exists")
        try:
            drv = create_driver(driver, config)
        except (DriverConfigError, DriverError) as exc:
            raise BadRequest(str(exc)) from None
        reserved_ids = sorted({str(p) for p in reserved or []})
        row = Pdu(name=name, driver=driver, config=dict(config or {}), reserved_ports=reserved_ids)

        def insert(session: Session) -> None:
            if session.get(Pdu, name) is not None:
                raise Conflict(f"a PDU named {name!r} already exists")
            session.add(row)

        await self.store.run(insert)
        rt = PduRuntime(name, driver, row.config, set(reserved_ids), drv)
        self._launch(rt)
        # Give the PDU a moment to report its outlets so the answer is useful; never fail on it.
        deadline = time.monotonic() + self.timeout + 0.5
        while not rt.discovered and rt.reachable is not False and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        self.bus.publish("pdu", {"action": "added", "name": name, "pdu": self.pdu_json(name)})
        log.info("PDU %s added (driver %s)", name, driver)
        self._update_health()
        return self.pdu_json(name)

    async def remove_pdu(self, name: str) -> None:
        rt = self._runtime(name)

        def remove(session: Session) -> None:
            users = session.exec(select(Machine.mac_address).where(Machine.pdu == name)).all()
            if users:
                raise Conflict(f"PDU {name} still powers {', '.join(users)}: assign those machines elsewhere first")
            session.exec(delete(Pdu).where(Pdu.name == name))

        await self.store.run(remove)
        self.pdus.pop(name, None)
        await self._shutdown(rt)
        self.bus.publish("pdu", {"action": "removed", "name": name, "pdu": None})
        log.info("PDU %s removed", name)
        self._update_health()

    def outlet_ids(self, pdu: str) -> list[str] | None:
        rt = self._runtime(pdu)
        return list(rt.outlets) if rt.discovered else None

    def is_reserved(self, pdu: str, port_id: str) -> bool:
        rt = self.pdus.get(pdu)
        return rt is not None and port_id in rt.reserved

    def outlet_state(self, pdu: str, port_id: str) -> PortState:
        rt = self._runtime(pdu)
        info = rt.outlets.get(port_id)
        return info.state if info else PortState.UNKNOWN

    def outlet_json(self, rt: PduRuntime, info: OutletInfo) -> dict[str, Any]:
        return {
            "pdu": rt.name,
            "port_id": info.port_id,
            "label": info.label,
            "state": info.state.value,
            "reserved": info.port_id in rt.reserved,
            "locked_by": rt.locked_by.get(info.port_id),
            "min_off_time": self.min_off_time(rt.name, info.port_id),
            "changed_at": info.changed_at,
        }

    def pdu_json(self, name: str) -> dict[str, Any]:
        rt = self._runtime(name)
        state = "unknown" if rt.reachable is None else ("reachable" if rt.reachable else "unreachable")
        return {
            "name": rt.name,
            "driver": rt.driver_name,
            "pdu_model": rt.driver_name,
            "config": masked(rt.config),
            "reserved_ports": sorted(rt.reserved),
            "state": state,
            "error": rt.error,
            "ports": {
                pid: {k: v for k, v in self.outlet_json(rt, info).items() if k not in ("pdu", "port_id")}
                for pid, info in rt.outlets.items()
            },
        }

    def pdus_json(self) -> dict[str, Any]:
        return {name: self.pdu_json(name) for name in sorted(self.pdus)}
