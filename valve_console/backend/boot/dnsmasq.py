"""The managed dnsmasq: its config (``dnsmasq_config``: DHCP and TFTP on the DUT network, iPXE chained to the
API), the TFTP root (``prepare_tftp_root``), the executable, its command line and config check."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import shutil
import tempfile
import unicodedata
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from ..rules import is_http_url
from .files import _unlink_quietly

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
