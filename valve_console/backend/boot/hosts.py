"""The dnsmasq hosts file: ``DhcpHost`` pins (MAC, IP, hostname), ``dhcp_hosts``/``parse_dhcp_hosts`` and the pins
kept for registered machines (``pinned_hosts``)."""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Iterable, Mapping, NamedTuple, Optional, Sequence, Union

from ..rules import normalise_mac

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
