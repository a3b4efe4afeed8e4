"""Network boot of the DUTs: boot configs, the iPXE script, dnsmasq host pinning and config.

Everything here is pure (text in, text out) except :func:`write_atomically` (file I/O: call it
through ``asyncio.to_thread``) and :func:`dnsmasq_test` (async: runs ``dnsmasq --test``).

Public API
----------

``BootConfig(kernel_url, initrd_url, cmdline="")``
    What one DUT boots next (frozen dataclass). Built from a job's deployment
    (``Job.deployment_for_boot(n)``) or :func:`registration_boot` for unknown machines. The URLs and
    the cmdline are checked on creation (``ValueError``) so that nothing can inject iPXE commands.

``ipxe_script(config, platform=None, buildarch=None) -> str``
    The answer to ``GET /boot/<mac>/boot.ipxe?platform=&buildarch=`` (valve-infra §5.4): sets
    ``semicolon:hex 3b``, downloads the kernel (with ``initrd=initrd`` unless ``platform == "pcbios"``
    and every ``;`` of the cmdline written as ``${semicolon:string}``), then the initrd, then boots.

``registration_boot(*, kernel_url, initrd_url, api_host, registry, ...) -> BootConfig``
    The default boot of a DUT the gateway does not know (or that has nothing to do): boot2container
    running the ``machine_registration ... register`` container.

``validate_url(url, what="URL") -> str`` and ``validate_cmdline(cmdline) -> str``
    The checks :class:`BootConfig` applies, reusable by the job schema.

``DhcpHost(mac, ip, hostname)``, ``dhcp_hostname(name) -> str``, ``dhcp_hosts(machines, comment=None) -> str``,
``parse_dhcp_hosts(text) -> list[DhcpHost]``, ``write_atomically(path, text, mode=0o644) -> Path``
    The dnsmasq ``--dhcp-hostsfile`` that pins each DUT's IP: lines ``<mac>,<ip>,<hostname>`` (a real
    hostname; valve-infra wrote ``set:<name>``, a dnsmasq *tag*). MACs are normalised with
    :func:`valve_console.backend.registration.normalise_mac`. After writing, SIGHUP the dnsmasq.

``dnsmasq_config(private_interface, private_ip, dhcp_range, tftp_root, hosts_file, leases_file,
ipxe_bios, ipxe_efi, boot_url) -> str``
    The config of an optional managed dnsmasq: DHCP + TFTP only (``port=0``), NTP and DNS options
    pointing at the gateway, BIOS/EFI iPXE binaries over TFTP, and iPXE clients (user class ``iPXE``)
    chained to ``<boot_url>/boot/${netX/mac}/boot.ipxe?platform=${platform}&buildarch=${buildarch}``.
    Refuses a private IP inside the DHCP range.

``prepare_tftp_root(config_text, sources=IPXE_SOURCES) -> (Path | None, problems)``
    Makes the config's ``tftp-root=`` directory and copies the iPXE binaries of its ``dhcp-boot=`` lines
    there from Debian's ipxe package when missing (dnsmasq does not start without the directory).

``dnsmasq_command(conf_file, executable="dnsmasq") -> list[str]``, ``find_dnsmasq() -> str | None``,
``async dnsmasq_test(config_text, timeout=10.0) -> tuple[bool, str]``
    How to run it; ``dnsmasq_test`` syntax-checks a config with ``dnsmasq --test`` (Debian package
    ``dnsmasq-base`` is enough). It returns ``(False, "dnsmasq is not installed")`` when it is missing.

``BootCache(directory, base, max_bytes)``, ``cache_name(url)``, ``safe_file_name(name)``, ``BootCacheError``
    Remote kernels/initramfs downloaded once (httpx, streamed to a temp file, renamed) into
    ``<data>/files/<sha256(url)[:16]>-<basename>`` and served by ``GET /files/<name>``;
    ``await cache.localise(config)`` gives the config with local URLs.

``BootService(bus, machines, root, debounce, dnsmasq_conf)``, ``pinned_hosts(machines)``
    Keeps one pin per machine, updated from each ``machine`` event (its JSON), and rewrites
    ``<root>/hosts.dhcp`` when a pin changed (coalesced per burst, atomically) and runs the optional
    managed dnsmasq (checked with ``dnsmasq --test`` first; SIGHUP after each hosts write).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import re
import shutil
import tempfile
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, Mapping, NamedTuple, Optional, Sequence, Union

from .rules import IPXE_OPERATORS, control_chars, is_http_url, normalise_mac, validate_url

__all__ = [
    "BootCache",
    "BootCacheError",
    "BootConfig",
    "BootService",
    "DEFAULT_REGISTRATION_IMAGE",
    "DEFAULT_REGISTRY",
    "DhcpHost",
    "dhcp_hostname",
    "dhcp_hosts",
    "dnsmasq_command",
    "dnsmasq_config",
    "dnsmasq_test",
    "find_dnsmasq",
    "prepare_tftp_root",
    "cache_name",
    "ipxe_script",
    "parse_dhcp_hosts",
    "pinned_hosts",
    "registration_boot",
    "safe_file_name",
    "validate_cmdline",
    "validate_url",
    "write_atomically",
]

DEFAULT_REGISTRY = "ci-gateway:8002"
DEFAULT_REGISTRATION_IMAGE = "mupuf/valve-infra/machine_registration:latest"

MAX_CMDLINE_LENGTH = 8192


def validate_cmdline(cmdline: str) -> str:
    """Check a kernel command line for an iPXE script; returns it, raises ``ValueError`` in words.

    Refused: control characters (newlines above all), ``&&`` and ``||``. A ``;`` is fine: the
    script writes it as ``${semicolon:string}``.
    """
    if not isinstance(cmdline, str):
        raise ValueError("the kernel cmdline must be a string")
    if len(cmdline) > MAX_CMDLINE_LENGTH:
        raise ValueError(f"the kernel cmdline is longer than {MAX_CMDLINE_LENGTH} characters")
    bad = control_chars(cmdline)
    if bad:
        raise ValueError(
            f"the kernel cmdline contains the control character {bad[0]!r} (a newline would start an iPXE command)"
        )
    for token in IPXE_OPERATORS:
        if token in cmdline:
            raise ValueError(f"the kernel cmdline contains {token!r}, which iPXE would run as a conditional command")
    return cmdline


@dataclass(frozen=True)
class BootConfig:
    """What a DUT boots: kernel URL, optional initrd URL and the kernel command line."""

    kernel_url: str
    initrd_url: Optional[str]
    cmdline: str = ""

    def __post_init__(self) -> None:
        validate_url(self.kernel_url, "kernel URL")
        if self.initrd_url is not None:
            validate_url(self.initrd_url, "initrd URL")
        validate_cmdline(self.cmdline)


def ipxe_script(config: BootConfig, platform: Optional[str] = None, buildarch: Optional[str] = None) -> str:
    """The iPXE script that boots ``config``.

    ``platform`` is iPXE's ``${platform}`` (``pcbios``, ``efi``): EFI kernels need ``initrd=initrd``
    on their command line, BIOS ones must not get it. ``buildarch`` (``i386``, ``x86_64``, ``arm64``)
    does not change the script; it is accepted for the caller's log line.
    """
    del buildarch  # same script on every architecture
    # Re-check: a BootConfig could have been built with object.__setattr__ tricks or dataclasses.replace.
    validate_url(config.kernel_url, "kernel URL")
    if config.initrd_url is not None:
        validate_url(config.initrd_url, "initrd URL")
    cmdline = validate_cmdline(config.cmdline).replace(";", "${semicolon:string}")
    kernel = ["kernel", config.kernel_url]
    if config.initrd_url is not None and platform != "pcbios":
        kernel.append("initrd=initrd")
    if cmdline.strip():
        kernel.append(cmdline.strip())
    lines = [
        "#!ipxe",
        "set semicolon:hex 3b",
        "echo Downloading the kernel",
        " ".join(kernel),
    ]
    if config.initrd_url is not None:
        lines += ["echo Downloading the initrd", f"initrd --name initrd {config.initrd_url}"]
    lines += ["echo Booting!", "boot"]
    return "\n".join(lines) + "\n"


_B2C_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]*")  # fullmatch: "$" would allow a final newline


def _b2c_token(value: str, what: str) -> str:
    if not isinstance(value, str) or not _B2C_TOKEN.fullmatch(value) or len(value) > 512:
        raise ValueError(f"{what} {str(value)[:80]!r} is not valid (letters, digits and . _ : / @ + - only)")
    return value


def registration_boot(
    *,
    kernel_url: str,
    initrd_url: str,
    api_host: str,
    registry: str = DEFAULT_REGISTRY,
    image: str = DEFAULT_REGISTRATION_IMAGE,
    ntp_peer: Optional[str] = None,
    cache_device: str = "none",
    extra_args: Sequence[str] = (),
) -> BootConfig:
    """The boot of an unknown DUT: boot2container running ``machine_registration -m <api_host> register``.

    - ``kernel_url``/``initrd_url``: the default kernel and boot2container initramfs, served by the gateway;
    - ``api_host``: ``host[:port]`` of this gateway's API as the DUT reaches it (the container POSTs to
      ``http://<api_host>/api/v1/machine/``), e.g. ``10.42.0.1:8000``;
    - ``registry``: the container registry (proxy) the DUT pulls from, e.g. ``10.42.0.1:8002``;
    - ``ntp_peer``: defaults to the host part of ``api_host``;
    - ``extra_args``: more kernel arguments, appended as they are.

    No ``console=`` and no ``SALAD.machine_id``: the machine is unknown; the container finds its console
    by ``SALAD.ping``/``SALAD.pong``.
    """
    _b2c_token(api_host, "api_host")
    _b2c_token(registry, "registry")
    _b2c_token(image, "image")
    if ntp_peer is not None:
        peer = ntp_peer
    else:
        peer = api_host.rsplit(":", 1)[0] if api_host.count(":") == 1 else api_host
    _b2c_token(peer, "ntp_peer")
    if cache_device not in ("none", "auto", "reset") and not cache_device.startswith("/dev/"):
        raise ValueError(f"cache_device {cache_device!r} is not none, auto, reset or a /dev/ path")
    _b2c_token(cache_device, "cache_device")
    container = f"-ti --tls-verify=false docker://{registry}/{image} -m {api_host} register"
    args = [f'b2c.container="{container}"', f"b2c.ntp_peer={peer}", f"b2c.cache_device={cache_device}"]
    for arg in extra_args:
        if not isinstance(arg, str) or not arg.strip():
            raise ValueError(f"extra kernel argument {arg!r} is empty or not a string")
        args.append(arg.strip())
    return BootConfig(kernel_url=kernel_url, initrd_url=initrd_url, cmdline=" ".join(args))


# ---------------------------------------------------------------------------------- dnsmasq hosts file

_HOSTNAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")  # fullmatch


def dhcp_hostname(name: str) -> str:
    """A machine's name as a DHCP hostname (one RFC 1123 label): ``valve-gfx9_2.1`` → ``valve-gfx9-2-1``.

    Lower case; anything but letters, digits and ``-`` becomes ``-``; at most 63 characters.
    """
    text = re.sub(r"[^a-z0-9-]+", "-", str(name).strip().lower())
    text = re.sub(r"-{2,}", "-", text).strip("-")[:63].strip("-")
    if not text:
        raise ValueError(f"{str(name)[:40]!r} cannot be made into a hostname")
    return text


class DhcpHost(NamedTuple):
    """One pinned DUT: normalised MAC, IPv4 address, hostname."""

    mac: str
    ip: str
    hostname: str

    @classmethod
    def make(cls, mac: str, ip: str, hostname: str) -> "DhcpHost":
        """Validate and normalise (MAC forms ``aa:bb:..``, ``aa-bb-..``, ``aabb..``); ``ValueError`` in words."""
        mac_n = normalise_mac(mac)
        try:
            ip_n = str(ipaddress.IPv4Address(str(ip).strip()))
        except ValueError:
            raise ValueError(f"{str(ip)[:40]!r} is not an IPv4 address") from None
        name = str(hostname).strip()
        if not _HOSTNAME.fullmatch(name):
            raise ValueError(f"{name[:70]!r} is not a hostname (1-63 lower-case letters, digits or '-')")
        return cls(mac_n, ip_n, name)

    def line(self) -> str:
        return f"{self.mac},{self.ip},{self.hostname}"


def _as_host(item: Union[DhcpHost, Sequence[str], Mapping[str, Any]]) -> Optional[DhcpHost]:
    if isinstance(item, DhcpHost):
        return DhcpHost.make(item.mac, item.ip, dhcp_hostname(item.hostname))
    if isinstance(item, Mapping):
        mac = item.get("mac_address", item.get("mac"))
        ip = item.get("ip_address", item.get("ip"))
        name = item.get("hostname") or item.get("full_name") or item.get("base_name")
        if ip is None:
            return None  # nothing to pin yet
        if mac is None or name is None:
            raise ValueError(f"a machine needs a MAC address and a name to be pinned: {dict(item)!r:.120}")
        return DhcpHost.make(mac, ip, dhcp_hostname(name))
    mac, ip, name = item
    return DhcpHost.make(mac, ip, dhcp_hostname(name))


def _check_unique(hosts: Iterable[tuple[Optional[int], DhcpHost]]) -> None:
    seen: dict[tuple[str, str], DhcpHost] = {}
    for lineno, host in hosts:
        where = f"line {lineno}: " if lineno is not None else ""
        for kind, value in (("MAC", host.mac), ("IP", host.ip), ("hostname", host.hostname)):
            other = seen.get((kind, value))
            if other is not None:
                raise ValueError(f"{where}{kind} {value} is pinned twice ({other.line()} and {host.line()})")
            seen[(kind, value)] = host


def dhcp_hosts(
    machines: Iterable[Union[DhcpHost, Sequence[str], Mapping[str, Any]]], comment: Optional[str] = None
) -> str:
    """The text of a dnsmasq ``--dhcp-hostsfile``: ``<mac>,<ip>,<hostname>`` lines sorted by MAC.

    ``machines`` holds :class:`DhcpHost`, ``(mac, ip, name)`` tuples or machine JSON mappings
    (``mac_address``, ``ip_address``, ``full_name``); names go through :func:`dhcp_hostname`, and
    mappings without an IP address are skipped. ``comment`` (any number of lines) goes on top as ``#``
    lines. Duplicate MACs, IPs or hostnames raise ``ValueError``.
    """
    hosts = [h for h in (_as_host(m) for m in machines) if h is not None]
    hosts.sort()
    _check_unique((None, h) for h in hosts)
    out: list[str] = []
    if comment:
        out += [f"# {line}".rstrip() for line in str(comment).splitlines()]
    out += [h.line() for h in hosts]
    return "\n".join(out) + "\n" if out else ""


def parse_dhcp_hosts(text: str) -> list[DhcpHost]:
    """Parse a hosts file written by :func:`dhcp_hosts`; errors name the line (``ValueError``).

    Blank lines and ``#`` comments are skipped. valve-infra's ``<mac>,<ip>,set:<name>`` lines are read
    too (the name becomes the hostname) so that an old file can be migrated.
    """
    hosts: list[tuple[int, DhcpHost]] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 3:
            raise ValueError(f"line {lineno}: expected <mac>,<ip>,<hostname>, got {line[:80]!r}")
        mac, ip, name = parts
        if name.startswith("set:"):
            name = dhcp_hostname(name[4:])
        try:
            hosts.append((lineno, DhcpHost.make(mac, ip, name)))
        except ValueError as exc:
            raise ValueError(f"line {lineno}: {exc}") from None
    _check_unique(hosts)
    return [h for _, h in hosts]


def write_atomically(path: Union[str, os.PathLike[str]], text: str, mode: int = 0o644) -> Path:
    """Replace ``path`` by ``text`` atomically: temp file in the same directory, fsync, chmod, rename.

    Blocking file I/O: from the event loop call ``await asyncio.to_thread(write_atomically, ...)``.
    """
    target = Path(path)
    directory = target.parent
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return target
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
    return target


# ---------------------------------------------------------------------------------- managed dnsmasq

_IFNAME = re.compile(r"[A-Za-z0-9_.:-]{1,15}")  # fullmatch, as every pattern here
_TFTP_FILE = re.compile(r"[A-Za-z0-9_.+-][A-Za-z0-9_./+-]{0,254}")


def _conf_value(value: Any, what: str) -> str:
    text = str(value)
    if not text:
        raise ValueError(f"{what} is empty")
    bad = [c for c in text if c.isspace() or c in ',#"\'' or unicodedata.category(c) == "Cc"]
    if bad:
        raise ValueError(f"{what} {text[:80]!r} contains {bad[0]!r}, which a dnsmasq config line cannot hold")
    return text


def _conf_path(value: Union[str, os.PathLike[str]], what: str) -> str:
    text = _conf_value(os.fspath(value), what)
    if not text.startswith("/"):
        raise ValueError(f"{what} {text!r} must be an absolute path")
    return text


def _parse_range(dhcp_range: Union[str, Sequence[str]]) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]:
    parts = [p.strip() for p in dhcp_range.split(",")] if isinstance(dhcp_range, str) else list(dhcp_range)
    if len(parts) != 2:
        raise ValueError(f"the DHCP range {dhcp_range!r} is not <first>,<last>")
    try:
        first, last = (ipaddress.IPv4Address(str(p).strip()) for p in parts)
    except ValueError as exc:
        raise ValueError(f"the DHCP range {dhcp_range!r}: {exc}") from None
    if first > last:
        raise ValueError(f"the DHCP range {first}..{last} is reversed")
    return first, last


def dnsmasq_config(
    private_interface: str,
    private_ip: str,
    dhcp_range: Union[str, Sequence[str]],
    tftp_root: Union[str, os.PathLike[str]],
    hosts_file: Union[str, os.PathLike[str]],
    leases_file: Union[str, os.PathLike[str]],
    ipxe_bios: str,
    ipxe_efi: str,
    boot_url: str,
) -> str:
    """The config file of the managed dnsmasq (DHCP and TFTP on the DUT network, no DNS).

    - ``private_ip``: the gateway's address on the DUT network, optionally with its prefix
      (``10.42.0.1/24``); with a prefix the DHCP range must lie inside that network;
    - ``dhcp_range``: ``"first,last"`` or ``(first, last)``; the private IP may not be inside it
      (valve-infra 2022-09 refuses to start then);
    - ``ipxe_bios``/``ipxe_efi``: file names in ``tftp_root`` (``undionly.kpxe``, ``ipxe.efi``) sent to
      firmware PXE clients; EFI is told apart by DHCP option 93 (client-arch 7 or 9);
    - ``boot_url``: the gateway's HTTP base URL as DUTs reach it (``http://10.42.0.1:8000``); clients
      that are already iPXE get ``<boot_url>/boot/${netX/mac}/boot.ipxe?platform=${platform}&buildarch=${buildarch}``
      as boot file, which iPXE expands (``netX`` is the interface it booted from).

    Run it with :func:`dnsmasq_command`.
    """
    if not isinstance(private_interface, str) or not _IFNAME.fullmatch(private_interface):
        raise ValueError(f"{private_interface!r} is not a network interface name")
    try:
        iface = ipaddress.IPv4Interface(str(private_ip).strip())
    except ValueError:
        raise ValueError(f"{private_ip!r} is not an IPv4 address (optionally with /prefix)") from None
    gateway = iface.ip
    first, last = _parse_range(dhcp_range)
    if first <= gateway <= last:
        raise ValueError(f"the private IP {gateway} is inside the DHCP range {first}..{last}: move one of them")
    if "/" in str(private_ip):
        net = iface.network
        if first not in net or last not in net:
            raise ValueError(f"the DHCP range {first}..{last} is not inside the private network {net}")
    for name, what in ((ipxe_bios, "the BIOS iPXE file"), (ipxe_efi, "the EFI iPXE file")):
        if not isinstance(name, str) or not _TFTP_FILE.fullmatch(name) or ".." in name.split("/"):
            raise ValueError(f"{what} {name!r} is not a file name inside the TFTP root")
    base = _conf_value(boot_url, "the boot URL").rstrip("/")
    if not is_http_url(base):
        raise ValueError(f"the boot URL {boot_url!r} must start with http:// or https://")
    if "$" in base or "?" in base:
        raise ValueError(f"the boot URL {boot_url!r} must be a base URL (no '$' or '?')")
    chain = f"{base}/boot/${{netX/mac}}/boot.ipxe?platform=${{platform}}&buildarch=${{buildarch}}"
    lines = [
        "# Managed by valve-console: DHCP and TFTP for the DUT network. Do not edit, it is rewritten.",
        "port=0",
        f"interface={private_interface}",
        f"dhcp-range={first},{last}",
        f"dhcp-option=option:ntp-server,{gateway}",
        f"dhcp-option=option:dns-server,{gateway}",
        f"dhcp-hostsfile={_conf_path(hosts_file, 'the hosts file')}",
        f"dhcp-leasefile={_conf_path(leases_file, 'the leases file')}",
        "dhcp-match=set:efi-x86_64,option:client-arch,7",
        "dhcp-match=set:efi-x86_64,option:client-arch,9",
        "dhcp-userclass=set:ipxe,iPXE",
        f"dhcp-boot=tag:ipxe,{chain}",
        f"dhcp-boot=tag:!ipxe,tag:efi-x86_64,{ipxe_efi}",
        f"dhcp-boot=tag:!ipxe,tag:!efi-x86_64,{ipxe_bios}",
        f"enable-tftp={private_interface}",
        f"tftp-root={_conf_path(tftp_root, 'the TFTP root')}",
        "log-dhcp",
    ]
    return "\n".join(lines) + "\n"


def find_dnsmasq() -> Optional[str]:
    """Path of the dnsmasq executable (also looked for in /usr/sbin and /sbin), or None."""
    found = shutil.which("dnsmasq")
    if found:
        return found
    for candidate in ("/usr/sbin/dnsmasq", "/sbin/dnsmasq", "/usr/local/sbin/dnsmasq"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


IPXE_SOURCES = (Path("/usr/lib/ipxe"), Path("/usr/share/ipxe"))  # Debian's ipxe package, other distributions


def _public_dir(path: Path) -> None:
    """``path`` made readable and enterable by everyone (0755 at least); the directories it makes on the
    way are 0755 too, those that exist are left as they are (the data dir stays private)."""
    missing = []
    at = path
    while not at.is_dir():
        missing.append(at)
        at = at.parent
    for directory in reversed(missing):
        directory.mkdir(exist_ok=True)
        os.chmod(directory, 0o755)
    mode = path.stat().st_mode & 0o7777
    if mode & 0o755 != 0o755:
        os.chmod(path, mode | 0o755)


def prepare_tftp_root(
    config_text: str, sources: Sequence[Union[str, os.PathLike[str]]] = IPXE_SOURCES
) -> tuple[Optional[Path], list[str]]:
    """Make the managed dnsmasq's TFTP root (its ``tftp-root=``) and copy the iPXE binaries its
    ``dhcp-boot=`` lines name into it from ``sources``, where missing. dnsmasq refuses to start when the
    directory does not exist ("TFTP directory ... inaccessible"), as on a gateway's first start.

    Returns ``(tftp root or None, problems)``: each problem is a file no source has (firmware PXE clients
    then get nothing; iPXE ROMs, as QEMU's, do not need them). Blocking: call it through ``asyncio.to_thread``.
    """
    root: Optional[Path] = None
    wanted: list[str] = []
    for line in config_text.splitlines():
        key, _, value = line.strip().partition("=")
        if key == "tftp-root":
            root = Path(value)
        elif key == "dhcp-boot":
            name = value.split(",")[-1]
            if "://" not in name and _TFTP_FILE.match(name) and ".." not in name.split("/"):
                wanted.append(name)
    if root is None:
        return None, []
    _public_dir(root)  # dnsmasq serves TFTP as its unprivileged user, whatever the service's umask (0077)
    problems = []
    for name in wanted:
        target = root / name
        if target.is_file():
            continue
        source = next((Path(d) / name for d in sources if (Path(d) / name).is_file()), None)
        if source is None:
            where = ", ".join(str(d) for d in sources) or "no iPXE directory given"
            problems.append(f"{name} is not in the TFTP root, and not in {where} (apt-get install ipxe)")
            continue
        _public_dir(target.parent)
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.copyfile(source, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    return root, problems


def dnsmasq_command(conf_file: Union[str, os.PathLike[str]], executable: str = "dnsmasq") -> list[str]:
    """Argv of the managed dnsmasq: in the foreground, only our config, logging to stderr."""
    return [executable, "--keep-in-foreground", f"--conf-file={os.fspath(conf_file)}", "--log-facility=-"]


def _write_temp(text: str) -> str:
    fd, path = tempfile.mkstemp(prefix="valve-console-dnsmasq-", suffix=".conf")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    return path


async def dnsmasq_test(config_text: str, timeout: float = 10.0) -> tuple[bool, str]:
    """Syntax-check a dnsmasq config with ``dnsmasq --test``: ``(ok, dnsmasq's output)``.

    This checks the option syntax only (dnsmasq does not look at interfaces or files then).
    ``(False, "dnsmasq is not installed")`` when there is no dnsmasq.
    """
    executable = find_dnsmasq()
    if executable is None:
        return False, "dnsmasq is not installed"
    path = await asyncio.to_thread(_write_temp, config_text)
    try:
        proc = await asyncio.create_subprocess_exec(
            executable,
            "--test",
            f"--conf-file={path}",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            return False, f"dnsmasq --test did not answer within {timeout:g} s"
        text = out.decode("utf-8", "replace").strip()
        return proc.returncode == 0, text
    finally:
        await asyncio.to_thread(_unlink_quietly, path)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# ---------------------------------------------------------------------------------- boot artefact cache

_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,199}")  # fullmatch


def safe_file_name(name: str) -> bool:
    """True if ``name`` may be served from the files directory (one path component, no dot-dot)."""
    return isinstance(name, str) and bool(_FILE_NAME.fullmatch(name)) and ".." not in name


def cache_name(url: str) -> str:
    """``<hash>-<basename>`` of a cached artefact: 16 hex digits of sha256(url), the URL's last path part."""
    import hashlib
    from urllib.parse import urlsplit

    digest = hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]
    base = urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]
    base = re.sub(r"[^A-Za-z0-9._+-]+", "_", base).strip("._-")[:64] or "file"
    return f"{digest}-{base}"


class BootCacheError(Exception):
    """A boot artefact could not be cached (the message says why, in words)."""


class BootCache:
    """Boot artefacts (kernels, initramfs) downloaded once into ``directory`` and served at ``<base>/<name>``.

    ``base`` (a callable or a string) is the gateway's files URL as the DUTs reach it,
    e.g. ``http://10.42.0.1:8000/files``. URLs already under it, and ``tftp://`` URLs, are used as they are.
    """

    def __init__(self, directory: Union[str, os.PathLike[str]], base: Any, max_bytes: int = 2 << 30,
                 timeout: float = 60.0, guard: Optional[Callable[[str, str], Awaitable[None]]] = None) -> None:
        self.directory = Path(directory)
        self._base = base
        self.max_bytes = max_bytes
        self.timeout = timeout
        # Checks each URL fetched (redirects too): raises ValueError for an address the gateway trusts.
        self.guard = guard
        self.downloads = 0  # downloads done (for tests and metrics)
        self._locks: dict[str, asyncio.Lock] = {}

    @property
    def base(self) -> str:
        return str(self._base() if callable(self._base) else self._base).rstrip("/")

    def is_local(self, url: str) -> bool:
        """URLs on the gateway's own API (its /files/, the default boot files at /boot/...) and tftp://
        are used as they are: the DUT fetches them, the gateway never does."""
        from urllib.parse import urlsplit

        if url.lower().startswith("tftp://"):
            return True
        mine, theirs = urlsplit(self.base), urlsplit(url)
        return (theirs.scheme, theirs.netloc.lower()) == (mine.scheme, mine.netloc.lower())

    async def localise(self, config: BootConfig) -> BootConfig:
        """``config`` with its remote kernel/initrd URLs replaced by cached local ones (``BootCacheError``)."""
        kernel = await self.local_url(config.kernel_url, "kernel")
        initrd = await self.local_url(config.initrd_url, "initramfs") if config.initrd_url else None
        return BootConfig(kernel_url=kernel, initrd_url=initrd, cmdline=config.cmdline)

    async def local_url(self, url: str, what: str = "file") -> str:
        if self.is_local(url):
            return url
        name = cache_name(url)
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            path = self.directory / name
            if not await asyncio.to_thread(path.is_file):
                await self._download(url, path, what)
        return f"{self.base}/{name}"

    @contextlib.asynccontextmanager
    async def _open(self, client: Any, url: str, what: str) -> AsyncIterator[Any]:
        """GET ``url`` following at most 5 redirects, each hop checked by the guard; a 200 response."""
        current = url
        for _ in range(6):
            if self.guard is not None:
                try:
                    await self.guard(current, what)
                except ValueError as exc:
                    raise BootCacheError(str(exc)) from None
            async with client.stream("GET", current) as resp:
                if resp.is_redirect and "location" in resp.headers:
                    current = str(resp.url.join(resp.headers["location"]))
                    continue
                if resp.status_code != 200:
                    raise BootCacheError(f"cannot download the {what} {url}: HTTP {resp.status_code}")
                yield resp
                return
        raise BootCacheError(f"cannot download the {what} {url}: too many redirects")

    async def _download(self, url: str, path: Path, what: str) -> None:
        import httpx

        await asyncio.to_thread(self.directory.mkdir, parents=True, exist_ok=True)
        fd, tmp = await asyncio.to_thread(tempfile.mkstemp, prefix=f".{path.name}.", suffix=".part",
                                          dir=self.directory)
        handle = os.fdopen(fd, "wb")
        size = 0
        try:
            try:
                async with httpx.AsyncClient(follow_redirects=False, timeout=self.timeout) as client:
                    async with self._open(client, url, what) as resp:
                        length = resp.headers.get("content-length")
                        if length and length.isdigit() and int(length) > self.max_bytes:
                            raise BootCacheError(
                                f"the {what} {url} is {int(length)} bytes, more than the {self.max_bytes} allowed"
                            )
                        async for chunk in resp.aiter_bytes(1 << 20):
                            size += len(chunk)
                            if size > self.max_bytes:
                                raise BootCacheError(
                                    f"the {what} {url} is larger than the {self.max_bytes} bytes allowed"
                                )
                            await asyncio.to_thread(handle.write, chunk)
            except httpx.HTTPError as exc:
                raise BootCacheError(f"cannot download the {what} {url}: {type(exc).__name__}: {exc}") from None
            await asyncio.to_thread(handle.close)
            await asyncio.to_thread(os.chmod, tmp, 0o644)
            await asyncio.to_thread(os.replace, tmp, path)
            self.downloads += 1
        except BaseException:
            handle.close()
            await asyncio.to_thread(_unlink_quietly, tmp)
            raise


# ---------------------------------------------------------------------------------- boot service

_log = logging.getLogger(__name__)


HOSTS_COMMENT = "Written by valve-console: do not edit, it is rewritten on every change"


def _pin(machine: Mapping[str, Any]) -> Union[DhcpHost, str, None]:
    """The pin of a machine (JSON mapping): a DhcpHost, None (retired, or no IP yet), or the problem in words."""
    if machine.get("is_retired"):
        return None
    try:
        return _as_host(machine)
    except ValueError as exc:
        return f"{machine.get('mac_address')}: {exc}"


def _render_pins(pins: Iterable[DhcpHost]) -> tuple[str, list[str]]:
    """(hosts file text, problems): sorted by MAC; a pin whose IP or hostname an earlier one holds is left out."""
    hosts: list[DhcpHost] = []
    seen: set[tuple[str, str]] = set()
    problems: list[str] = []
    for host in sorted(pins):
        keys = {("mac", host.mac), ("ip", host.ip), ("name", host.hostname)}
        if keys & seen:
            problems.append(f"{host.mac}: its IP or hostname is pinned already ({host.line()} left out)")
            continue
        seen |= keys
        hosts.append(host)
    return dhcp_hosts(hosts, comment=HOSTS_COMMENT), problems


def pinned_hosts(machines: Iterable[Mapping[str, Any]]) -> tuple[str, list[str]]:
    """(hosts file text, problems): the non-retired machines with an IP; conflicting ones are left out."""
    pins: list[DhcpHost] = []
    problems: list[str] = []
    for m in machines:
        pin = _pin(m)
        if isinstance(pin, DhcpHost):
            pins.append(pin)
        elif pin is not None:
            problems.append(pin)
    text, conflicts = _render_pins(pins)
    return text, problems + conflicts


class BootService:
    """Keeps ``<root>/hosts.dhcp`` in line with the machines and runs an optional managed dnsmasq.

    - ``machines()``: the machines as JSON mappings (``MachineService.list_json().values()``), read once at
      start (and again only if the event subscription lost events);
    - ``bus``: the event bus; each ``machine`` event carries the machine's JSON (None when removed), from
      which that machine's pin is updated. Only a change of a pin (MAC, IP, name, retired) marks the file
      dirty; a burst of events is coalesced into one write ``debounce`` seconds after its first (written
      only when the text changes, atomically in a thread, then SIGHUP to the managed dnsmasq). Nothing
      here rebuilds the machine list's JSON per event: the cost of an event is that one machine's pin;
    - ``dnsmasq_conf``: the managed dnsmasq's config text, or None (off, the default).

    ``state``/``reason`` are for the health report (``ok``, ``degraded``).
    """

    def __init__(
        self,
        bus: Any,
        machines: Any,
        root: Union[str, os.PathLike[str]],
        debounce: float = 0.5,
        dnsmasq_conf: Optional[str] = None,
    ) -> None:
        self.bus = bus
        self.machines = machines
        self.root = Path(root)
        self.hosts_file = self.root / "hosts.dhcp"
        self.debounce = debounce
        self.dnsmasq_conf = dnsmasq_conf
        self.state = "starting"
        self.reason: Optional[str] = None
        self.writes = 0
        self.resyncs = 0  # full reads of machines() (at start, and after lost events)
        self.proc: Optional[asyncio.subprocess.Process] = None
        self.on_health_change: Any = None
        self._last: Optional[str] = None
        self._pins: dict[str, DhcpHost] = {}  # MAC -> its pin (machines with one)
        self._invalid: dict[str, str] = {}  # MAC -> why it cannot be pinned
        self._dirty = True
        self._problems: set[str] = set()  # the problems already logged
        self._sub: Any = None
        self._task: Optional[asyncio.Task] = None

    def _health(self, state: str, reason: Optional[str] = None) -> None:
        self.state, self.reason = state, reason
        if self.on_health_change is not None:
            self.on_health_change()

    async def start(self) -> None:
        await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True)
        self._sub = self.bus.subscribe(["machine"])
        self._resync()
        await self.write_hosts()
        if self.dnsmasq_conf is not None:
            await self._start_dnsmasq()
        else:
            self._health("ok")
        self._task = asyncio.create_task(self._follow(), name="boot-hosts")

    async def stop(self) -> None:
        if self._sub is not None:
            self._sub.close()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 3)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()

    # ---------------------------------------------------------------- pins
    def _resync(self) -> None:
        """Every machine's pin from ``machines()``: at start, and after the subscription lost events."""
        self._pins.clear()
        self._invalid.clear()
        for machine in self.machines():
            self._set_pin(str(machine.get("mac_address")), machine)
        self._dirty = True
        self.resyncs += 1

    def _set_pin(self, mac: str, machine: Optional[Mapping[str, Any]]) -> None:
        pin = _pin(machine) if machine is not None else None
        old = self._pins.get(mac)
        self._invalid.pop(mac, None)
        if isinstance(pin, DhcpHost):
            self._pins[mac] = pin
        else:
            self._pins.pop(mac, None)
            if pin is not None:
                self._invalid[mac] = pin
        if self._pins.get(mac) != old:
            self._dirty = True

    def _apply(self, events: Iterable[Any]) -> None:
        for event in events:
            if event.type == "dropped":
                self._resync()
            elif event.type == "machine" and event.data.get("mac"):
                self._set_pin(str(event.data["mac"]), event.data.get("machine"))

    async def _follow(self) -> None:
        while not self._sub.closed:
            batch = await self._sub.get_batch()
            if not batch:
                continue
            self._apply(batch)
            if not self._dirty:
                continue  # last_seen, state, training...: nothing the hosts file shows
            await asyncio.sleep(self.debounce)  # coalesce the rest of the burst into this write
            self._apply(self._sub.drain())
            try:
                await self.write_hosts()
            except Exception:  # noqa: BLE001 - logged; the next change tries again
                _log.exception("cannot write %s", self.hosts_file)

    async def write_hosts(self) -> bool:
        """Rewrite the hosts file if the pins changed it; SIGHUP the managed dnsmasq. True if written."""
        self._dirty = False
        text, conflicts = _render_pins(self._pins.values())
        problems = {*self._invalid.values(), *conflicts}
        for problem in sorted(problems - self._problems):
            _log.warning("dnsmasq hosts file: %s", problem)
        self._problems = problems
        if text == self._last:
            return False
        try:
            await asyncio.to_thread(write_atomically, self.hosts_file, text)
        except BaseException:
            self._dirty = True
            raise
        self._last = text
        self.writes += 1
        if self.proc is not None and self.proc.returncode is None:
            import signal

            self.proc.send_signal(signal.SIGHUP)
        return True

    async def _start_dnsmasq(self) -> None:
        assert self.dnsmasq_conf is not None
        ok, out = await dnsmasq_test(self.dnsmasq_conf)
        if not ok:
            self._health("degraded", f"managed dnsmasq not started: the config check failed: {out[:300]}")
            return
        conf = self.root / "dnsmasq.conf"
        await asyncio.to_thread(write_atomically, conf, self.dnsmasq_conf)
        try:
            _, problems = await asyncio.to_thread(prepare_tftp_root, self.dnsmasq_conf)
        except OSError as exc:
            self._health("degraded", f"managed dnsmasq not started: cannot prepare its TFTP directory: {exc}")
            return
        for problem in problems:
            _log.warning("managed dnsmasq: %s", problem)
        executable = find_dnsmasq() or "dnsmasq"
        try:
            log_file = await asyncio.to_thread(open, self.root / "dnsmasq.log", "ab")
            try:
                self.proc = await asyncio.create_subprocess_exec(
                    *dnsmasq_command(conf, executable),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=log_file,
                )
            finally:
                log_file.close()
        except OSError as exc:
            self._health("degraded", f"cannot start dnsmasq: {exc}")
            return
        try:
            await asyncio.wait_for(self.proc.wait(), 0.5)
        except asyncio.TimeoutError:
            self._health("ok")
            return
        self._health(
            "degraded", f"dnsmasq exited at once with status {self.proc.returncode} (see {self.root / 'dnsmasq.log'})"
        )
