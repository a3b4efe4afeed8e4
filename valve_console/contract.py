"""The contract between the backend and its clients: every answer and event of the API, as models.

The backend declares these as its routes' ``response_model`` (so ``/openapi.json`` describes every
answer and schemathesis checks answers against it); :class:`valve_console.client.FarmClient` parses
answers into them and the console's farm model holds them. Both sides import this module and nothing
else of each other.

Answers carry the keys declared here. A key the backend adds without declaring it is kept in
production (``extra="allow"``: valve-infra's tools and older clients read the JSON, not these models)
but refused when ``VALVE_CONSOLE_STRICT_CONTRACT=1`` (the test suite sets it), so an undeclared or
renamed key fails a test instead of reaching a client silently.
"""

from __future__ import annotations

import os
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

STRICT = os.environ.get("VALVE_CONSOLE_STRICT_CONTRACT") == "1"


class Answer(BaseModel):
    """A part of an answer or event (see the module's note on undeclared keys)."""

    model_config = ConfigDict(extra="forbid" if STRICT else "allow")


# ---------------------------------------------------------------------------------------- machines
class TrainingResult(Answer):
    model_config = ConfigDict(extra="allow")  # a loop's record: loop, status, job, at, and what it found

    loop: int = 0
    status: Optional[str] = None
    job: Optional[str] = None
    why: Optional[str] = None
    at: Optional[float] = None


class Training(Answer):
    """Sgt. Hartman's run for one machine: valve-infra's keys first (its dashboard reads them), then ours."""

    is_active: bool
    is_registered: bool
    boot_loop_counts: int
    qualifying_rate: int
    current_loop_count: int
    statuses: dict[str, int]
    state: str
    loop: int
    loops: int
    qualify: int
    passes: int
    results: list[TrainingResult]
    failures: list[TrainingResult]
    attempt: int
    next_attempt_at: Optional[float] = None
    reason: Optional[str] = None
    job: Optional[str] = None
    started_at: Optional[float] = None
    updated_at: Optional[float] = None


class MachineOutlet(Answer):
    name: Optional[str] = None
    port_id: Optional[str] = None


class TokenCheck(Answer):
    verified_at: Optional[float] = None
    verify: Optional[str] = None
    token_expires_at: Optional[str] = None


class MachineRunner(TokenCheck):
    instance: str
    runner_id: Optional[int] = None
    state: str
    error: Optional[str] = None


class PendingRegistration(Answer):
    """A registration held for the operator: what it would change, from where, why it was held."""

    changes: dict[str, Any]
    source: Optional[str] = None
    reasons: list[str] = []
    at: float
    attempts: int = 1


class PowerFlag(Answer):
    """What the power draw says of a machine that is on: ``no_draw`` (on, but nothing drawn: "no power
    draw: check its plug or PSU") or ``silent`` (steady power, its console silent past the limit:
    "powered but silent")."""

    kind: Literal["no_draw", "silent"]
    reason: str
    since: float


class Machine(Answer):
    mac_address: str
    base_name: Optional[str] = None
    full_name: str
    tags: list[str] = Field(description="what the DUT registered (what `machine_registration check` compares)")
    registered_tags: list[str]
    manual_tags: list[str]
    all_tags: list[str] = Field(description="registered and manual tags: what jobs match")
    ip_address: Optional[str] = None
    local_tty_device: Optional[str] = None
    pdu: MachineOutlet
    has_pdu_assigned: bool
    pdu_off_delay: Optional[float] = None
    pdu_off_delay_is_default: bool
    ready_for_service: bool
    is_retired: bool
    available: bool
    comment: str = ""
    state: str
    state_since: Optional[float] = Field(
        default=None, description="since when the machine is in `state` (Unix time; at most since the backend started)")
    training: Optional[Training] = None
    training_loops: Optional[int] = None
    training_qualify: Optional[int] = None
    gitlab_exposed: bool
    runners: list[MachineRunner]
    pending_registration: Optional[PendingRegistration] = Field(
        default=None, description="a registration held for the operator: changes, source, reasons, at, attempts")
    first_seen: Optional[float] = None
    last_seen: Optional[float] = None
    power_flag: Optional[PowerFlag] = Field(
        default=None, description="a health warning read from the outlet's power draw (metered outlets)")


class Machines(Answer):
    machines: dict[str, Machine]


# -------------------------------------------------------------------------------------- PDUs
class OutletPower(Answer):
    """An outlet's latest meter reading (SI units; None: not offered by this meter)."""

    watts: Optional[float] = None
    amps: Optional[float] = None
    volts: Optional[float] = None
    energy_wh: Optional[float] = Field(default=None, description="the meter's cumulative counter")
    at: float = Field(description="when it was read (Unix time)")


class Outlet(Answer):
    label: Optional[str] = None
    state: str
    reserved: bool
    locked_by: Optional[str] = None
    min_off_time: float
    changed_at: Optional[float] = None
    metered: bool = Field(default=False, description="the PDU meters this outlet")
    power: Optional[OutletPower] = Field(default=None, description="the latest reading (metered outlets)")
    mismatch: Optional[str] = Field(
        default=None, description="the last switch read back another state (in words), until a switch reads back right")


class OutletOf(Outlet):
    """An outlet with the PDU it is on (outlet answers and events)."""

    pdu: str
    port_id: str


class Pdu(Answer):
    name: str
    driver: str
    pdu_model: str
    config: dict[str, Any]
    reserved_ports: list[str]
    state: Literal["unknown", "reachable", "unreachable"]
    error: Optional[str] = None
    ports: dict[str, Outlet]
    metered: bool = Field(default=False, description="the PDU meters power (some or all outlets, or its total)")
    total_watts: Optional[float] = Field(default=None, description="the PDU's own total, where it reports one")
    power_at: Optional[float] = Field(default=None, description="when power was last read")


class PowerSeries(Answer):
    """``GET /api/v1/pdu/{name}/port/{id}/power?since=``: an outlet's readings, oldest first; recent ones
    as sampled, older ones downsampled from the store. ``points``: ``[t, watts]``."""

    pdu: str
    port_id: str
    machine: Optional[str] = Field(default=None, description="the MAC of the machine on the outlet")
    points: list[tuple[float, float]]
    interval: float = Field(description="the sampler's period for this PDU (seconds)")
    boots: list[float] = Field(default_factory=list, description="when the outlet went ON since `since`")


class Pdus(Answer):
    pdus: dict[str, Pdu]


# ----------------------------------------------------------------------------------- consoles
class Console(Answer):
    mac: str
    source: Optional[str] = None
    connected: bool
    device: Optional[str] = None
    remote: Optional[str] = None
    baud: Optional[int] = None
    tcp_host: Optional[str] = None
    tcp_port: Optional[int] = None
    tcp_error: Optional[str] = None
    writer: Optional[str] = None
    viewers: int
    bytes: int
    buffered: int
    last_activity: Optional[float] = None
    log_path: str
    provisional: bool


class SerialDevice(Answer):
    model_config = ConfigDict(extra="allow")  # what udev/sysfs say of the device (serial, vendor, path...)

    identity: str
    devnode: Optional[str] = None
    serial: Optional[str] = None
    machine: Optional[str] = None
    open: bool
    error: Optional[str] = None


class Consoles(Answer):
    consoles: dict[str, Console]
    devices: dict[str, SerialDevice]


class UnboundStream(Answer):
    id: str
    name: str
    kind: str
    source: Optional[str] = None
    device: Optional[str] = None
    machine: Optional[str] = None
    announced: Optional[str] = None
    waiting: Optional[str] = None
    connected_for: float
    idle: float
    bytes: int
    tail: str


class UnboundStreams(Answer):
    streams: dict[str, UnboundStream]


# --------------------------------------------------------------------------------------- jobs
class JobTarget(Answer):
    """What the job asked for: a machine (``id``: its MAC or name) and/or tags it must have."""

    id: Optional[str] = None
    tags: list[str] = Field(default_factory=list)


class Job(Answer):
    id: str
    machine: str
    status: Optional[str] = None
    state: str
    position: int
    submitted_at: float
    started_at: Optional[float] = None
    ended_at: Optional[float] = None
    target: JobTarget
    result: Optional[str] = None
    console_start: Optional[int] = None
    console_end: Optional[int] = None
    training: Optional[str] = None
    job: Optional[str] = Field(default=None, description="the job's text (a single job's answer only)")
    energy_j: Optional[float] = Field(
        default=None, description="energy the machine's outlet drew during the job, in joules (metered outlets)")


class Jobs(Answer):
    jobs: list[Job]


# ------------------------------------------------------------------------------------- health
class ServiceHealth(Answer):
    state: str
    reason: Optional[str] = None


class Health(Answer):
    status: str
    farm_name: str
    version: str
    api: Optional[str] = None
    netconsole: Optional[str] = None
    uptime: float
    services: dict[str, ServiceHealth]


class NetworkInterface(Answer):
    name: str
    state: str
    speed: Optional[int] = None
    mac: Optional[str] = None
    addresses: list[str]


class Gateway(Answer):
    interfaces: list[NetworkInterface]


# ---------------------------------------------------------------------------------- discovery
class DiscoveryOutlet(Answer):
    pdu: str
    port_id: str


class DiscoveryCurrent(DiscoveryOutlet):
    """The running discovery: ``remaining`` seconds were left when the answer was made."""

    timeout: float
    started_at: Optional[float] = None
    remaining: float
    waiting: bool = False


class DiscoveryStatus(Answer):
    current: Optional[DiscoveryCurrent] = None
    queue: list[DiscoveryOutlet] = []


class DiscoveryStarted(Answer):
    message: str
    discovery: DiscoveryCurrent


class OutletsDiscovery(DiscoveryStatus):
    """``POST /api/v1/pdu/{name}/discover``: every free outlet queued, one after another."""

    message: str


# ------------------------------------------------------------------------------------- GitLab
class GatewayRunner(TokenCheck):
    runner_id: Optional[int] = None
    description: str
    tags: list[str]
    state: str
    error: Optional[str] = None


class GitlabInstance(Answer):
    name: str
    url: str
    token: str
    registration_token: Optional[str] = None
    farm_name: Optional[str] = None
    expose_runners: bool
    farm_tags: list[str]
    state: str
    reason: Optional[str] = None
    last_sync: Optional[float] = None
    last_attempt: Optional[float] = None
    failures: int = 0
    retry_in: Optional[float] = None
    runners: int
    gateway_runner: Optional[GatewayRunner] = None
    last_verify: Optional[float] = None
    verify_result: Optional[str] = None
    # GET /version's answer at the last full sync (None: not known); Vivian's stand-in says "<x.y.z>-vivian"
    version: Optional[str] = None


class GitlabRunner(TokenCheck):
    model_config = ConfigDict(extra="allow")

    instance: str
    mac_address: Optional[str] = None
    gateway: bool = False
    runner_id: Optional[int] = None
    description: str = ""
    tags: list[str] = []
    error: Optional[str] = None


class Gitlab(Answer):
    instances: dict[str, GitlabInstance]
    runners: list[GitlabRunner]
    config_path: str
    config_written_at: Optional[float] = None  # when config.toml was last written
    config_runners: int = 0  # its [[runners]]
    allowed_users: list[str] = []  # the pre-build filter (both empty: every job runs)
    allowed_namespaces: list[str] = []
    state: str
    reason: Optional[str] = None


class GitlabRemoved(Answer):
    removed: str
    runners_left_on_gitlab: list[int]


# ------------------------------------------------------------------------------------- settings
class Setting(Answer):
    """One effective setting (``GET /api/v1/settings``). ``value`` is masked (``********``) when ``secret``;
    ``source``: default, environment, command line, start-up or data dir file; ``variable`` sets it;
    ``overrides``: what a value stored in the data dir file wins over, in words."""

    name: str
    value: Any = None
    source: str
    variable: str
    editable: bool
    secret: bool = False
    overrides: Optional[str] = None


class FarmSettings(Answer):
    """Every setting of the farm; ``file`` keeps the ones changed at run time; ``editable``: their names.
    Also the data of ``settings`` events (published after each change)."""

    settings: list[Setting]
    file: str
    editable: list[str]

    def get(self, name: str) -> Optional[Setting]:
        return next((s for s in self.settings if s.name == name), None)


# ------------------------------------------------------------------------------------- events
class MachineEvent(Answer):
    action: str
    mac: str
    machine: Optional[Machine] = None


class PduEvent(Answer):
    action: Literal["added", "updated", "removed"]
    name: str
    pdu: Optional[Pdu] = None


class ConsoleRemoved(Answer):
    mac: str
    removed: Literal[True]


class ConsoleEvent(Answer):
    mac: str
    text: str = ""
    console: Optional[Union[Console, ConsoleRemoved]] = None


class HealthEvent(Answer):
    service: str
    state: str
    reason: Optional[str] = None


class DiscoveryEvent(Answer):
    """A discovery's step: ``started`` (with its timeout), ``found`` (with the machine's mac),
    ``timeout`` or ``cancelled``; ``queue`` is what is left to discover."""

    state: str
    pdu: str
    port_id: str
    queue: list[DiscoveryOutlet] = []
    timeout: Optional[float] = None
    mac: Optional[str] = None


class LogEntry(Answer):
    """One record of the backend's log (``GET /api/v1/log`` and ``log`` events)."""

    ts: float
    level: str
    priority: int
    logger: str
    message: str


class JournalEntry(Answer):
    """One entry of the system journal (``journal`` events)."""

    ts: float
    priority: int
    unit: str
    message: str
    hostname: str = ""


class BackendLog(Answer):
    entries: list[LogEntry]


class Dropped(Answer):
    """Events lost for this reader (its queue overflowed): it refetches. ``count`` is what the bus sends."""

    count: int


EVENT_DATA: dict[str, type[BaseModel]] = {
    "machine": MachineEvent,
    "pdu": PduEvent,
    "outlet": OutletOf,
    "console": ConsoleEvent,
    "health": HealthEvent,
    "job": Job,
    "dropped": Dropped,
    "discovery": DiscoveryEvent,
    "log": LogEntry,
    "journal": JournalEntry,
    "settings": FarmSettings,
}
"""The model of each event type's ``data``; the others (gitlab) are free-form."""


class Event(Answer):
    type: str
    seq: int
    ts: float
    data: dict[str, Any]

    _parsed: Any = PrivateAttr(default=None)

    def parsed(self) -> Any:
        """The event's data as its model (EVENT_DATA), or the dict for free-form types. Parsed once:
        the client checks each event as it arrives and its reader gets the same model."""
        if self._parsed is None:
            model = EVENT_DATA.get(self.type)
            self._parsed = model.model_validate(self.data) if model is not None else self.data
        return self._parsed


# ------------------------------------------------------------------------------ small answers
class Removed(Answer):
    removed: str


class Written(Answer):
    written: int


class OutletSwitched(Answer):
    pdu: str
    port_id: str
    state: str


class Drivers(Answer):
    drivers: list[str]
