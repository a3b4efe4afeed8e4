"""Sources of console bytes: ``Stream`` (a netconsole connection, a serial device or a remote console server,
split into lines, bound to a machine by its marker) and ``DeviceState`` (a serial device the hub follows)."""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from ...drivers.serial import ConsoleLink, SerialDeviceInfo


class Stream:
    """One console byte source. ``write`` sends bytes back to the device.

    ``kind``: netconsole, serial or remote. A serial stream has its device ``identity``; a remote
    stream is ``pinned`` to the machine it was configured for (markers do not move it).
    """

    _ids = itertools.count(1)

    def __init__(
        self,
        name: str,
        write: Callable[[bytes], None],
        buffered: Callable[[], int] | None = None,
        kind: str = "netconsole",
        device: str | None = None,
        pinned: str | None = None,
        baud: int | None = None,
        host: str | None = None,
        close: Callable[[], None] | None = None,
    ) -> None:
        self.id = f"s{next(Stream._ids)}"
        self.name = name
        self.write = write
        self.buffered = buffered or (lambda: 0)
        self.kind = kind
        self.device = device
        self.pinned = pinned
        self.baud = baud
        self.host = host  # the peer's address (netconsole)
        self.close = close or (lambda: None)  # ends the stream (netconsole: drops the connection)
        self.machine: str | None = None
        self.line = b""
        self.pending = bytearray()
        self.opened_at = self.last_bytes = self.unbound_since = time.monotonic()
        self.bytes = 0
        self.announced: str | None = None  # the last machine it announced (SALAD.machine_id=)
        self.waiting: str | None = None  # why it is not bound to the machine it announced

    def to_json(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "id": self.id,
            "name": self.name,
            "kind": self.kind,
            "source": self.host,
            "device": self.device,
            "machine": self.machine,
            "announced": self.announced,
            "waiting": self.waiting,
            "connected_for": round(now - self.opened_at, 1),
            "idle": round(now - self.last_bytes, 1),
            "bytes": self.bytes,
            "tail": bytes(self.pending[-512:]).decode("utf-8", "replace"),
        }


@dataclass
class DeviceState:
    info: SerialDeviceInfo
    task: asyncio.Task[None] | None = None
    stream: Stream | None = None
    link: ConsoleLink | None = None
    error: str | None = None
