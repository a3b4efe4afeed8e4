"""HubHost: what the parts of ConsoleHub (the mixins in netconsole.py, binding.py, sources.py and tcpport.py) use of
the hub they are mixed into: its state (set by ``ConsoleHub.__init__``) and the methods of the hub and of the other
parts. For the type checker only: each part derives from it when type checking, from ``object`` at run time."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Hashable
from typing import TYPE_CHECKING, Any, Callable, Protocol

if TYPE_CHECKING:
    from ..trust import Trust
    from .console import Console
    from .policy import ConsolePolicy
    from .streams import DeviceState, Stream
    from .viewers import TcpViewer


class HubHost(Protocol):
    """The hub as its parts see it (ConsoleHub implements it all)."""

    # ---------------------------------------------------------------- state
    policy: ConsolePolicy
    local: Trust  # sources that are the gateway itself
    known_machine: Callable[[str], bool]
    machine_address: Callable[[str], str | None]
    tcp_host: str | None
    tcp_base: int
    consoles: dict[str, Console]
    streams: set[Stream]
    devices: dict[str, DeviceState]  # device identity -> state (present devices)
    device_owner: dict[str, str]  # device identity -> MAC (stored)
    refused_connections: int
    _by_node: dict[str, str]  # device node -> identity
    _remotes: dict[str, asyncio.Task[None]]
    _conn_tasks: set[asyncio.Task[None]]
    _per_source: dict[str, int]
    _closing: set[asyncio.Future[Exception | None]]  # links being closed
    _stopping: bool

    # ---------------------------------------------------------------- the hub's (hub.py)
    def console(self, mac: str, create: bool = True) -> Console: ...

    def _create(self, mac: str, provisional: bool, origin: str | None = None) -> Console: ...

    def _promote(self, console: Console) -> None: ...

    def _provisional(self) -> list[Console]: ...

    def _changed(self, console: Console) -> None: ...

    def _send(self, console: Console, data: bytes) -> int: ...

    def _assign_device(self, ident: str, mac: str | None, set_by: str) -> None: ...

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]: ...

    def _warn(self, key: Hashable, message: str) -> None: ...

    # ---------------------------------------------------------------- the parts' (binding.py, tcpport.py)
    def feed(self, stream: Stream, data: bytes) -> None: ...

    def bind(self, stream: Stream, mac: str, persist: bool = True, origin: str | None = None) -> None: ...

    def close_stream(self, stream: Stream) -> None: ...

    def _claim(self, stream: Stream, mac: str) -> str | None: ...

    def _is_local(self, stream: Stream) -> bool: ...

    def _tcp_input(self, viewer: TcpViewer, data: bytes) -> None: ...
