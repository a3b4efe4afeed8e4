"""ConsolePolicy: a binding is earned (the machine's registered address, a local source, or the "free"
policy); address comparison helpers."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any


@dataclass
class ConsolePolicy:
    """How a console binding is earned and what DUT-facing console state may cost.

    ``bind``: "address" (a netconsole stream binds a machine from its registered address or from a
    local source) or "free" (from anywhere, while the machine has no live stream). ``local_sources``:
    trusted_networks-style items naming the gateway itself. A hub built without settings (tests of its
    buffers) is permissive: ``ConsolePolicy()`` binds any free console; a farm's comes from its settings.
    """

    bind: str = "free"
    local_sources: tuple[str, ...] = ("auto",)
    max_connections: int = 256
    max_per_source: int = 4
    marker_timeout: float = 60.0
    unbound_ttl: float = 1800.0
    unknown_max: int = 64
    unknown_per_source: int = 4
    unknown_ttl: float = 600.0
    logs_max_bytes: int = 0
    sweep_interval: float = 1.0

    @classmethod
    def from_settings(cls, settings: Any) -> "ConsolePolicy":
        return cls(
            bind=settings.console_bind_policy,
            local_sources=tuple(settings.console_local_sources),
            max_connections=settings.netconsole_max_connections,
            max_per_source=settings.netconsole_max_per_source,
            marker_timeout=settings.netconsole_marker_timeout,
            unbound_ttl=settings.console_unbound_ttl,
            unknown_max=settings.console_unknown_max,
            unknown_per_source=settings.console_unknown_per_source,
            unknown_ttl=settings.console_unknown_ttl,
            logs_max_bytes=settings.console_logs_max_bytes,
            sweep_interval=min(1.0, settings.netconsole_marker_timeout / 4, settings.console_unknown_ttl / 4),
        )


def _ip(host: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not host:
        return None
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0].strip("[]"))
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def same_address(a: str | None, b: str | None) -> bool:
    """Two textual addresses name the same host (``::ffff:10.0.0.1`` is ``10.0.0.1``)."""
    x, y = _ip(a), _ip(b)
    return x is not None and x == y
