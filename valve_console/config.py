"""Settings: every one can also be given as the environment variable ``VALVE_CONSOLE_<NAME>``."""

from __future__ import annotations

import os
import re
from pathlib import Path

from typing import Annotated, Literal

from pydantic import AliasChoices, Field, PrivateAttr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def default_data_dir() -> Path:
    if Path("/mnt/permanent").is_dir() and os.access("/mnt/permanent", os.W_OK):
        return Path("/mnt/permanent/valve-console")
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "valve-console"


def _env_list(value: object) -> object:
    """A list setting given as text (an environment variable): a JSON list, or comma-separated items."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        import json

        return json.loads(text)
    return [part for part in (p.strip() for p in text.split(",")) if part]


NETCONSOLE_PORT = 8100


PRIVATE_IP_DEFAULT = "10.42.0.1/24"
DHCP_RANGE_DEFAULT = "10.42.0.10,10.42.0.100"


def _private_interface(text: str | None) -> str:
    """``VALVE_CONSOLE_PRIVATE_IP`` as given (blank: the default 10.42.0.1/24)."""
    return (text or "").strip() or PRIVATE_IP_DEFAULT


def _private_address(text: str | None) -> str:
    """The address without its prefix; the default's when ``text`` is not an address."""
    import ipaddress

    try:
        return str(ipaddress.ip_interface(_private_interface(text)).ip)
    except ValueError:
        return str(ipaddress.ip_interface(PRIVATE_IP_DEFAULT).ip)


def default_netconsole(private_ip: str | None = None, explicit: bool = False) -> tuple[str, str | None]:
    """The netconsole's default address and, when it had to fall back, why (for the log).

    The private network's address (``VALVE_CONSOLE_PRIVATE_IP``, default 10.42.0.1/24) port 8100, so
    the console port is not offered on the public NIC. When ``VALVE_CONSOLE_PRIVATE_IP`` is set (the
    gateway's units set it: ``explicit``), that address is used even while no interface has it yet: the
    private NIC may come up after the backend, and the socket (bound with IP_FREEBIND) accepts once it is
    there. A machine where it is not set and 10.42.0.1 is absent (a laptop, the demo) listens on loopback
    instead. ``--netconsole 0.0.0.0:8100`` still listens everywhere.
    """
    import ipaddress

    text = _private_interface(private_ip)
    try:
        private = ipaddress.ip_interface(text).ip
    except ValueError:
        return f"127.0.0.1:{NETCONSOLE_PORT}", (
            f"VALVE_CONSOLE_PRIVATE_IP={text!r} is not an address: the netconsole listens on loopback only"
        )
    host = f"[{private}]" if private.version == 6 else str(private)
    if explicit:
        return f"{host}:{NETCONSOLE_PORT}", None
    try:
        from .backend.trust import own_addresses

        present = private in own_addresses()
    except Exception:  # noqa: BLE001 - no interface list: assume the address is absent
        present = False
    if present:
        return f"{host}:{NETCONSOLE_PORT}", None
    return f"127.0.0.1:{NETCONSOLE_PORT}", (
        f"the private address {private} is not on this gateway: the netconsole listens on loopback only "
        f"(127.0.0.1:{NETCONSOLE_PORT}); set VALVE_CONSOLE_PRIVATE_IP or --netconsole HOST:PORT"
    )


def parse_hostport(value: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or ``:PORT`` → (host, port); raises ValueError in words."""
    text = value.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"{value!r} is not HOST:PORT")
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise ValueError(f"{value!r} is not HOST:PORT")
    host = host or default_host
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"{value!r}: the port {port!r} is not a number") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"{value!r}: the port must be between 0 and 65535")
    return host, number


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VALVE_CONSOLE_", extra="ignore")

    data_dir: Path = Field(default_factory=default_data_dir)
    listen: str = "127.0.0.1:8000"
    # HOST:PORT; empty (the default): the private network's address, port 8100 (default_netconsole)
    netconsole: str = ""
    farm_name: str = "valve"
    database_url: str | None = None  # any SQLAlchemy URL; default: SQLite in data_dir
    default_pdu_off_delay: float = Field(default=5.0, ge=0)  # seconds an outlet stays off before it may go on again
    outlet_poll_interval: float = 10.0  # seconds between outlet state polls of a reachable PDU
    pdu_timeout: float = 3.0  # seconds for one PDU command
    # Power metering (PDUs whose driver meters; README "Power metering"). A PDU's config may carry its own
    # ``power_sample_interval``.
    power_sample_interval: float = Field(default=1.0, gt=0, le=3600)  # seconds between power reads of a PDU
    power_recent_seconds: float = Field(default=3600.0, gt=0, le=86400)  # in-memory series per outlet
    power_event_interval: float = Field(default=5.0, ge=0)  # at most one power-carrying outlet/pdu event per N s
    power_history_days: float = Field(default=7.0, gt=0)  # downsampled history (one row per outlet per minute)
    power_no_draw_watts: float = Field(default=2.0, ge=0)  # an ON outlet below this draws "nothing"
    power_no_draw_seconds: float = Field(default=30.0, ge=0)  # ... for this long: flag no_draw
    power_silent_seconds: float = Field(default=300.0, gt=0)  # powered with a silent console this long: flag silent
    console_ring_bytes: int = 4 * 1024 * 1024
    console_log_max_bytes: int = 16 * 1024 * 1024
    console_log_backups: int = 3
    # Each machine's console is shared on a raw TCP port: console_tcp_base + a stable per-machine
    # index kept in the database (0: any free port, for tests). nc/telnet to it; one writer at a time.
    console_tcp_host: str = "127.0.0.1"
    console_tcp_base: int = Field(default=8200, ge=0, le=65535)
    console_api_writer_timeout: float = 60.0  # seconds without input after which an API writer is let go
    # Console binding (the DUT network is hostile: DUTs run merge requests' code). A stream announcing
    # SALAD.machine_id=<mac> never takes a live binding over. Otherwise it binds <mac> when it comes from the
    # machine's registered ip_address, or from console_local_sources (the gateway itself: QEMU and Vivian
    # DUTs run there; "auto": loopback and the gateway's own addresses; empty/"none": no source), or, with
    # console_bind_policy "free", from anywhere (valve-infra's way, minus the takeover). The rest wait as
    # unbound streams the operator sees and binds by hand. Serial adapters and ser2net are wired to one
    # DUT: their markers bind as before, never over a live binding. Env for the list: comma-separated or JSON.
    console_bind_policy: Literal["address", "free"] = "address"
    console_local_sources: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["auto"])
    # Netconsole connections: at most this many at once, and per source address (local sources exempt);
    # one that has announced no machine is closed after netconsole_marker_timeout s without a byte; an
    # unbound one (announced or not) after console_unbound_ttl s.
    netconsole_max_connections: int = Field(default=256, ge=1, le=65536)
    netconsole_max_per_source: int = Field(default=4, ge=1, le=65536)
    netconsole_marker_timeout: float = Field(default=60.0, gt=0)
    console_unbound_ttl: float = Field(default=1800.0, gt=0)
    # Consoles of machines that never registered: at most this many (and per source), removed with their
    # logs after console_unknown_ttl s without a live stream. A registered machine always gets its console.
    console_unknown_max: int = Field(default=64, ge=0, le=4096)
    console_unknown_per_source: int = Field(default=4, ge=0, le=4096)
    console_unknown_ttl: float = Field(default=600.0, gt=0)
    # All machines' console logs together (<data_dir>/consoles): above this the oldest rotated logs are
    # deleted first, then the oldest logs of consoles without a live stream. 0: no farm-wide cap.
    console_logs_max_bytes: int = Field(default=2 << 30, ge=0)
    # Serial consoles: explicit devices (PATH[@BAUD], repeatable --serial; env: a JSON list or
    # comma-separated) and USB adapter discovery: auto (udev if udevd runs, else sysfs), udev, sysfs, off.
    serial: Annotated[list[str], NoDecode] = Field(default_factory=list)
    console_discovery: Literal["auto", "udev", "sysfs", "off"] = "auto"
    console_serial_baud: int = Field(default=115200, ge=50, le=12_000_000)
    max_body_bytes: int = 1024 * 1024
    # Network boot: the default kernel/initrd that unknown or idle DUTs boot (registration). None: served
    # by this gateway's API host (http://<listen>/files/kernel, .../files/initramfs.cpio.xz).
    boot_kernel_url: str | None = None
    boot_initrd_url: str | None = None
    boot_api_host: str | None = None  # host:port of the API as the DUTs reach it (default: the listen address)
    # Boot artefact cache: remote kernel/initramfs URLs of jobs are downloaded once into <data_dir>/files
    # and the DUT boots them from http://<boot api host>/files/<hash>-<name>. Off: the URLs are used as given.
    boot_cache: bool = True  # download remote kernels/initramfs once and serve them from /files/
    boot_cache_max_bytes: int = Field(default=2 << 30, ge=1)  # largest artefact downloaded (2 GiB)
    boot_cache_timeout: float = Field(default=60.0, gt=0)  # seconds without progress before a download fails
    # Managed dnsmasq: the hosts file <data_dir>/dnsmasq/hosts.dhcp is always written; dnsmasq itself is
    # started only when dnsmasq_interface is set (empty: off).
    dnsmasq_interface: str = ""
    hosts_debounce: float = Field(default=0.5, ge=0, le=30)  # seconds between a machine change and the write
    # Open registration (POST /api/v1/machine/) from a DUT address: a token bucket per source address, bursts of
    # registration_burst refilled at registration_rate_per_minute (a DUT registers once per boot). The gateway
    # itself (loopback, trusted networks, the operator token) is not limited.
    registration_rate_per_minute: float = Field(default=10.0, gt=0, le=6000)
    registration_burst: int = Field(default=10, ge=1, le=1000)
    job_console_drain: float = Field(default=0.5, ge=0, le=30)  # seconds of console kept after a job ends
    # Job shares (<data_dir>/jobs/<id>/share, valve-infra's job bucket): one job's files (the client's upload
    # unpacked plus what the DUT writes), and all shares together (older finished jobs' shares go first).
    job_share_max_bytes: int = Field(default=64 << 20, ge=1)
    job_shares_max_total_bytes: int = Field(default=2 << 30, ge=1)
    # Sgt. Hartman pre-service training (valve-infra §3.2): a machine with a PDU port that is neither ready for
    # service nor retired runs a registration job, then training_loops boot loops; it is ready when at least
    # training_qualify pass. A failed training is retried after training_retry_delay × 2^(failures-1) seconds,
    # at most training_retry_max. Machine.training_loops/training_qualify override the loops per machine.
    training: bool = True  # False: no automatic training (ready for service is set by hand)
    # DESIGN.md's names for them are accepted too: VALVE_CONSOLE_TRAINING_BOOT_COUNT / _QUALIFYING_COUNT.
    training_loops: int = Field(default=20, ge=1, le=1000, validation_alias=AliasChoices(
        "training_loops", "valve_console_training_loops", "valve_console_training_boot_count"))
    training_qualify: int = Field(default=19, ge=1, le=1000, validation_alias=AliasChoices(
        "training_qualify", "valve_console_training_qualify", "valve_console_training_qualifying_count"))
    training_retry_delay: float = Field(default=120.0, ge=0, le=86400)
    training_retry_max: float = Field(default=3600.0, ge=0, le=7 * 86400)
    # GitLab runners (backend/gitlab.py): gitlab-runner's config.toml (default <data_dir>/gitlab-runner/config.toml),
    # the full sync period (verification, stray clean-up), the back-off cap and one call's timeout, in seconds.
    gitlab_runner_config: Path | None = None
    gitlab_sync_interval: float = Field(default=300.0, gt=0)
    gitlab_retry_max: float = Field(default=300.0, gt=0)
    gitlab_timeout: float = Field(default=10.0, gt=0)
    # Runner tokens are checked with POST /runners/verify at most this often (seconds, on full syncs); a token
    # GitLab refuses (403) or that is about to expire is replaced by a new runner.
    gitlab_verify_interval: float = Field(default=3600.0, gt=0)
    # Pre-build filter of the custom executor (valve-infra's pre-build ACL): with both lists empty every job
    # runs; otherwise only jobs of these GitLab users, or of projects in these namespaces (or their
    # sub-namespaces), compared case-insensitively. Env: JSON lists.
    gitlab_allowed_users: list[str] = Field(default_factory=list)
    gitlab_allowed_namespaces: list[str] = Field(default_factory=list)
    # The generic gateway runner (valve-infra's <farm>-gateway, tags <farm>-gateway and CI-gateway): one more
    # runner per exposing instance, for CI jobs that need no particular DUT. Off by default: valve-infra ran
    # its jobs in a container, ours run the CI script on the gateway itself with the operator token.
    gitlab_gateway_runner: bool = False
    # Trusted source networks (valve-infra had no authentication: its trigger containers and dashboard talk to
    # the executor from the gateway itself). A request from one of them acts as the operator without a token.
    # "auto" (default): the gateway's own addresses (loopback and every address of its interfaces, /32 each);
    # CIDRs may be added ("auto,192.0.2.0/24"); empty or "none": nobody is trusted, the token is always needed.
    # A DUT on the private network is never trusted unless its address is listed. Env: comma-separated or JSON.
    trusted_networks: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["auto"])
    # Job templates (valve-infra §4.2): minio_url (default: http://<the API as DUTs reach it>, whose /boot/
    # serves the default kernel and initramfs as MinIO's boot bucket did) and extra variables (env: a JSON
    # object), over the defaults fdo_proxy_registry=ci-gateway:8002 and local_registry=ci-gateway:8004.
    # Every EXECUTOR_JOB__<NAME> environment variable is also a variable <name>, as in valve-infra.
    minio_url: str | None = None
    job_variables: dict[str, str] = Field(default_factory=dict)
    log_level: str = "INFO"
    # The gateway's address on the DUT network, optionally with its prefix (the netconsole's default address,
    # the managed dnsmasq's, the API host DUTs are told when the API listens everywhere); blank: the default.
    private_ip: str = PRIVATE_IP_DEFAULT
    # The managed dnsmasq's DHCP range on the DUT network: "FIRST,LAST".
    dhcp_range: str = DHCP_RANGE_DEFAULT
    _notes: list[str] = PrivateAttr(default_factory=list)
    _given_by: dict[str, str] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _netconsole_default(self) -> "Settings":
        if not self.netconsole.strip():
            # set explicitly (argument or VALVE_CONSOLE_PRIVATE_IP): used even while no interface has it
            explicit = "private_ip" in self.model_fields_set
            self.netconsole, note = default_netconsole(self.private_ip, explicit)
            if note:
                self._notes.append(note)
        return self

    def mark_given(self, names: list[str] | set[str], source: str) -> None:
        """Say where settings given as arguments came from (``command line``): the Settings view shows it."""
        for name in names:
            self._given_by[name] = source

    @property
    def given_by(self) -> dict[str, str]:
        """Settings whose source the program said (mark_given): name -> source."""
        return dict(self._given_by)

    @property
    def notes(self) -> list[str]:
        """Warnings about defaults that had to fall back (logged at start)."""
        return list(self._notes)

    @field_validator("serial", mode="before")
    @classmethod
    def _serial_list(cls, value: object) -> object:
        """``VALVE_CONSOLE_SERIAL`` may be a JSON list or ``PATH[@BAUD],PATH[@BAUD]``; each is checked."""
        value = _env_list(value)
        if isinstance(value, (list, tuple)):
            from .drivers.serial.base import parse_serial_spec

            for spec in value:
                parse_serial_spec(str(spec))
        return value

    @field_validator("trusted_networks", mode="before")
    @classmethod
    def _trusted_list(cls, value: object) -> object:
        """``auto``, ``none``/empty, CIDRs, comma-separated or as a JSON list; each CIDR is checked."""
        value = _env_list(value)
        if isinstance(value, (list, tuple)):
            from .backend.trust import parse_networks

            parse_networks([str(v) for v in value])
        return value

    @field_validator("console_local_sources", mode="before")
    @classmethod
    def _local_sources(cls, value: object) -> object:
        """Like trusted_networks: ``auto``, ``none``/empty, CIDRs, comma-separated or a JSON list."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import json

                value = json.loads(text)
            else:
                value = [part for part in (p.strip() for p in text.split(",")) if part]
        if isinstance(value, (list, tuple)):
            from .backend.trust import parse_networks

            try:
                parse_networks([str(v) for v in value])
            except ValueError as exc:
                raise ValueError(str(exc).replace("trusted_networks", "console_local_sources")) from None
        return value

    @field_validator("job_variables")
    @classmethod
    def _job_variable_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", name):
                raise ValueError(f"{name!r} is not a template variable name (letters, digits and _)")
        return value

    @field_validator("gitlab_allowed_users", "gitlab_allowed_namespaces")
    @classmethod
    def _gitlab_names(cls, value: list[str]) -> list[str]:
        """An empty or spaced name would match nothing (or, for a namespace, everything): refuse it in words."""
        out = []
        for name in value:
            text = name.strip().strip("/")
            if not text or any(c.isspace() for c in text):
                raise ValueError(f"{name!r} is not a GitLab user or namespace (empty, or with spaces)")
            out.append(text)
        return out

    @property
    def private_ip_text(self) -> str:
        """``private_ip`` as given (blank: 10.42.0.1/24), optionally with its prefix."""
        return _private_interface(self.private_ip)

    @property
    def private_address(self) -> str:
        """The gateway's address on the DUT network without its prefix (10.42.0.1 by default); the default
        when ``private_ip`` is not an address (the start log says so, see default_netconsole)."""
        return _private_address(self.private_ip)

    @property
    def db_path(self) -> Path:
        return self.data_dir / "valve-console.db"

    @property
    def token_path(self) -> Path:
        return self.data_dir / "token"

    @property
    def socket_path(self) -> Path:
        return self.data_dir / "api.sock"
