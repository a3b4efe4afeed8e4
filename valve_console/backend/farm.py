"""Farm: owns the services, starts them in dependency order and stops them in reverse.

Order: storage → event bus → registry (MaRS) → power → consoles (netconsole) → API.
Every listening socket is bound before anything starts, so a port in use is reported at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import socket
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import uvicorn

from .. import __version__
from ..config import Settings, parse_hostport
from .auth import load_or_create_token
from .boot import BootCache, BootService, dnsmasq_config
from .consoles import ConsoleHub, build_device_sources
from .discovery import DiscoveryService
from .events import EventBus
from .jobs.executor import JobService
from .metering import PowerMeter
from .gitlab import RunnerService
from .journal import JournalFollower
from .power import PowerService
from .registration import MachineService
from .settings_store import SettingsFileError, SettingsStore
from .store import Store
from .training import TrainingService
from .trust import Trust
from .views import MachineView

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

    from ..drivers.serial import DeviceSource

log = logging.getLogger(__name__)


OPTIONAL_SERVICES = {"journal"}
PRIVATE_DIR = 0o700  # the data dir and its subdirectories: the backend's user only
PRIVATE_FILE = 0o600  # the database (and its -wal/-shm), the token, the web password...
# The managed dnsmasq drops to an unprivileged user and must then reach its TFTP root and hosts file:
# with it, the data dir may be traversed (not listed) by others, and these two subdirectories read.
DNSMASQ_DATA_DIR = 0o711
DNSMASQ_DIRS = {"dnsmasq": 0o755, "tftp": 0o755}


def _granted_group_traverse(path: Path) -> int:
    """0o010 if the directory was given to a group on purpose (its group is not its owner's own, as
    valve-console.service does for valve-operators, who read the token) and that group may enter it."""
    st = path.stat()
    try:
        own_group = pwd.getpwuid(st.st_uid).pw_gid
    except KeyError:
        return 0
    return st.st_mode & 0o010 if st.st_gid != own_group else 0


def secure_data_dir(data: Path, *, dnsmasq: bool = False) -> list[str]:
    """Create the data dir private (0700; 0711 with the managed dnsmasq; a group it was given keeps
    the right to enter it) and take group and other rights away from what is directly in it (files
    0600 at most, directories 0700). Returns what was changed, in words. Deeper files are private
    through their directory."""
    data.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    fixed: list[str] = []

    def ensure(path: Path, mode: int, exact: bool) -> None:
        current = path.lstat().st_mode & 0o7777
        wanted = mode if exact else current & mode
        if current != wanted:
            os.chmod(path, wanted)
            fixed.append(f"{path.name or path} {current:04o} -> {wanted:04o}")

    ensure(data, (DNSMASQ_DATA_DIR if dnsmasq else PRIVATE_DIR) | _granted_group_traverse(data), exact=True)
    if dnsmasq:  # its hosts file's directory, before the boot service writes it (whatever the umask)
        (data / "dnsmasq").mkdir(exist_ok=True)
    with os.scandir(data) as entries:
        for entry in entries:
            path = Path(entry.path)
            if entry.is_symlink():
                continue
            if entry.is_dir():
                if dnsmasq and entry.name in DNSMASQ_DIRS:
                    ensure(path, DNSMASQ_DIRS[entry.name], exact=True)
                else:
                    ensure(path, PRIVATE_DIR, exact=False)
            elif entry.is_file():
                ensure(path, PRIVATE_FILE, exact=False)
    return fixed


def create_private_file(path: Path) -> None:
    """Create ``path`` empty with mode 0600 unless it exists (SQLite gives its -wal and -shm the mode
    of the database file)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE))
    except FileExistsError:
        pass


class FarmStartError(Exception):
    """The farm cannot start; the message is one line for the operator."""


class EmbeddedServer(uvicorn.Server):
    """uvicorn without its signal capture: this program owns SIGINT and SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class TrustedApp:
    """ASGI wrapper for the unix socket: its peers passed the socket's 0600 file mode."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["valve_trusted"] = True
        await self.app(scope, receive, send)


class BusLogHandler(logging.Handler):
    """Publishes the backend's own log records as ``log`` events and keeps the recent ones."""

    def __init__(self, bus: EventBus, loop: asyncio.AbstractEventLoop, keep: int = 2000) -> None:
        super().__init__(logging.INFO)
        self.bus = bus
        self.loop = loop
        self.recent: deque[dict[str, Any]] = deque(maxlen=keep)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            entry = {
                "ts": record.created,
                "level": record.levelname,
                "priority": {"CRITICAL": 2, "ERROR": 3, "WARNING": 4, "INFO": 6, "DEBUG": 7}.get(record.levelname, 6),
                "logger": record.name,
                "message": record.getMessage(),
            }
        except Exception:  # noqa: BLE001 - a bad log call must not break the caller
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            self._publish(entry)
        elif not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._publish, entry)

    def _publish(self, entry: dict[str, Any]) -> None:
        self.recent.append(entry)
        self.bus.publish("log", entry)


IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)  # Linux: bind an address the host does not have (yet)


def _bind_tcp(address: str, what: str, freebind: bool = False) -> socket.socket:
    """A listening TCP socket on ``address``. ``freebind``: the address may not be up yet (the private
    NIC still coming up when the unit starts); the socket accepts once it is (systemd's FreeBind=)."""
    try:
        host, port = parse_hostport(address)
    except ValueError as exc:
        raise FarmStartError(f"{what}: {exc}") from None
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on accepted sockets whose proto
    # says TCP, and without it every keep-alive answer waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if freebind:
            level = socket.IPPROTO_IPV6 if family == socket.AF_INET6 else socket.IPPROTO_IP
            sock.setsockopt(level, IP_FREEBIND, 1)
        sock.bind((host, port))
        sock.listen(128)
        return sock
    except OSError as exc:
        sock.close()
        raise FarmStartError(f"cannot listen for the {what} on {address}: {exc.strerror or exc}") from None


def _warn_if_not_up(sock: socket.socket, what: str) -> None:
    """A socket bound (with freebind) to an address this gateway does not have: said in the log."""
    import ipaddress

    from .trust import own_addresses

    host = sock.getsockname()[0]
    try:
        address = ipaddress.ip_address(host)
        if address.is_unspecified or address in own_addresses():
            return
    except Exception:  # noqa: BLE001 - no interface list: nothing to say
        return
    log.warning("the %s listens on %s, which is not (yet) an address of this gateway: it accepts "
                "connections once an interface has it", what, host)


class Farm:
    # The services, built and wired by _compose() in start() (each receives what it uses in its
    # constructor), started in this order and stopped in the reverse one.
    store: Store
    machines: MachineService
    power: PowerService
    meter: PowerMeter
    discovery: DiscoveryService
    consoles: ConsoleHub
    jobs: JobService
    training: TrainingService
    boot: BootService
    gitlab: RunnerService
    journal: JournalFollower
    view: MachineView
    settings_store: SettingsStore

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.bus = EventBus()
        self._stops: list[Callable[[], Awaitable[None]]] = []  # of what started so far, run in reverse by stop()
        self._dnsmasq_error: str | None = None
        self.token = ""
        self.started_at = time.time()
        self.api_address: tuple[str, int] | None = None
        self.netconsole_address: tuple[str, int] | None = None
        self._servers: list[tuple[EmbeddedServer, asyncio.Task[None]]] = []
        self._sockets: list[socket.socket] = []
        self._log_handler: BusLogHandler | None = None
        self._health: dict[str, tuple[str, str | None]] = {}
        self.stopping = asyncio.Event()
        self._unix_bound = False
        self.journal_command: list[str] | None = None  # tests may follow something else
        self.console_device_sources: list[DeviceSource] | None = None  # tests give fake sources; None: from settings
        self.trust = Trust(settings.trusted_networks)  # sources that act as the operator without a token

    # ---------------------------------------------------------------- health
    def _set_health(self, service: str, state: str, reason: str | None = None) -> None:
        if self._health.get(service) != (state, reason):
            self._health[service] = (state, reason)
            self.bus.publish("health", {"service": service, "state": state, "reason": reason})

    def _sync_health(self) -> None:
        store = getattr(self, "store", None)
        if store is not None and self._health.get("storage", ("",))[0] != "starting":
            self._set_health("storage", *store.health())
        for name, attr in (
            ("power", "power"),
            ("consoles", "consoles"),
            ("registration", "machines"),
            ("journal", "journal"),
            ("boot", "boot"),
            ("gitlab", "gitlab"),
        ):
            svc = getattr(self, attr, None)
            if svc is not None:
                self._set_health(name, svc.state, svc.reason)

    def health(self) -> dict[str, Any]:
        self._sync_health()
        services = {name: {"state": s, "reason": r} for name, (s, r) in self._health.items()}
        # The system journal is informational: a gateway without one still runs its farm.
        states = {s for name, (s, _) in self._health.items() if name not in OPTIONAL_SERVICES}
        overall = "ok" if states <= {"ok"} else ("failed" if "failed" in states else "degraded")
        return {
            "status": overall,
            "farm_name": self.settings.farm_name,
            "version": __version__,
            "api": f"http://{self.api_address[0]}:{self.api_address[1]}" if self.api_address else None,
            "netconsole": f"{self.netconsole_address[0]}:{self.netconsole_address[1]}"
            if self.netconsole_address
            else None,
            "uptime": time.time() - self.started_at,
            "services": services,
        }

    def _files_base(self) -> str:
        from .jobs.executor import default_boot_urls

        _, _, api_host = default_boot_urls(self.settings, self.api_address)
        return f"http://{api_host}/files"

    def _dnsmasq_conf(self) -> str | None:
        """The managed dnsmasq's config (None: off, or bad settings: then ``_dnsmasq_error`` says why)."""
        iface = self.settings.dnsmasq_interface.strip()
        if not iface:
            return None
        root = self.settings.data_dir / "dnsmasq"
        try:
            return dnsmasq_config(
                iface,
                self.settings.private_ip_text,
                self.settings.dhcp_range,
                self.settings.data_dir / "tftp",
                root / "hosts.dhcp",
                root / "dnsmasq.leases",
                "undionly.kpxe",
                "ipxe.efi",
                self._files_base().rsplit("/files", 1)[0],
            )
        except ValueError as exc:
            self._dnsmasq_error = f"managed dnsmasq not started: invalid settings: {exc}"
            return None

    def _local_api_url(self) -> str:
        """The API as programs on this gateway reach it (gitlab-runner's custom executor)."""
        host, port = self.api_address or parse_hostport(self.settings.listen)
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def boot_urls(self) -> tuple[str, str, str]:
        """The default boot's kernel and initramfs URLs and the API's host:port as DUTs reach it (from the
        settings, else the bound API socket's address: known once start() bound it)."""
        from .jobs.executor import default_boot_urls

        return default_boot_urls(self.settings, self.api_address)

    def _dut_api_host(self) -> str:
        """host:port of the API for the DUTs (a job's minio_url and job_share_url)."""
        return self.boot_urls()[2]

    @property
    def recent_log(self) -> list[dict[str, Any]]:
        return list(self._log_handler.recent) if self._log_handler else []

    # ---------------------------------------------------------------- lifecycle
    def _prepare_data_dir(self) -> None:
        data = self.settings.data_dir
        try:
            fixed = secure_data_dir(data, dnsmasq=bool(self.settings.dnsmasq_interface.strip()))
            probe = data / ".write-test"
            probe.write_text("ok")
            probe.unlink()
            if self.settings.database_url is None:
                create_private_file(self.settings.db_path)
        except OSError as exc:
            raise FarmStartError(f"the data directory {data} is not writable: {exc.strerror or exc}") from None
        if fixed:
            log.warning("the data directory %s was readable by others: modes fixed (%s)", data, ", ".join(fixed))

    def _bind_unix(self) -> socket.socket:
        path = self.settings.socket_path
        if len(str(path)) > 100:
            raise FarmStartError(f"the data directory path is too long for a unix socket: {path}")
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(str(path))
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        sock.listen(128)
        return sock

    def _compose(self) -> None:
        """Build every service with what it uses. Three pairs need each other (the registry and power,
        the registry and discovery, the executor and training) and every service that changes what a
        machine shows tells the view, built last: those few links are late-bound lambdas, here."""
        settings = self.settings
        self.meter = PowerMeter(
            self.store,
            recent_seconds=settings.power_recent_seconds,
            event_interval=settings.power_event_interval,
            history_days=settings.power_history_days,
            no_draw_watts=settings.power_no_draw_watts,
            no_draw_seconds=settings.power_no_draw_seconds,
            silent_seconds=settings.power_silent_seconds,
            machine_at=lambda pdu, port: getattr(self.machines.machine_on(pdu, port), "mac_address", None),
            console_activity=lambda mac: getattr(self.consoles.consoles.get(mac), "last_activity", None),
            changed=self._machine_changed,
            training_note=lambda mac, flag: self.training.power_flagged(mac, flag),
        )
        self.power = PowerService(
            self.store,
            self.bus,
            default_off_delay=settings.default_pdu_off_delay,
            poll_interval=settings.outlet_poll_interval,
            timeout=settings.pdu_timeout,
            off_delay_for=lambda pdu, port: self.machines.off_delay(pdu, port),
            on_health_change=self._sync_health,
            meter=self.meter,
            sample_interval=settings.power_sample_interval,
        )
        self.machines = machines = MachineService(
            self.store,
            settings.farm_name,
            outlets=self.power,
            claim=lambda mac, machine: self.discovery.claim(mac, machine),
            changed=self._machine_changed,
            training_defaults=(settings.training_loops, settings.training_qualify),
        )
        self.discovery = DiscoveryService(machines, self.power, self.bus)
        self.consoles = ConsoleHub(
            self.bus,
            settings.data_dir / "consoles",
            settings.console_ring_bytes,
            settings.console_log_max_bytes,
            settings.console_log_backups,
            store=self.store,
            tcp_host=settings.console_tcp_host,
            tcp_base=settings.console_tcp_base,
            device_sources=self.console_device_sources
            if self.console_device_sources is not None
            else build_device_sources(settings),
            known_machine=lambda mac: mac in machines.machines,
            api_writer_timeout=settings.console_api_writer_timeout,
            machine_address=lambda mac: getattr(machines.machines.get(mac), "ip_address", None),
            settings=settings,
        )
        boot_cache = None
        if settings.boot_cache:
            boot_cache = BootCache(
                settings.data_dir / "files",
                self._files_base,
                max_bytes=settings.boot_cache_max_bytes,
                timeout=settings.boot_cache_timeout,
                guard=self.trust.check_fetch_url,
            )
        self.jobs = JobService(
            self.store, self.bus, machines, self.power, self.consoles, settings,
            api_host=self._dut_api_host,
            boot_cache=boot_cache,
            changed=self._machine_changed,
            training_note=lambda mac: self.training.note(mac),
            on_unfit=lambda mac, job_id: self.training.unfit(mac, job_id),
        )
        self.training = TrainingService(
            self.store, self.bus, machines, self.jobs, settings, self.boot_urls, changed=self._machine_changed
        )
        dnsmasq_conf = self._dnsmasq_conf()
        self.boot = BootService(
            self.bus,
            lambda: self.view.machines().values(),
            settings.data_dir / "dnsmasq",
            debounce=settings.hosts_debounce,
            dnsmasq_conf=dnsmasq_conf,
            on_health_change=self._sync_health,
            unavailable=self._dnsmasq_error,
        )
        self.gitlab = RunnerService(
            self.store, self.bus, machines, settings, self._local_api_url,
            changed=self._machine_changed, on_health_change=self._sync_health,
        )
        self.journal = JournalFollower(self.bus, command=self.journal_command, on_health_change=self._sync_health)
        self.view = MachineView(
            machines,
            self.bus,
            default_off_delay=settings.default_pdu_off_delay,
            jobs=self.jobs,
            training=self.training,
            runners=self.gitlab,
            power=self.meter,
        )

    def _load_settings(self) -> None:
        """``<data>/settings.toml`` (values changed at run time) over the environment, before the services
        are built from the settings."""
        self.settings_store = SettingsStore(self.settings, self.bus, apply=self._apply_settings)
        try:
            notes = self.settings_store.load()
        except SettingsFileError as exc:
            raise FarmStartError(f"settings: {exc}") from None
        for note in notes:
            log.warning("%s", note)
        if self.settings_store.stored:
            log.info("settings from %s: %s", self.settings_store.path, ", ".join(sorted(self.settings_store.stored)))
        self.trust.set_networks(self.settings.trusted_networks)

    def _apply_settings(self, names: list[str]) -> None:
        """Settings changed at run time (settings_store): the services that keep their own copy are told;
        the others (the GitLab service's intervals) read the shared Settings at use time."""
        settings = self.settings
        if {"training_loops", "training_qualify"} & set(names):
            self.machines.set_training_defaults(settings.training_loops, settings.training_qualify)
        if "default_pdu_off_delay" in names:
            self.power.default_off_delay = settings.default_pdu_off_delay
            self.view.default_off_delay = settings.default_pdu_off_delay
            for mac, machine in list(self.machines.machines.items()):  # those on the default show the new one
                if machine.pdu_off_delay is None:
                    self.view.publish(mac, "updated")
        if "trusted_networks" in names:
            self.trust.set_networks(settings.trusted_networks)

    def _machine_changed(self, mac: str, action: str) -> None:
        """A service changed what ``mac`` shows: its ``machine`` event (the view builds it)."""
        self.view.publish(mac, action)

    async def start(self) -> None:
        self._prepare_data_dir()
        loop = asyncio.get_running_loop()
        self._log_handler = BusLogHandler(self.bus, loop)
        logging.getLogger().addHandler(self._log_handler)
        ours = logging.getLogger("valve_console")
        if ours.getEffectiveLevel() > logging.INFO:  # the operator's log view wants INFO and up
            ours.setLevel(logging.INFO)
        for name in ("storage", "registration", "power", "consoles", "api"):
            self._set_health(name, "starting")
        api_sock = _bind_tcp(self.settings.listen, "API")
        self._sockets.append(api_sock)
        try:
            nc_sock = _bind_tcp(self.settings.netconsole, "netconsole", freebind=True)
        except FarmStartError:
            api_sock.close()
            raise
        _warn_if_not_up(nc_sock, "netconsole")
        self._sockets.append(nc_sock)
        try:
            unix_sock = self._bind_unix()
        except OSError as exc:
            raise FarmStartError(
                f"cannot create the API socket {self.settings.socket_path}: {exc.strerror or exc}"
            ) from None
        self._sockets.append(unix_sock)
        self._unix_bound = True
        self.api_address = api_sock.getsockname()[:2]
        self.netconsole_address = nc_sock.getsockname()[:2]

        try:
            self.token = load_or_create_token(self.settings.token_path)
        except (OSError, ValueError) as exc:
            raise FarmStartError(f"operator token: {exc}") from None
        db_url = self.settings.database_url or f"sqlite:///{self.settings.db_path}"
        self.store = Store(db_url, on_health_change=self._sync_health)
        try:
            await self.store.open()
        except Exception as exc:  # noqa: BLE001 - reported as one line
            raise FarmStartError(f"cannot open the database {db_url}: {exc}") from None
        self._stops.append(self.store.close)
        self._set_health("storage", "ok")
        self._load_settings()
        self._compose()
        # A service's stop is queued before its start: one that fails halfway is still stopped.
        await self.machines.start()
        self._stops.append(self.meter.stop)  # after power's: the last minutes are written
        await self.meter.start()
        self._stops += [self.power.stop, self.discovery.stop]  # discovery starts nothing; its stop ends a scan
        await self.power.start()
        self._stops.append(self.consoles.stop)
        await self.consoles.start(nc_sock)
        for service in (self.jobs, self.training, self.boot, self.gitlab, self.journal):
            self._stops.append(service.stop)
            await service.start()
        self._sync_health()

        from .api import create_app

        app = create_app(self)
        from .httpguard import (
            ACCEPT_BACKLOG,
            KEEP_ALIVE_TIMEOUT,
            PER_SOURCE,
            ConnectionLimits,
            descriptor_share,
            guarded_h11,
        )

        # TCP (the DUT network): a request head within 10 s, capped connections (64 per address but the
        # trusted ones, a quarter of the descriptors in all); the unix socket (the local TUI) has no cap
        # and its own server, so TCP floods never starve it (httpguard.py).
        tcp_limits = ConnectionLimits(
            max_connections=descriptor_share(), per_source=PER_SOURCE, exempt=self.trust.is_trusted
        )
        for sock, asgi, limits in ((api_sock, app, tcp_limits), (unix_sock, TrustedApp(app), ConnectionLimits())):
            config = uvicorn.Config(
                asgi,
                log_config=None,
                lifespan="off",
                access_log=False,
                timeout_graceful_shutdown=2,
                http=guarded_h11(limits),
                timeout_keep_alive=KEEP_ALIVE_TIMEOUT,
                backlog=ACCEPT_BACKLOG,
            )
            server = EmbeddedServer(config)
            task = asyncio.create_task(server.serve(sockets=[sock]), name="api-server")
            self._servers.append((server, task))
        while not all(server.started for server, _ in self._servers):
            for _, task in self._servers:
                if task.done():
                    raise FarmStartError(f"the API server failed to start: {task.exception()}")
            await asyncio.sleep(0.01)
        self._set_health("api", "ok")
        log.info(
            "farm %s up: API http://%s:%d, netconsole %s:%d, data %s",
            self.settings.farm_name,
            *self.api_address,
            *self.netconsole_address,
            self.settings.data_dir,
        )

    async def stop(self) -> None:
        self.stopping.set()
        self.bus.publish("health", {"service": "api", "state": "stopping", "reason": None})
        self.bus.close_all()  # ends every event stream, so the API can drain its connections
        for server, _ in self._servers:
            server.should_exit = True
        await asyncio.gather(*(task for _, task in self._servers), return_exceptions=True)
        self._servers.clear()
        for stop in reversed(self._stops):
            await stop()
        self._stops.clear()
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()
        if self._unix_bound:
            with contextlib.suppress(OSError):
                Path(self.settings.socket_path).unlink()
        if self._log_handler is not None:
            logging.getLogger().removeHandler(self._log_handler)
        log.info("farm stopped")
