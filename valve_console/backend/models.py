"""SQLModel tables. Every schema change ships with a migration in ``store.MIGRATIONS``."""

from __future__ import annotations

import time
from typing import Any, Optional

from sqlalchemy import JSON, Column, Index, UniqueConstraint
from sqlmodel import Field, SQLModel


def now() -> float:
    return time.time()


class Pdu(SQLModel, table=True):
    name: str = Field(primary_key=True)
    driver: str
    config: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    reserved_ports: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    created_at: float = Field(default_factory=now)


class Machine(SQLModel, table=True):
    __table_args__ = (
        UniqueConstraint("pdu", "pdu_port_id", name="uq_machine_outlet"),
        Index("ix_machine_full_name", "full_name", unique=True),
    )

    mac_address: str = Field(primary_key=True)
    base_name: str
    tags: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    manual_tags: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    ip_address: str
    local_tty_device: Optional[str] = None
    pdu: Optional[str] = Field(default=None, foreign_key="pdu.name")
    pdu_port_id: Optional[str] = None
    pdu_off_delay: Optional[float] = None  # None: the farm's default
    ready_for_service: bool = False
    is_retired: bool = False
    comment: str = ""
    first_seen: float = Field(default_factory=now)
    last_seen: float = Field(default_factory=now)
    # v4: per-machine Sgt. Hartman overrides (None: the farm's settings) and GitLab exposure
    training_loops: Optional[int] = None
    training_qualify: Optional[int] = None
    gitlab_exposed: bool = True
    # v5: the name, given once at the first registration (``<farm>-<base_name>-<n>``, registration.py), and a
    # registration held for the operator ({changes, source, reasons, at, attempts}, or None).
    full_name: Optional[str] = None
    pending_registration: Optional[dict[str, Any]] = Field(default=None, sa_column=Column(JSON, nullable=True))


class OutletLog(SQLModel, table=True):
    """Every outlet change the farm made or saw: the history, and the last OFF for min-off time."""

    __table_args__ = (Index("ix_outletlog_port", "pdu", "port_id", "at"),)

    id: Optional[int] = Field(default=None, primary_key=True)
    pdu: str
    port_id: str
    state: str
    at: float = Field(default_factory=now)
    source: str = "farm"  # farm (a command), poll (seen by polling), api


class MachineConsole(SQLModel, table=True):
    """A machine's console: its fixed TCP port index, its serial device and its remote source.

    ``tcp_index`` is allocated once and never given to another machine (the TCP port is
    ``console_tcp_base + tcp_index``). ``device`` is a serial device identity (see
    ``drivers.serial.SerialDeviceInfo.identity``), bound by a ``SALAD.machine_id=`` marker or by
    the operator; a device belongs to at most one machine (enforced by the console hub).
    """

    __table_args__ = (UniqueConstraint("tcp_index", name="uq_machineconsole_tcp_index"),)

    mac_address: str = Field(primary_key=True)
    tcp_index: int
    device: Optional[str] = Field(default=None, index=True)
    device_set_by: Optional[str] = None  # marker | operator
    remote_url: Optional[str] = None  # tcp://HOST:PORT or rfc2217://HOST:PORT (ser2net)
    created_at: float = Field(default_factory=now)
    updated_at: float = Field(default_factory=now)


class JobRow(SQLModel, table=True):
    """A job: submitted, queued, run by the executor, finished. Kept as history (v3)."""

    __tablename__ = "job"
    __table_args__ = (Index("ix_job_machine", "machine", "submitted_at"),)

    id: str = Field(primary_key=True)
    machine: Optional[str] = None  # MAC of the machine it runs on
    status: str = "QUEUED"  # QUEUED, RUNNING, then a JobStatus name (PASS, FAIL, INCOMPLETE...)
    state: str = "queued"  # queued, running, teardown, done, cancelled
    submitted_at: float = Field(default_factory=now)
    started_at: Optional[float] = None
    ended_at: Optional[float] = None
    job_text: str = ""
    target: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    result: str = ""  # the end in words (why it ended)
    console_start: Optional[int] = None  # offsets in the machine's console stream
    console_end: Optional[int] = None
    position: int = 0  # jobs ahead of it when submitted
    energy_j: Optional[float] = None  # v6: what the machine's outlet drew during the job (metered outlets)


class PowerHistory(SQLModel, table=True):
    """An outlet's power over one period (a minute), downsampled from the sampler's readings (v6); kept
    ``power_history_days``. ``energy_j``: what it drew in the period (meter counter or W x dt)."""

    __tablename__ = "power_history"
    __table_args__ = (Index("ix_power_history_at", "at"),)

    pdu: str = Field(primary_key=True)
    port_id: str = Field(primary_key=True)
    at: float = Field(primary_key=True)  # the period's start (Unix time)
    avg_w: float
    min_w: float
    max_w: float
    energy_j: float = 0.0
    samples: int = 0


class Training(SQLModel, table=True):
    """A machine's Sgt. Hartman training: the current or last run, its loops and results (v4).

    ``state``: registering, looping, cooldown (failed, retried at ``next_attempt_at``), qualified, stopped,
    skipped.
    ``results``: one dict per finished step ``{"loop", "job", "status", "at", "why"}`` (loop 0 is
    the registration job). ``attempt`` counts consecutive failed trainings (for the back-off).
    """

    mac_address: str = Field(primary_key=True)
    state: str = "registering"
    loop: int = 0
    loops: int = 0
    qualify: int = 0
    passes: int = 0
    results: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    attempt: int = 0
    next_attempt_at: Optional[float] = None
    reason: str = ""  # why this training run started (new machine, unfit for service, operator...)
    started_at: float = Field(default_factory=now)
    updated_at: float = Field(default_factory=now)


class GitlabInstance(SQLModel, table=True):
    """A GitLab instance the farm exposes runners on (v4). ``token`` is a secret, never shown."""

    __tablename__ = "gitlab_instance"

    name: str = Field(primary_key=True)
    url: str
    token: str = ""  # an access token able to create runners (POST /user/runners)
    registration_token: Optional[str] = None  # the legacy fallback (POST /runners)
    farm_name: str
    expose_runners: bool = True
    farm_tags: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    created_at: float = Field(default_factory=now)


class GitlabRunner(SQLModel, table=True):
    """One runner of one machine on one GitLab instance (v4). ``token`` is a secret."""

    __tablename__ = "gitlab_runner"

    instance: str = Field(primary_key=True)
    mac_address: str = Field(primary_key=True)
    runner_id: int
    token: str
    description: str
    tags: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    created_at: float = Field(default_factory=now)
    updated_at: float = Field(default_factory=now)


class SchemaVersion(SQLModel, table=True):
    id: int = Field(default=1, primary_key=True)
    version: int
