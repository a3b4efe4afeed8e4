"""MaRS: the machine registry. DUTs register themselves; operators configure them.

Machines are kept in memory (read from the database at start) and every change is written
through to the database in one transaction before it is published as a ``machine`` event.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import time
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator
from sqlmodel import Session, select

from .errors import BadRequest, Conflict, NotFound
from .events import EventBus
from .models import Machine, Training
from .store import Store

if TYPE_CHECKING:
    from .discovery import DiscoveryService
    from .power import PowerService

log = logging.getLogger(__name__)

_MAC = re.compile(r"^[0-9a-f]{2}([-:]?)[0-9a-f]{2}(\1[0-9a-f]{2}){4}$")
_TTY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,63}$")
_BASE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def normalise_mac(value: str) -> str:
    """``AA-BB-CC-DD-EE-FF``, ``aabbccddeeff`` or ``aa:bb:...`` → ``aa:bb:cc:dd:ee:ff``."""
    text = str(value).strip().lower()
    if not _MAC.match(text):
        raise ValueError(f"{value!r} is not a MAC address (expected aa:bb:cc:dd:ee:ff)")
    digits = re.sub(r"[^0-9a-f]", "", text)
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


def _check_tags(tags: list[str]) -> list[str]:
    if len(tags) > 256:
        raise ValueError("at most 256 tags")
    for tag in tags:
        if not tag or len(tag) > 256 or any(ord(c) < 32 for c in tag):
            raise ValueError(f"invalid tag {tag[:40]!r}: 1-256 printable characters")
    return list(dict.fromkeys(tags))


class Registration(BaseModel):
    """What a DUT sends: valve-infra's five fields, and nothing else."""

    model_config = ConfigDict(extra="forbid")

    base_name: Optional[str] = None
    tags: Optional[list[str]] = None
    mac_address: str
    ip_address: Optional[str] = None
    local_tty_device: Optional[str] = None

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
        if v is not None and not _BASE_NAME.match(v):
            raise ValueError(f"{v[:40]!r} is not a base name (1-64 letters, digits, '.', '_' or '-')")
        return v

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: Optional[list[str]]) -> Optional[list[str]]:
        return None if v is None else _check_tags(v)

    @field_validator("local_tty_device")
    @classmethod
    def _tty(cls, v: Optional[str]) -> Optional[str]:
        if v is not None:
            v = v.removeprefix("/dev/")
            if not _TTY.match(v):
                raise ValueError(f"{v[:40]!r} is not a tty device name (e.g. ttyUSB0)")
        return v


class MachineUpdate(BaseModel):
    """What an operator may change on a machine (PATCH)."""

    model_config = ConfigDict(extra="forbid")

    pdu: Optional[str] = None
    pdu_port_id: Optional[Union[str, int]] = None
    local_tty_device: Optional[str] = None
    ready_for_service: Optional[StrictBool] = None
    manual_tags: Optional[list[str]] = None
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

    @field_validator("manual_tags")
    @classmethod
    def _tags(cls, v: Optional[list[str]]) -> Optional[list[str]]:
        return None if v is None else _check_tags(v)

    @field_validator("local_tty_device")
    @classmethod
    def _tty(cls, v: Optional[str]) -> Optional[str]:
        return Registration._tty(v)


class MachineService:
    def __init__(self, store: Store, bus: EventBus, farm_name: str, power: "PowerService | None" = None) -> None:
        self.store = store
        self.bus = bus
        self.farm_name = farm_name
        self.power = power
        self.machines: dict[str, Machine] = {}
        # (pdu, port) -> the machine on that outlet: PowerService asks on every outlet change
        # (min-off time, the machine to tell), so it must not scan every machine. Rebuilt whenever
        # self.machines changes (start, _save, remove: the only writers; Machines are replaced, not
        # changed in place).
        self._by_outlet: dict[tuple[str, str], Machine] = {}
        self.discovery: "DiscoveryService | None" = None
        # The executor's view of a machine: "QUEUED"/"RUNNING" while it has jobs, else None.
        self.job_state: Callable[[str], Optional[str]] = lambda mac: None
        # Sgt. Hartman (training.py): "TRAINING" while a machine trains, and its training JSON.
        self.training_state: Callable[[str], Optional[str]] = lambda mac: None
        self.training_json: Callable[[str], Optional[dict[str, Any]]] = lambda mac: None
        self.training_defaults: tuple[int, int] = (20, 19)  # (loops, qualify) of the settings
        # Called after every stored change with (new, old or None); they must not raise or block.
        self.listeners: list[Callable[[Machine, Optional[Machine]], None]] = []
        # GitLab runners (gitlab.py): a machine's runners for its JSON
        self.runner_info: Callable[[str], list[dict[str, Any]]] = lambda mac: []
        self.state = "starting"
        self.reason: str | None = None

    async def start(self) -> None:
        rows = await self.store.run(lambda s: list(s.exec(select(Machine)).all()))
        self.machines = {m.mac_address: m for m in rows}
        self._index_outlets()
        self.state = "ok"

    def _changed(self, machine: Machine, old: Optional[Machine]) -> None:
        """After ``self.machines`` changed (a save, a removal): the outlet index, then the listeners."""
        self._index_outlets()
        for listener in list(self.listeners):
            try:
                listener(machine, old)
            except Exception:  # noqa: BLE001 - a listener's bug must not undo a stored change
                log.exception("machine listener failed")

    def _index_outlets(self) -> None:
        index: dict[tuple[str, str], Machine] = {}
        for m in self.machines.values():
            if m.pdu is not None and m.pdu_port_id is not None:
                index.setdefault((m.pdu, m.pdu_port_id), m)  # the first one, as a scan would find
        self._by_outlet = index

    # ---------------------------------------------------------------- derived values
    def full_name(self, machine: Machine) -> str:
        earlier = sum(
            1
            for m in self.machines.values()
            if m.base_name == machine.base_name
            and (m.first_seen, m.mac_address) < (machine.first_seen, machine.mac_address)
        )
        return f"{self.farm_name}-{machine.base_name}-{earlier + 1}"

    def state_of(self, m: Machine) -> str:
        if m.is_retired:
            return "RETIRED"
        if not m.pdu or m.pdu_port_id is None:
            return "WAIT_FOR_CONFIG"
        running = self.job_state(m.mac_address)
        if running is not None:
            return running
        if not m.ready_for_service and self.training_state(m.mac_address) is not None:
            return "TRAINING"
        return "IDLE" if m.ready_for_service else "NOT_READY"

    def off_delay(self, pdu: str, port_id: str) -> float | None:
        m = self._by_outlet.get((pdu, port_id))
        return None if m is None else m.pdu_off_delay

    def machine_on(self, pdu: str, port_id: str) -> Machine | None:
        return self._by_outlet.get((pdu, port_id))

    def to_json(self, m: Machine) -> dict[str, Any]:
        delay = m.pdu_off_delay
        if delay is None and self.power is not None:
            delay = self.power.default_off_delay
        return {
            "mac_address": m.mac_address,
            "base_name": m.base_name,
            "full_name": self.full_name(m),
            # valve-infra's "tags" are what the DUT registered: `machine_registration check` compares them
            # with what it detects. Job matching uses all_tags (those and the operator's manual tags).
            "tags": list(m.tags),
            "registered_tags": list(m.tags),
            "manual_tags": list(m.manual_tags),
            "all_tags": list(dict.fromkeys([*m.tags, *m.manual_tags])),
            "ip_address": m.ip_address,
            "local_tty_device": m.local_tty_device,
            "pdu": {"name": m.pdu, "port_id": m.pdu_port_id},
            "has_pdu_assigned": bool(m.pdu and m.pdu_port_id is not None),
            "pdu_off_delay": delay,
            "pdu_off_delay_is_default": m.pdu_off_delay is None,
            "ready_for_service": m.ready_for_service,
            "is_retired": m.is_retired,
            "available": m.ready_for_service and not m.is_retired,
            "comment": m.comment,
            "state": self.state_of(m),
            "training": self.training_json(m.mac_address),
            "training_loops": m.training_loops,
            "training_qualify": m.training_qualify,
            "gitlab_exposed": m.gitlab_exposed,
            "runners": self.runner_info(m.mac_address),
            "first_seen": m.first_seen,
            "last_seen": m.last_seen,
        }

    def get(self, mac: str) -> Machine:
        try:
            key = normalise_mac(mac)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        machine = self.machines.get(key)
        if machine is None:
            raise NotFound(f"Unknown machine ID '{key}'")
        return machine

    def list_json(self) -> dict[str, Any]:
        return {mac: self.to_json(m) for mac, m in sorted(self.machines.items())}

    # ---------------------------------------------------------------- writes
    async def _save(self, machine: Machine, action: str) -> dict[str, Any]:
        values = {name: getattr(machine, name) for name in Machine.model_fields}

        def write(session: Session) -> None:
            row = session.get(Machine, machine.mac_address)
            if row is None:
                session.add(Machine(**values))
            else:
                for name, value in values.items():
                    setattr(row, name, value)

        await self.store.run(write)
        old = self.machines.get(machine.mac_address)
        self.machines[machine.mac_address] = machine
        self._changed(machine, old)
        data = self.to_json(machine)
        self.bus.publish("machine", {"action": action, "mac": machine.mac_address, "machine": data})
        return data

    async def register(self, reg: Registration) -> dict[str, Any]:
        existing = self.machines.get(reg.mac_address)
        fields = reg.model_dump(exclude_unset=True)
        if existing is None:
            missing = [k for k in ("base_name", "ip_address") if fields.get(k) is None]
            if missing:
                raise BadRequest(f"a new machine needs {' and '.join(missing)}")
            machine = Machine(
                mac_address=reg.mac_address,
                base_name=fields["base_name"],
                tags=fields.get("tags") or [],
                ip_address=fields["ip_address"],
                local_tty_device=fields.get("local_tty_device"),
            )
            action = "added"
            log.info("new machine %s registered (%s, %s)", reg.mac_address, machine.base_name, machine.ip_address)
        else:
            machine = existing.model_copy()
            for key, value in fields.items():
                if key != "mac_address" and value is not None:
                    setattr(machine, key, value)
            machine.last_seen = time.time()
            action = "updated"
            log.info("machine %s registered again", reg.mac_address)
        claimed = self.discovery.claim(reg.mac_address, existing) if self.discovery else None
        if claimed is not None:
            machine.pdu, machine.pdu_port_id = claimed
        return await self._save(machine, action)

    async def update(self, mac: str, patch: MachineUpdate) -> dict[str, Any]:
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
        return await self._save(machine, "updated")

    def training_counts(self, machine: Machine) -> tuple[int, int]:
        """(boot loops, passes needed) of a machine: its overrides, else the farm's settings."""
        loops = machine.training_loops if machine.training_loops is not None else self.training_defaults[0]
        qualify = machine.training_qualify if machine.training_qualify is not None else self.training_defaults[1]
        if machine.training_qualify is None:
            qualify = min(qualify, loops)  # a smaller per-machine loop count lowers the default bar with it
        return loops, qualify

    async def set_ready(self, mac: str, ready: bool, why: str) -> dict[str, Any]:
        """Set ready_for_service (training results, unfit for service, operator skip); logged with ``why``."""
        machine = self.get(mac).model_copy()
        machine.ready_for_service = ready
        state = "ready for service" if ready else "not ready for service"
        log.info("machine %s %s: %s", machine.mac_address, state, why)
        return await self._save(machine, "updated")

    def _check_outlet(self, machine: Machine) -> None:
        pdu, port = machine.pdu, machine.pdu_port_id
        if self.power is None or pdu not in self.power.pdus:
            raise BadRequest(f"unknown PDU {pdu!r}")
        if port is None:
            return
        ids = self.power.outlet_ids(pdu)
        if ids is not None and port not in ids:
            span = f"{ids[0]}..{ids[-1]}" if ids else "none"
            raise BadRequest(f"port {port!r} is out of range for PDU {pdu} (outlets {span})")
        if self.power.is_reserved(pdu, port):
            raise BadRequest(f"outlet {port} of PDU {pdu} is reserved")
        other = self.machine_on(pdu, port)
        if other is not None and other.mac_address != machine.mac_address:
            raise BadRequest(
                f"outlet {port} of PDU {pdu} is already used by {self.full_name(other)} ({other.mac_address})"
            )

    async def remove(self, mac: str) -> dict[str, Any]:
        """Forget a machine (its row and its training); its jobs' history and console log stay.

        Refused while it has jobs or trains. Listeners are told with the machine gone from
        ``machines``, so training halts and the GitLab service deletes its runners.
        """
        machine = self.get(mac)
        busy = self.job_state(machine.mac_address) or self.training_state(machine.mac_address)
        if busy:
            raise Conflict(f"machine {machine.mac_address} is {busy}: cancel its jobs or stop its training first")

        def delete(session: Session) -> None:
            for model in (Machine, Training):
                row = session.get(model, machine.mac_address)
                if row is not None:
                    session.delete(row)

        await self.store.run(delete)
        self.machines.pop(machine.mac_address, None)
        self._changed(machine, machine)
        log.info("machine %s (%s) removed", machine.mac_address, self.full_name(machine))
        self.bus.publish("machine", {"action": "removed", "mac": machine.mac_address, "machine": None})
        return {"removed": machine.mac_address}

    async def set_retired(self, mac: str, retired: bool) -> str:
        machine = self.get(mac).model_copy()
        if machine.is_retired == retired:
            raise BadRequest(f"machine {machine.mac_address} is already {'retired' if retired else 'active'}")
        machine.is_retired = retired
        await self._save(machine, "updated")
        verb = "Retired" if retired else "Activated"
        return f"{verb} machine {machine.ip_address} in PDU/port_id: {machine.pdu} / {machine.pdu_port_id}"
