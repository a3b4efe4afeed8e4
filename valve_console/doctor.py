"""``valve-console doctor``: checks a gateway against what the seed's container requires.

The seed's gateway (valve-infra's container README): two NICs, one to the internet and one to the
DUTs' switch; a persistent volume at /mnt/permanent and a cache volume at /mnt/tmp; privileged with
the host network (dnsmasq needs CAP_NET_ADMIN/CAP_NET_RAW, serial adapters need /dev access); and
the tools the farm runs. Each check prints one line: ``ok``, ``WARN`` or ``FAIL``, what it found in
words and, when something is wrong, how to fix it. The exit status is 1 when any check FAILs.

Every path the checks read comes from a ``Host`` so tests can point them at fake trees.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import sqlite3
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Optional

if TYPE_CHECKING:
    from .config import Settings

OK, WARN, FAIL = "ok", "WARN", "FAIL"

CAP_NET_BIND_SERVICE = 10
CAP_NET_ADMIN = 12
CAP_NET_RAW = 13
IFF_UP = 0x1
IPXE_FILES = ("undionly.kpxe", "ipxe.efi")
VIRTUAL_PREFIXES = ("lo", "veth", "docker", "cni", "podman", "virbr", "br-", "tap", "tun", "wg", "dummy")


@dataclass
class Check:
    name: str
    verdict: str
    message: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.verdict:<4} {self.name}: {self.message}"
        return f"{text}. Fix: {self.fix}" if self.fix else text


@dataclass
class Host:
    """Where the checks look. Defaults are this machine; tests give fake trees."""

    sys_class_net: Path = Path("/sys/class/net")
    proc_net_route: Path = Path("/proc/net/route")
    proc_status: Path = Path("/proc/self/status")
    dev: Path = Path("/dev")
    permanent: Path = Path("/mnt/permanent")
    tmp: Path = Path("/mnt/tmp")
    ipxe_dirs: tuple[Path, ...] = (Path("/usr/lib/ipxe"), Path("/usr/share/ipxe"))
    which: Callable[[str], Optional[str]] = shutil.which
    # Probes of the API and netconsole addresses: tests may replace them.
    bind_free: Callable[[str, int], Optional[str]] = field(default=None)  # type: ignore[assignment]
    fetch_health: Callable[[str], Optional[dict]] = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.bind_free is None:
            self.bind_free = _bind_free
        if self.fetch_health is None:
            self.fetch_health = _fetch_health


# --------------------------------------------------------------------------- probes
def _bind_free(host: str, port: int) -> Optional[str]:
    """None if HOST:PORT can be bound now, else why not (in words)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        return None
    except OSError as exc:
        return "in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
    finally:
        sock.close()


def _fetch_health(url: str) -> Optional[dict]:
    """The backend's /api/v1/health answer, or None when whatever listens there is not our backend."""
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:  # noqa: S310 - a local http URL we built
            data = json.loads(answer.read(65536))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "services" in data and "version" in data else None


def _read(path: Path) -> Optional[str]:
    try:
        return path.read_text().strip()
    except OSError:
        return None


# --------------------------------------------------------------------------- network
@dataclass
class Nic:
    name: str
    up: bool
    operstate: str
    carrier: Optional[bool]
    physical: bool


def list_nics(sys_class_net: Path) -> list[Nic]:
    nics = []
    try:
        entries = sorted(p for p in sys_class_net.iterdir())
    except OSError:
        return []
    for path in entries:
        name = path.name
        if name == "lo":
            continue
        flags = _read(path / "flags")
        try:
            up = bool(int(flags, 16) & IFF_UP) if flags else False
        except ValueError:
            up = False
        carrier_text = _read(path / "carrier")
        carrier = None if carrier_text is None or carrier_text == "" else carrier_text == "1"
        physical = (path / "device").exists() and not name.startswith(VIRTUAL_PREFIXES)
        nics.append(Nic(name, up, _read(path / "operstate") or "unknown", carrier, physical))
    return nics


def default_routes(proc_net_route: Path) -> list[tuple[str, str]]:
    """(interface, gateway) of each IPv4 default route in /proc/net/route."""
    text = _read(proc_net_route)
    routes = []
    for line in (text or "").splitlines()[1:]:
        cols = line.split()
        if len(cols) < 8 or cols[1] != "00000000" or cols[7] != "00000000":
            continue
        try:
            gw = socket.inet_ntoa(int(cols[2], 16).to_bytes(4, "little"))
        except (ValueError, OverflowError):
            gw = "?"
        routes.append((cols[0], gw))
    return routes


def _link_ok(nic: Nic) -> bool:
    return nic.up and nic.operstate in ("up", "unknown") and nic.carrier is not False


def check_network(host: Host, settings: "Settings") -> list[Check]:
    nics = {n.name: n for n in list_nics(host.sys_class_net)}
    routes = default_routes(host.proc_net_route)
    checks = []
    public = next((iface for iface, _ in routes if iface in nics), None)
    if public is None:
        checks.append(
            Check(
                "network.public",
                FAIL,
                "no interface has an IPv4 default route, so the gateway cannot reach the internet (GitLab, boot files)",
                "connect the public NIC and configure it by DHCP or with a default gateway",
            )
        )
    else:
        gw = dict(routes)[public]
        verdict = OK if _link_ok(nics[public]) else WARN
        state = "" if verdict == OK else f", but its link is {nics[public].operstate}"
        checks.append(Check("network.public", verdict, f"{public} has the default route via {gw}{state}"))
    others = [n for n in nics.values() if n.name != public]
    private = [n for n in others if _link_ok(n) and n.physical]
    wanted = settings.dnsmasq_interface.strip()
    if wanted:
        nic = nics.get(wanted)
        if nic is None:
            checks.append(
                Check(
                    "network.private",
                    FAIL,
                    f"the DUT interface {wanted} (dnsmasq_interface) does not exist",
                    "set VALVE_CONSOLE_DNSMASQ_INTERFACE to the NIC wired to the DUTs' switch "
                    f"(here: {', '.join(sorted(nics)) or 'none'})",
                )
            )
        elif wanted == public:
            checks.append(
                Check(
                    "network.private",
                    FAIL,
                    f"the DUT interface {wanted} is the public one: dnsmasq would answer DHCP on the internet side",
                    "use the second NIC, wired to the DUTs' switch, as VALVE_CONSOLE_DNSMASQ_INTERFACE",
                )
            )
        elif not _link_ok(nic):
            checks.append(
                Check(
                    "network.private",
                    FAIL,
                    f"the DUT interface {wanted} is {'down' if not nic.up else 'without link'} ({nic.operstate})",
                    f"ip link set {wanted} up, and check its cable to the DUTs' switch",
                )
            )
        else:
            checks.append(Check("network.private", OK, f"{wanted} serves the DUTs (managed dnsmasq)"))
    elif private:
        names = ", ".join(n.name for n in private)
        checks.append(Check("network.private", OK, f"{names} up besides the public NIC (DUT network)"))
    elif any(_link_ok(n) for n in others):
        names = ", ".join(n.name for n in others if _link_ok(n))
        checks.append(
            Check(
                "network.private",
                WARN,
                f"only virtual interfaces are up besides the public NIC ({names}); fine for Vivian, "
                "but real DUTs need a second NIC",
                "wire a second NIC to the DUTs' switch and bring it up",
            )
        )
    else:
        checks.append(
            Check(
                "network.private",
                FAIL,
                "there is no second interface up: the DUTs need a private network on its own NIC",
                "wire a second NIC to the DUTs' switch and bring it up (ip link set DEV up)",
            )
        )
    return checks


# --------------------------------------------------------------------------- volumes
def _writable(path: Path) -> Optional[str]:
    """None if a file can be created in ``path``, else why not."""
    try:
        with tempfile.NamedTemporaryFile(dir=path, prefix=".doctor-"):
            pass
        return None
    except OSError as exc:
        return exc.strerror or str(exc)


def check_volumes(host: Host, settings: "Settings") -> list[Check]:
    checks = []
    data = settings.data_dir
    if host.permanent.is_dir():
        why = _writable(host.permanent)
        if why is None:
            checks.append(Check("volume.permanent", OK, f"{host.permanent} is writable"))
        else:
            checks.append(
                Check(
                    "volume.permanent",
                    FAIL,
                    f"{host.permanent} is not writable ({why}): the database, token and console logs live there",
                    f"mount a writable volume: podman run -v perm:{host.permanent} ...",
                )
            )
    else:
        checks.append(
            Check(
                "volume.permanent",
                WARN,
                f"{host.permanent} does not exist: not a gateway container, the data stays in {data}",
                f"run the image with -v perm:{host.permanent}",
            )
        )
    if host.tmp.is_dir():
        why = _writable(host.tmp)
        verdict, msg = (OK, f"{host.tmp} is writable") if why is None else (WARN, f"{host.tmp} is not writable ({why})")
        checks.append(Check("volume.tmp", verdict, msg, "" if why is None else f"mount -v tmp:{host.tmp}"))
    else:
        checks.append(
            Check("volume.tmp", WARN, f"{host.tmp} does not exist (the seed's cache volume)", f"-v tmp:{host.tmp}")
        )
    if data.is_dir():
        why = _writable(data)
        if why is None:
            checks.append(Check("data dir", OK, f"{data} is writable"))
        else:
            checks.append(
                Check("data dir", FAIL, f"{data} is not writable ({why})", "fix its owner or mode, or use --data-dir")
            )
    else:
        parent = next((p for p in data.parents if p.is_dir()), None)
        why = _writable(parent) if parent is not None else "no parent directory exists"
        if why is None:
            checks.append(Check("data dir", OK, f"{data} does not exist yet; it will be created in {parent}"))
        else:
            checks.append(
                Check("data dir", FAIL, f"{data} cannot be created ({why})", "create it, or pass --data-dir")
            )
    return checks


# --------------------------------------------------------------------------- privileges
def effective_caps(proc_status: Path) -> Optional[int]:
    for line in (_read(proc_status) or "").splitlines():
        if line.startswith("CapEff:"):
            try:
                return int(line.split()[1], 16)
            except (IndexError, ValueError):
                return None
    return None


def check_privileges(host: Host, settings: "Settings") -> list[Check]:
    caps = effective_caps(host.proc_status)
    managed = bool(settings.dnsmasq_interface.strip())
    checks = []
    if caps is None:
        checks.append(Check("privileges", WARN, f"cannot read the capabilities in {host.proc_status}"))
    else:
        need = {
            CAP_NET_ADMIN: "CAP_NET_ADMIN",
            CAP_NET_RAW: "CAP_NET_RAW",
            CAP_NET_BIND_SERVICE: "CAP_NET_BIND_SERVICE",
        }
        missing = [name for bit, name in need.items() if not caps & (1 << bit)]
        if not missing:
            checks.append(Check("privileges", OK, "CAP_NET_ADMIN, CAP_NET_RAW and CAP_NET_BIND_SERVICE held (dnsmasq)"))
        else:
            checks.append(
                Check(
                    "privileges",
                    FAIL if managed else WARN,
                    f"{', '.join(missing)} missing: dnsmasq cannot serve DHCP/TFTP to the DUTs"
                    + ("" if managed else " (dnsmasq is not managed here, so only a warning)"),
                    "run as root, or the container with --privileged --network=host",
                )
            )
    devices = sorted(
        {*(str(p) for pat in ("ttyUSB*", "ttyACM*") for p in host.dev.glob(pat)), *_serial_paths(settings)}
    )
    if not devices:
        checks.append(Check("serial", OK, f"no USB serial adapters in {host.dev} (netconsole only)"))
    else:
        bad = []
        for dev in devices:
            if not os.path.exists(dev):
                bad.append(f"{dev} does not exist")
            elif not os.access(dev, os.R_OK | os.W_OK):
                bad.append(f"{dev} is not readable and writable")
        if bad:
            checks.append(
                Check(
                    "serial",
                    FAIL,
                    "; ".join(bad),
                    "run as root or add the user to the dialout group; in a container, --privileged and -v /dev:/dev",
                )
            )
        else:
            checks.append(Check("serial", OK, f"{len(devices)} serial device(s) accessible: {', '.join(devices)}"))
    return checks


def _serial_paths(settings: "Settings") -> Iterable[str]:
    for spec in settings.serial:
        yield str(spec).rsplit("@", 1)[0]


# --------------------------------------------------------------------------- tools
def check_tools(host: Host, settings: "Settings", gitlab_instances: int) -> list[Check]:
    checks = []
    managed = bool(settings.dnsmasq_interface.strip())
    dnsmasq = host.which("dnsmasq")
    if dnsmasq:
        checks.append(Check("tool.dnsmasq", OK, f"found at {dnsmasq}"))
    else:
        checks.append(
            Check(
                "tool.dnsmasq",
                FAIL if managed else WARN,
                "dnsmasq is not installed: nothing gives the DUTs DHCP and TFTP"
                + ("" if managed else " (not managed here: another DHCP server must chain to /boot/<mac>/boot.ipxe)"),
                "apt-get install dnsmasq",
            )
        )
    if managed:
        tftp = settings.data_dir / "tftp"
        missing = [name for name in IPXE_FILES if not (tftp / name).is_file()]
        if not missing:
            checks.append(Check("ipxe files", OK, f"{', '.join(IPXE_FILES)} in {tftp}"))
        else:
            source = next((d for d in host.ipxe_dirs if all((d / n).is_file() for n in missing)), None)
            fix = (
                f"mkdir -p {tftp} && cp {' '.join(str(source / n) for n in missing)} {tftp}/"
                if source
                else f"apt-get install ipxe, then copy {', '.join(missing)} from /usr/lib/ipxe into {tftp}"
            )
            what = f"{', '.join(missing)} missing in the TFTP root {tftp}: DUTs cannot boot"
            checks.append(Check("ipxe files", FAIL, what, fix))
    runner = host.which("gitlab-runner")
    if gitlab_instances:
        if runner:
            checks.append(Check("tool.gitlab-runner", OK, f"found at {runner} ({gitlab_instances} GitLab instance(s))"))
        else:
            checks.append(
                Check(
                    "tool.gitlab-runner",
                    FAIL,
                    f"{gitlab_instances} GitLab instance(s) configured but gitlab-runner is not installed",
                    "install gitlab-runner (packages.gitlab.com/runner/gitlab-runner) or remove the instances",
                )
            )
    else:
        found = f"found at {runner}" if runner else "not installed"
        checks.append(Check("tool.gitlab-runner", OK, f"{found}; no GitLab configured"))
    ser2net = host.which("ser2net")
    checks.append(
        Check(
            "tool.ser2net",
            OK,
            f"found at {ser2net}" if ser2net else "not installed (optional: only for consoles shared by ser2net)",
        )
    )
    return checks


# --------------------------------------------------------------------------- ports
def check_ports(host: Host, settings: "Settings") -> list[Check]:
    from .config import parse_hostport

    checks = []
    health: Optional[dict] = None
    for name, address in (("port.api", settings.listen), ("port.netconsole", settings.netconsole)):
        try:
            bind_host, port = parse_hostport(address)
        except ValueError as exc:
            checks.append(Check(name, FAIL, str(exc), "give HOST:PORT"))
            continue
        why = host.bind_free(bind_host, port)
        if why is None:
            checks.append(Check(name, OK, f"{address} is free"))
            continue
        if name == "port.api":
            probe = "127.0.0.1" if bind_host in ("0.0.0.0", "") else ("[::1]" if bind_host == "::" else bind_host)
            health = host.fetch_health(f"http://{probe}:{port}/api/v1/health")
            if health is not None:
                checks.append(
                    Check(name, OK, f"{address} is served by valve-console {health.get('version')} "
                                    f"(farm {health.get('farm_name')}, status {health.get('status')})")
                )
                continue
        elif health is not None and str(health.get("netconsole", "")).endswith(f":{port}"):
            checks.append(Check(name, OK, f"{address} is served by the running valve-console backend"))
            continue
        checks.append(
            Check(
                name,
                FAIL,
                f"{address} cannot be bound ({why}) and no valve-console backend answers there",
                "stop the program holding it (ss -ltnp) or choose another address "
                f"(--{'listen' if name == 'port.api' else 'netconsole'})",
            )
        )
    return checks


# --------------------------------------------------------------------------- database
def read_database(path: Path) -> tuple[Optional[int], int, Optional[str]]:
    """(schema version, GitLab instances, error) of the database at ``path``, opened read-only."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2)
    except sqlite3.Error as exc:
        return None, 0, str(exc)
    try:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "schemaversion" not in tables:
            return None, 0, "it has no schemaversion table: not a valve-console database"
        row = conn.execute("SELECT version FROM schemaversion WHERE id = 1").fetchone()
        gitlab = 0
        if "gitlabinstance" in tables:
            gitlab = conn.execute("SELECT count(*) FROM gitlabinstance").fetchone()[0]
        return (int(row[0]) if row else None), int(gitlab), None
    except sqlite3.Error as exc:
        return None, 0, str(exc)
    finally:
        conn.close()


def check_database(settings: "Settings") -> tuple[Check, int]:
    from .backend.store import SCHEMA_VERSION

    if settings.database_url and not settings.database_url.startswith("sqlite:///"):
        return Check("database", OK, "an external database (database_url): not checked here"), 0
    path = Path(settings.database_url[len("sqlite:///"):]) if settings.database_url else settings.db_path
    if not path.exists():
        return Check("database", OK, f"{path} does not exist yet; it will be created (schema v{SCHEMA_VERSION})"), 0
    if not os.access(path, os.R_OK):
        return Check("database", FAIL, f"{path} is not readable", "run as the backend's user (root in the image)"), 0
    version, gitlab, error = read_database(path)
    if error is not None:
        return Check("database", FAIL, f"{path} cannot be read: {error}", "restore it from a backup"), 0
    if version is None:
        return Check("database", FAIL, f"{path} has no schema version row", "restore it from a backup"), gitlab
    if version > SCHEMA_VERSION:
        return (
            Check(
                "database",
                FAIL,
                f"{path} is schema v{version}, newer than this program's v{SCHEMA_VERSION}",
                "install the valve-console release that wrote it",
            ),
            gitlab,
        )
    if version < SCHEMA_VERSION:
        return (
            Check(
                "database",
                WARN,
                f"{path} is schema v{version}; the next start migrates it to v{SCHEMA_VERSION}",
                f"back it up first: cp {path} {path}.v{version}",
            ),
            gitlab,
        )
    return Check("database", OK, f"{path} is readable, schema v{version}"), gitlab


# --------------------------------------------------------------------------- all
def run_checks(settings: "Settings", host: Optional[Host] = None) -> list[Check]:
    host = host or Host()
    db_check, gitlab = check_database(settings)
    return [
        *check_network(host, settings),
        *check_volumes(host, settings),
        *check_privileges(host, settings),
        *check_tools(host, settings, gitlab),
        *check_ports(host, settings),
        db_check,
    ]


def main(settings: "Settings", host: Optional[Host] = None, out=None) -> int:
    import sys

    out = out or sys.stdout
    checks = run_checks(settings, host)
    for check in checks:
        print(check.line(), file=out)
    failed = [c for c in checks if c.verdict == FAIL]
    warned = [c for c in checks if c.verdict == WARN]
    print(f"{len(checks)} checks: {len(failed)} FAIL, {len(warned)} WARN", file=out)
    return 1 if failed else 0
