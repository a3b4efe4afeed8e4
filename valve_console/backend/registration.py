"""MaRS: the machine registry. DUTs register themselves; operators configure them.

Machines are kept in memory (read from the database at start) and every change is written
through to the database in one transaction before it is published as a ``machine`` event.
Writes are serialised (one lock), so checks made in memory (an outlet or an IP used by another
machine) still hold when the row is written.

Names: a machine is named ``<farm>-<base_name>-<n>`` once, at its first registration, with the
smallest ``n`` no other machine of that farm and base name holds; the name is stored and never
changes (not when another machine is removed, nor when its own base name or the farm's name changes).
A removed machine's number is free again for the next new machine of that base name.

Registration is open (valve-infra's DUTs post without credentials) and the DUT network is hostile:
a registration from a DUT (``source`` = its address) may change a known machine only if it comes from
that machine's own address and, while the machine is ready for service, does not change its identity
(``ip_address``, ``base_name``, ``tags``, ``local_tty_device``). Otherwise it is held for the operator
(``Machine.pending_registration``), who approves or rejects it. The gateway itself (loopback, a trusted
network, the operator token: ``source=None``) may re-register anything. An IP pinned to another machine
is refused, whoever asks.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Mapping, Optional, Protocol, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, field_validator
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from .errors import BadRequest, Conflict, FarmError, NotFound
from .models import Machine, Training
from .trust import ip_of
from .rules import machine_tags, normalise_mac as normalise_mac  # normalise_mac: re-exported, its old home
from .store import Store

log = logging.getLogger(__name__)

# Whole-string patterns, always used with fullmatch: "$" would also match before a trailing newline.
_TTY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]{0,63}")
_BASE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# What identifies a machine: a registration from a DUT may not change these while it is ready for service.
IDENTITY = ("ip_address", "base_name", "tags", "local_tty_device")


def _tty_name(v: str) -> str:
    v = v.removeprefix("/dev/")
    if not _TTY.fullmatch(v):
        raise ValueError(f"{v[:40]!r} is not a tty device name (e.g. ttyUSB0)")
    return v


# The checked field types the registration and the operator's PATCH share.
Tags = Annotated[list[str], AfterValidator(machine_tags)]
TtyName = Annotated[str, AfterValidator(_tty_name)]


class Registration(BaseModel):
    """What a DUT sends: valve-infra's five fields, and nothing else."""

    model_config = ConfigDict(extra="forbid")

    base_name: Optional[str] = None
    tags: Optional[Tags] = None
    mac_address: str
    ip_address: Optional[str] = None
    local_tty_device: Optional[TtyName] = None

    @field_validator("mac_address")
    @classmethod
    def _mac(cls, v: str) -> str:
        return normalise_mac(v)

    @field_validator("ip_address")
    @classmethod
    def _ip(cls, v: Optional[str]) -> Optional[str]:
        if v is None:
            return v
        try:
            return str(ipaddress.IPv4Address(v.strip()))
        except ValueError:
            raise ValueError(f"{v!r} is not an IPv4 address") from None

    @field_validator("base_name")
    @classmethod
    def _base_name(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not _BASE_NAME.fullmatch(v):
            raise ValueError(f"{v[:40]!r} is not a base name (1-64 letters, digits, '.', '_' or '-')")
        return v


class MachineUpdate(BaseModel):
    """What an operator may change on a machine (PATCH)."""

    model_config = ConfigDict(extra="forbid")

    pdu: Optional[str] = None
    pdu_port_id: Optional[Union[str, int]] = None
    local_tty_device: Optional[TtyName] = None
    ready_for_service: Optional[StrictBool] = None
    manual_tags: Optional[Tags] = None
    pdu_off_delay: Optional[float] = Field(default=None, ge=0, le=3600)
    comment: Optional[str] = Field(default=None, max_length=4096)
    is_retired: Optional[StrictBool] = None
    # Sgt. Hartman overrides (null: the farm's settings training_loops / training_qualify)
    training_loops: Optional[int] = Field(default=None, ge=1, le=1000)
    training_qualify: Optional[int] = Field(default=None, ge=1, le=1000)
    gitlab_exposed: Optional[StrictBool] = None  # expose a GitLab runner when ready for service

    @field_validator("pdu_port_id", mode="before")
    @classmethod
    def _port(cls, v: Any) -> Optional[str]:
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (str, int)):
            raise ValueError("a port id is a string or an integer")
        text = str(v).strip()
        if not text or len(text) > 32 or any(ord(c) < 33 for c in text):
            raise ValueError(f"{str(v)[:40]!r} is not a port id")
        return text


# ---------------------------------------------------------------------------------- sources and rates


def peer_address(host: Optional[str]) -> Optional[str]:
    """A peer's address as text (an IPv4-mapped IPv6 address as IPv4), or None if it is not an IP."""
    addr = ip_of(host)
    return None if addr is None else str(addr)


def is_loopback(host: Optional[str]) -> bool:
    """True for 127.0.0.0/8 and ::1: the gateway itself. No packet from the DUT network carries such a
    source (Linux drops it as a martian), so a loopback peer is a program on the gateway: the operator's
    tools, Vivian's simulated DUTs, QEMU DUTs on user networking."""
    address = peer_address(host)
    return address is not None and ipaddress.ip_address(address).is_loopback


class SourceRateLimit:
    """A token bucket per source address: ``burst`` registrations at once, refilled at ``per_minute``.

    A DUT registers once per boot, so it never runs out; a source posting faster is told how long to
    wait. At most ``max_sources`` buckets are kept (the least recently seen go first), so a flood of
    addresses cannot grow it without bound.
    """

    def __init__(self, per_minute: float, burst: int, max_sources: int = 4096,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if per_minute <= 0 or burst < 1:
            raise ValueError("a registration rate needs per_minute > 0 and burst >= 1")
        self.per_minute = per_minute
        self.burst = burst
        self.max_sources = max_sources
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # source -> (tokens, at)

    def take(self, source: str) -> float:
        """0.0 if ``source`` may register now (a token is taken), else the seconds until it may."""
        now = self.clock()
        tokens, at = self._buckets.pop(source, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.per_minute / 60.0)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) * 60.0 / self.per_minute
        self._buckets[source] = (tokens, now)
        while len(self._buckets) > self.max_sources:
            self._buckets.popitem(last=False)
        return wait

    def refusal(self, source: str, wait: float) -> str:
        return (
            f"too many registrations from {source}: at most {self.per_minute:g} a minute per source address "
            f"(bursts of {self.burst}); try again in {math.ceil(wait)} s"
        )


@dataclass(frozen=True)
class Registered:
    """What a registration did: the machine as stored, and why it was held for the operator (None: applied)."""

    machine: Machine
    held: Optional[str] = None


# ---------------------------------------------------------------------------------- the registry


class Outlets(Protocol):
    """What the registry checks an outlet against (PowerService)."""

    @property
    def pdus(self) -> Mapping[str, Any]: ...

    def outlet_ids(self, pdu: str) -> Optional[list[str]]: ...

    def is_reserved(self, pdu: str, port_id: str) -> bool: ...


# A registration without an outlet may claim the one discovery powered: (mac, the machine or None) ->
# (pdu, port_id) or None (DiscoveryService.claim).
Claim = Callable[[str, Optional[Machine]], Optional[tuple[str, str]]]
# Told after every stored change: (mac, action) with action "added", "updated", "held" or "removed".
Changed = Callable[[str, str], None]


class MachineService:
    def __init__(
        self,
        store: Store,
        farm_name: str,
        *,
        outlets: Optional[Outlets] = None,
        claim: Optional[Claim] = None,
        changed: Optional[Changed] = None,
        training_defaults: tuple[int, int] = (20, 19),
    ) -> None:
        """``training_defaults``: the farm's (boot loops, passes needed) for machines without their own."""
        self.store = store
        self.farm_name = farm_name
        self.outlets = outlets
        self.claim = claim
        self.changed: Changed = changed or (lambda mac, action: None)
        self.set_training_defaults(*training_defaults)
        self.machines: dict[str, Machine] = {}
        # Indexes kept in step with self.machines by _changed (machines are replaced, never changed in
        # place), so that nothing asked per machine or per registration scans the farm:
        # (pdu, port) -> the machine on that outlet (PowerService asks on every outlet change);
        self._by_outlet: dict[tuple[str, str], Machine] = {}
        # ip -> the MACs of the machines pinned to it (not retired), for the "IP already pinned" check;
        self._by_ip: dict[str, set[str]] = {}
        # the names given, and per "<farm>-<base_name>" the lowest number that may be free;
        self._names: set[str] = set()
        self._next_number: dict[str, int] = {}
        # the machines with a registration held for the operator.
        self._held: set[str] = set()
        # One writer at a time: a check made in memory still holds when the row is written.
        self._lock = asyncio.Lock()
        self.state = "starting"
        self.reason: str | None = None

    async def start(self) -> None:
        rows = await self.store.run(lambda s: list(s.exec(select(Machine)).all()))
        self.machines = {m.mac_address: m for m in rows}
        for m in rows:
            if m.full_name:
                self._names.add(m.full_name)
        await self._name_unnamed()
        for m in self.machines.values():
            self._index(m)
        self.state = "ok"

    async def _name_unnamed(self) -> None:
        """Machines stored before names were (schema v4) get them now, in the order the old derived
        name counted them (first seen, then MAC, per base name): their names stay what they were."""
        unnamed = sorted((m for m in self.machines.values() if not m.full_name),
                         key=lambda m: (m.first_seen, m.mac_address))
        if not unnamed:
            return
        names = {m.mac_address: self._allocate_name(m.base_name) for m in unnamed}

        def write(session: Session) -> None:
            for mac, name in names.items():
                row = session.get(Machine, mac)
                if row is not None:
                    row.full_name = name

        await self.store.run(write)
        for mac, name in names.items():
            self.machines[mac] = self.machines[mac].model_copy(update={"full_name": name})
        log.info("named %d machines stored without a name", len(names))

    # ---------------------------------------------------------------- indexes
    def _changed(self, machine: Machine, old: Optional[Machine], action: str) -> None:
        """After ``self.machines`` changed (a save, a removal): the indexes, then who is told."""
        if old is not None:
            self._unindex(old)
        current = self.machines.get(machine.mac_address)
        if current is not None:
            self._index(current)
        try:
            self.changed(machine.mac_address, action)
        except Exception:  # noqa: BLE001 - a reader's bug must not undo a stored change
            log.exception("telling of a change of machine %s failed", machine.mac_address)

    def _index(self, m: Machine) -> None:
        if m.pdu is not None and m.pdu_port_id is not None:
            self._by_outlet.setdefault((m.pdu, m.pdu_port_id), m)
        if not m.is_retired:
            self._by_ip.setdefault(m.ip_address, set()).add(m.mac_address)
        if m.pending_registration:
            self._held.add(m.mac_address)

    def _unindex(self, m: Machine) -> None:
        key = (m.pdu, m.pdu_port_id)
        if m.pdu is not None and m.pdu_port_id is not None:
            indexed = self._by_outlet.get(key)  # type: ignore[arg-type]
            if indexed is not None and indexed.mac_address == m.mac_address:
                del self._by_outlet[key]  # type: ignore[arg-type]
        macs = self._by_ip.get(m.ip_address)
        if macs is not None:
            macs.discard(m.mac_address)
            if not macs:
                del self._by_ip[m.ip_address]
        self._held.discard(m.mac_address)

    # ---------------------------------------------------------------- names
    def _allocate_name(self, base_name: str) -> str:
        """``<farm>-<base_name>-<n>`` with the smallest free ``n``; reserved at once (see _release_name)."""
        prefix = f"{self.farm_name}-{base_name}"
        number = self._next_number.get(prefix, 1)
        while f"{prefix}-{number}" in self._names:
            number += 1
        self._next_number[prefix] = number + 1
        name = f"{prefix}-{number}"
        self._names.add(name)
        return name

    def _release_name(self, name: Optional[str]) -> None:
        """A removed machine's name: its number is free again for the next new machine of that base name."""
        if not name or name not in self._names:
            return
        self._names.discard(name)
        prefix, _, number = name.rpartition("-")
        if number.isdigit():
            self._next_number[prefix] = min(self._next_number.get(prefix, 1), int(number))

    def full_name(self, machine: Machine) -> str:
        """The machine's stored name (``<farm>-<base_name>-<n>``, given once at its first registration)."""
        return machine.full_name or f"{self.farm_name}-{machine.base_name}"

    # ---------------------------------------------------------------- lookups
    def off_delay(self, pdu: str, port_id: str) -> float | None:
        m = self._by_outlet.get((pdu, port_id))
        return None if m is None else m.pdu_off_delay

    def machine_on(self, pdu: str, port_id: str) -> Machine | None:
        return self._by_outlet.get((pdu, port_id))

    def get(self, mac: str) -> Machine:
        try:
            key = normalise_mac(mac)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        machine = self.machines.get(key)
        if machine is None:
            raise NotFound(f"Unknown machine ID '{key}'")
        return machine

    def held_json(self) -> dict[str, Any]:
        """The registrations held for the operator: per MAC what was asked, by whom, why, and what is now."""
        out: dict[str, Any] = {}
        for mac in sorted(self._held):
            m = self.machines.get(mac)
            if m is None or not m.pending_registration:
                continue
            out[mac] = {
                **m.pending_registration,
                "full_name": self.full_name(m),
                "current": {key: getattr(m, key) for key in IDENTITY},
            }
        return out

    # ---------------------------------------------------------------- writes
    async def _save(self, machine: Machine, action: str) -> Machine:
        """Write ``machine`` (one transaction), then update memory and publish. Call with the lock held."""
        values = {name: getattr(machine, name) for name in Machine.model_fields}
        try:
            await self.store.upsert(Machine, values, machine.mac_address)
        except IntegrityError as exc:
            raise Conflict(self._integrity_words(exc, machine)) from None
        old = self.machines.get(machine.mac_address)
        self.machines[machine.mac_address] = machine
        self._changed(machine, old, action)
        return machine

    def _integrity_words(self, exc: IntegrityError, machine: Machine) -> str:
        """A constraint the database refused, in words (never the SQL statement)."""
        text = str(exc.orig)
        log.warning("machine %s not stored: %s", machine.mac_address, text)
        if "pdu_port_id" in text:
            return f"outlet {machine.pdu_port_id} of PDU {machine.pdu} is already used by another machine"
        if "full_name" in text:
            return f"the name {machine.full_name} is already another machine's"
        if "FOREIGN KEY" in text:
            return f"unknown PDU {machine.pdu!r} (was it just removed?)"
        return f"machine {machine.mac_address} conflicts with another stored machine"

    def _check_ip_free(self, ip: str, mac: str) -> None:
        """409 if ``ip`` is pinned to another machine (not retired): it would take that machine's DHCP pin."""
        others = sorted(self._by_ip.get(ip, set()) - {mac})
        if others:
            other = self.machines[others[0]]
            raise Conflict(
                f"the IP address {ip} is pinned to {self.full_name(other)} ({other.mac_address}): "
                "a machine cannot take another machine's address"
            )

    async def register(self, reg: Registration, source: Optional[str] = None) -> Registered:
        """A DUT's registration. ``source``: the DUT's address, or None when the gateway itself registers
        (loopback, a trusted network, the operator token), which may re-register anything."""
        async with self._lock:
            existing = self.machines.get(reg.mac_address)
            fields = {k: v for k, v in reg.model_dump(exclude_unset=True).items() if v is not None}
            if existing is None:
                return Registered(await self._register_new(reg.mac_address, fields, source))
            changes = self._identity_changes(existing, fields)
            reasons = self._hold_reasons(existing, changes, source)
            if reasons:
                return await self._hold(existing, changes, source or "?", reasons)
            return Registered(await self._register_again(existing, changes))

    async def _register_new(self, mac: str, fields: dict[str, Any], source: Optional[str]) -> Machine:
        missing = [k for k in ("base_name", "ip_address") if fields.get(k) is None]
        if missing:
            raise BadRequest(f"a new machine needs {' and '.join(missing)}")
        ip = fields["ip_address"]
        self._check_ip_free(ip, mac)
        if source is not None and source != ip:
            raise FarmError(
                f"this registration comes from {source} but reports {ip}: a DUT registers from the address "
                "it reports (its DHCP lease)",
                403,
            )
        machine = Machine(
            mac_address=mac,
            base_name=fields["base_name"],
            full_name=self._allocate_name(fields["base_name"]),
            tags=fields.get("tags") or [],
            ip_address=ip,
            local_tty_device=fields.get("local_tty_device"),
        )
        claimed = self.claim(mac, None) if self.claim else None
        if claimed is not None:
            machine.pdu, machine.pdu_port_id = claimed
        try:
            saved = await self._save(machine, "added")
        except BaseException:
            self._release_name(machine.full_name)
            raise
        log.info("new machine %s registered as %s (%s)", mac, machine.full_name, ip)
        return saved

    @staticmethod
    def _identity_changes(existing: Machine, fields: dict[str, Any]) -> dict[str, Any]:
        """The identity fields a registration changes (tags compare as sets, as valve-infra's check does)."""
        changes: dict[str, Any] = {}
        for key in IDENTITY:
            if key not in fields:
                continue
            value, current = fields[key], getattr(existing, key)
            same = set(value) == set(current) if key == "tags" else value == current
            if not same:
                changes[key] = value
        return changes

    @staticmethod
    def _hold_reasons(existing: Machine, changes: dict[str, Any], source: Optional[str]) -> list[str]:
        """Why a registration of a known machine waits for the operator (empty: it is applied)."""
        if source is None:
            return []
        reasons = []
        if source != existing.ip_address:
            reasons.append(f"it came from {source}, not from its own address {existing.ip_address}")
        if existing.ready_for_service and changes:
            reasons.append(f"the machine is ready for service and it changes {', '.join(changes)}")
        return reasons

    async def _hold(self, existing: Machine, changes: dict[str, Any], source: str, reasons: list[str]) -> Registered:
        previous = existing.pending_registration or {}
        machine = existing.model_copy()
        machine.pending_registration = {
            "changes": changes,
            "source": source,
            "reasons": reasons,
            "at": time.time(),
            "attempts": int(previous.get("attempts", 0)) + 1,
        }
        why = "; ".join(reasons)
        log.warning("registration of %s (%s) held for the operator: %s", existing.mac_address,
                    self.full_name(existing), why)
        saved = await self._save(machine, "held")
        return Registered(saved, held=f"registration held for the operator: {why}")

    async def _register_again(self, existing: Machine, changes: dict[str, Any]) -> Machine:
        if "ip_address" in changes:
            self._check_ip_free(changes["ip_address"], existing.mac_address)
        machine = existing.model_copy(update=changes)
        machine.last_seen = time.time()
        claimed = self.claim(existing.mac_address, existing) if self.claim else None
        if claimed is not None:
            machine.pdu, machine.pdu_port_id = claimed
        log.info("machine %s registered again%s", existing.mac_address,
                 f" (changed: {', '.join(changes)})" if changes else "")
        return await self._save(machine, "updated")

    async def approve_registration(self, mac: str) -> Machine:
        """The operator applies a held registration (its IP must still be free)."""
        async with self._lock:
            existing = self.get(mac)
            pending = self._pending(existing)
            changes = dict(pending.get("changes") or {})
            if "ip_address" in changes:
                self._check_ip_free(changes["ip_address"], existing.mac_address)
            machine = existing.model_copy(update={k: v for k, v in changes.items() if k in IDENTITY})
            machine.pending_registration = None
            machine.last_seen = max(existing.last_seen, float(pending.get("at") or 0))
            log.info("held registration of %s (%s) from %s approved by the operator: %s", existing.mac_address,
                     self.full_name(existing), pending.get("source"), ", ".join(changes) or "no change")
            return await self._save(machine, "updated")

    async def reject_registration(self, mac: str) -> Machine:
        """The operator drops a held registration: the machine stays as it is."""
        async with self._lock:
            existing = self.get(mac)
            pending = self._pending(existing)
            machine = existing.model_copy(update={"pending_registration": None})
            log.info("held registration of %s (%s) from %s rejected by the operator", existing.mac_address,
                     self.full_name(existing), pending.get("source"))
            return await self._save(machine, "updated")

    def _pending(self, machine: Machine) -> dict[str, Any]:
        if not machine.pending_registration:
            raise NotFound(f"machine {machine.mac_address} ({self.full_name(machine)}) has no held registration")
        return machine.pending_registration

    async def update(self, mac: str, patch: MachineUpdate) -> Machine:
        async with self._lock:
            return await self._update(mac, patch)

    async def _update(self, mac: str, patch: MachineUpdate) -> Machine:
        machine = self.get(mac).model_copy()
        fields = patch.model_dump(exclude_unset=True)
        if "pdu" in fields:
            machine.pdu = fields["pdu"]
            if fields["pdu"] is None:
                machine.pdu_port_id = None
        if "pdu_port_id" in fields:
            machine.pdu_port_id = fields["pdu_port_id"]
        if machine.pdu is not None:
            self._check_outlet(machine)
        elif machine.pdu_port_id is not None:
            raise BadRequest("pdu_port_id needs a pdu: set both")
        for key in (
            "local_tty_device",
            "ready_for_service",
            "manual_tags",
            "pdu_off_delay",
            "comment",
            "is_retired",
            "training_loops",
            "training_qualify",
            "gitlab_exposed",
        ):
            if key in fields:
                value = fields[key]
                if value is None and key in (
                    "ready_for_service",
                    "manual_tags",
                    "comment",
                    "is_retired",
                    "gitlab_exposed",
                ):
                    raise BadRequest(f"{key} cannot be null")
                setattr(machine, key, value)
        loops, qualify = self.training_counts(machine)
        if qualify > loops:
            raise BadRequest(
                f"training_qualify ({qualify}) cannot be more than training_loops ({loops}): "
                "the machine could never qualify"
            )
        if fields.get("is_retired") is False and self.get(mac).is_retired:
            self._check_ip_free(machine.ip_address, machine.mac_address)
        return await self._save(machine, "updated")

    def set_training_defaults(self, loops: int, qualify: int) -> None:
        """The farm's (boot loops, passes needed), for the next run of machines without their own."""
        self.training_defaults = (loops, min(qualify, loops))

    def training_counts(self, machine: Machine) -> tuple[int, int]:
        """(boot loops, passes needed) of a machine: its overrides, else the farm's settings."""
        loops = machine.training_loops if machine.training_loops is not None else self.training_defaults[0]
        qualify = machine.training_qualify if machine.training_qualify is not None else self.training_defaults[1]
        if machine.training_qualify is None:
            qualify = min(qualify, loops)  # a smaller per-machine loop count lowers the default bar with it
        return loops, qualify

    async def set_ready(self, mac: str, ready: bool, why: str) -> Machine:
        """Set ready_for_service (training results, unfit for service, operator skip); logged with ``why``."""
        async with self._lock:
            machine = self.get(mac).model_copy()
            machine.ready_for_service = ready
            state = "ready for service" if ready else "not ready for service"
            log.info("machine %s %s: %s", machine.mac_address, state, why)
            return await self._save(machine, "updated")

    def _check_outlet(self, machine: Machine) -> None:
        pdu, port = machine.pdu, machine.pdu_port_id
        if self.outlets is None or pdu is None or pdu not in self.outlets.pdus:
            raise BadRequest(f"unknown PDU {pdu!r}")
        if port is None:
            return
        ids = self.outlets.outlet_ids(pdu)
        if ids is not None and port not in ids:
            span = f"{ids[0]}..{ids[-1]}" if ids else "none"
            raise BadRequest(f"port {port!r} is out of range for PDU {pdu} (outlets {span})")
        if self.outlets.is_reserved(pdu, port):
            raise BadRequest(f"outlet {port} of PDU {pdu} is reserved")
        other = self.machine_on(pdu, port)
        if other is not None and other.mac_address != machine.mac_address:
            raise BadRequest(
                f"outlet {port} of PDU {pdu} is already used by {self.full_name(other)} ({other.mac_address})"
            )

    async def remove(self, mac: str, busy: Callable[[str], Optional[str]] = lambda mac: None) -> dict[str, Any]:
        """Forget a machine (its row and its training); its jobs' history and console log stay.

        Refused while ``busy(mac)`` names what keeps it busy (its jobs, its training). Its ``removed`` event
        follows with the machine gone from ``machines``, so training halts and the GitLab service deletes
        its runners. Its name's number
        is free again for the next new machine of the same base name.
        """
        async with self._lock:
            machine = self.get(mac)
            activity = busy(machine.mac_address)
            if activity:
                raise Conflict(
                    f"machine {machine.mac_address} is {activity}: cancel its jobs or stop its training first"
                )

            def delete(session: Session) -> None:
                for model in (Machine, Training):
                    row = session.get(model, machine.mac_address)
                    if row is not None:
                        session.delete(row)

            await self.store.run(delete)
            self.machines.pop(machine.mac_address, None)
            self._release_name(machine.full_name)
            log.info("machine %s (%s) removed", machine.mac_address, self.full_name(machine))
            self._changed(machine, machine, "removed")
            return {"removed": machine.mac_address}

    async def set_retired(self, mac: str, retired: bool) -> str:
        async with self._lock:
            machine = self.get(mac).model_copy()
            if machine.is_retired == retired:
                raise BadRequest(f"machine {machine.mac_address} is already {'retired' if retired else 'active'}")
            if not retired:
                self._check_ip_free(machine.ip_address, machine.mac_address)
            machine.is_retired = retired
            await self._save(machine, "updated")
        verb = "Retired" if retired else "Activated"
        return f"{verb} machine {machine.ip_address} in PDU/port_id: {machine.pdu} / {machine.pdu_port_id}"
