"""Trusted source networks: requests from them act as the operator without a token.

valve-infra had no authentication at all; its tools (the job client in the GitLab trigger containers,
the tmux dashboard) talk to the executor from the gateway itself. ``trusted_networks`` keeps them
working: ``auto`` trusts the gateway's own addresses (loopback, and each address of its interfaces as a
single host), and an operator may list more CIDRs. A DUT on the private network is never trusted unless
listed: its address is not the gateway's, and Linux drops packets that arrive from outside with one of the
gateway's own addresses as source (``accept_local`` is off by default).

The same test guards what the gateway fetches on a job's behalf (boot artefacts): such a URL must not
point at a trusted endpoint, or a job could read what only the operator may (``check_fetch_url``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from typing import Iterable, Optional, Union
from urllib.parse import urlsplit

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

AUTO = "auto"
OFF = ("none", "off", "")
LOOPBACK: tuple[Network, ...] = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
OWN_ADDRESSES_TTL = 5.0  # seconds the list of the gateway's own addresses is kept (DHCP may change them)


def parse_networks(items: Iterable[str]) -> tuple[bool, list[Network]]:
    """``(auto, networks)`` from the setting's items; ValueError naming a bad one."""
    auto = False
    networks: list[Network] = []
    for item in items:
        text = str(item).strip()
        if text.lower() == AUTO:
            auto = True
        elif text.lower() in OFF:
            continue
        else:
            try:
                networks.append(ipaddress.ip_network(text, strict=False))
            except ValueError:
                raise ValueError(
                    f"trusted_networks: {text[:60]!r} is not a network "
                    "(a CIDR such as 192.0.2.0/24, or 'auto', or 'none')"
                ) from None
    return auto, networks


def own_addresses() -> set[Address]:
    """Every address of this machine's interfaces."""
    import psutil

    found: set[Address] = set()
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family in (socket.AF_INET, socket.AF_INET6):
                try:
                    found.add(ipaddress.ip_address(a.address.split("%", 1)[0]))
                except ValueError:
                    continue
    return found


def ip_of(host: Optional[str]) -> Optional[Address]:
    """A peer's address (an IPv4-mapped IPv6 address as IPv4; a zone id dropped), or None if it is no IP."""
    if not host:
        return None
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


class Trust:
    """Decides whether a peer address is trusted. ``Trust([])`` trusts nobody."""

    def __init__(self, items: Iterable[str]) -> None:
        self.auto, self.networks = parse_networks(items)
        self._own: set[Address] = set()
        self._own_at = float("-inf")

    def set_networks(self, items: Iterable[str]) -> None:
        """Trust these networks from now on (the setting changed at run time); ValueError naming a bad one."""
        self.auto, self.networks = parse_networks(items)

    @property
    def enabled(self) -> bool:
        return self.auto or bool(self.networks)

    def describe(self) -> str:
        parts = (["the gateway's own addresses (loopback and its interfaces)"] if self.auto else []) + [
            str(n) for n in self.networks
        ]
        return ", ".join(parts) if parts else "nobody (the operator token is always needed)"

    def _own_addresses(self) -> set[Address]:
        now = time.monotonic()
        if now - self._own_at > OWN_ADDRESSES_TTL:
            try:
                self._own = own_addresses()
            except Exception:  # noqa: BLE001 - no interface list: trust loopback only
                self._own = set()
            self._own_at = now
        return self._own

    def is_trusted(self, host: Optional[str]) -> bool:
        addr = ip_of(host)
        if addr is None:
            return False
        if self.auto and (any(addr in n for n in LOOPBACK) or addr in self._own_addresses()):
            return True
        return any(addr.version == n.version and addr in n for n in self.networks)

    def is_sensitive(self, addr: Address) -> bool:
        """An address a job's fetch must not reach: a trusted one (0.0.0.0 and :: reach loopback)."""
        if addr.is_unspecified:
            return self.auto
        return self.is_trusted(str(addr))

    async def check_fetch_url(self, url: str, what: str = "URL") -> None:
        """Raise ValueError (in words) if ``url`` resolves to an address the gateway trusts or owns."""
        parts = urlsplit(url)
        host = parts.hostname
        if not host:
            raise ValueError(f"the {what} {url} has no host")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        direct = ip_of(host)
        if direct is not None:
            addresses = {direct}
        else:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError as exc:
                raise ValueError(f"the {what} {url}: cannot resolve {host}: {exc.strerror or exc}") from None
            addresses = {a for a in (ip_of(str(info[4][0])) for info in infos) if a is not None}
        for addr in addresses:
            if self.is_sensitive(addr):
                raise ValueError(
                    f"the {what} {url} points at {addr}, an address of the gateway or a trusted network: "
                    "the gateway does not fetch from itself on a job's behalf (serve the file elsewhere, "
                    "or put it in the gateway's files directory)"
                )
