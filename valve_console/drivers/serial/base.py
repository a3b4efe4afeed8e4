"""Serial devices: a stable identity per adapter, add/remove events, and the byte-link interface.

A :class:`DeviceSource` tells the console hub which serial devices exist (``add``/``remove``
events). Each device is described by a :class:`SerialDeviceInfo` whose :attr:`identity` stays the
same when the adapter is unplugged and plugged back in, so a machine's binding survives it:

* the USB serial number (``ID_SERIAL_SHORT``) plus the interface number, when the adapter has one;
* otherwise the physical port path (``/dev/serial/by-path`` name, i.e. ``ID_PATH``);
* otherwise the device node as given (ptys, ``/dev/ttyS0``, a socat link).

A *link* is an open byte channel to a console (a serial port, a ser2net TCP or RFC 2217 port):
it delivers bytes to a callback and resolves ``closed`` when it ends.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import AsyncIterator, Literal, Protocol

DEFAULT_BAUD = 115200
# Rates a UART (or a USB adapter) can be asked for; anything else is a typo worth refusing.
MAX_BAUD = 12_000_000


@dataclass(frozen=True)
class SerialDeviceInfo:
    devnode: str  # what is opened: /dev/ttyUSB0, a by-path link, /dev/pts/3, a socat link
    by_path: str | None = None  # /dev/serial/by-path/... (udev) link
    by_id: str | None = None  # /dev/serial/by-id/... (udev) link
    id_serial_short: str | None = None  # the USB iSerial; missing on cheap clones
    interface: str | None = None  # USB interface number, two hex digits ("00")
    vid: str | None = None  # USB idVendor, 4 hex digits
    pid: str | None = None  # USB idProduct, 4 hex digits
    id_path: str | None = None  # udev ID_PATH (or its sysfs equivalent), e.g. pci-0000:00:14.0-usb-0:1.2:1.0
    port_number: str | None = None  # usb-serial port on a multi-port interface
    baud: int = DEFAULT_BAUD
    source: str = ""  # which DeviceSource reported it (udev, sysfs, explicit, fake)
    identity_override: str | None = field(default=None, compare=False)

    @property
    def identity(self) -> str:
        """The stable key: serial+interface, else the physical path, else the device node."""
        if self.identity_override:
            return self.identity_override
        if self.id_serial_short:
            key = self.id_serial_short
            if self.interface is not None:
                key += f"-if{self.interface}"
            if self.port_number not in (None, "0"):
                key += f"-port{self.port_number}"
            return key
        return self.path_identity or self.devnode

    @property
    def path_identity(self) -> str | None:
        """The physical-port identity (the ``/dev/serial/by-path`` name), if known."""
        if self.by_path:
            return self.by_path.rsplit("/", 1)[-1]
        if self.id_path:
            return self.id_path + (f"-port{self.port_number}" if self.port_number is not None else "")
        return None

    def to_json(self) -> dict[str, object]:
        return {
            "identity": self.identity,
            "devnode": self.devnode,
            "by_path": self.by_path,
            "by_id": self.by_id,
            "serial": self.id_serial_short,
            "interface": self.interface,
            "vid": self.vid,
            "pid": self.pid,
            "id_path": self.id_path,
            "baud": self.baud,
            "source": self.source,
        }


@dataclass(frozen=True)
class DeviceEvent:
    action: Literal["add", "remove"]
    device: SerialDeviceInfo


class DeviceSource(Protocol):
    """Something that knows which serial devices exist. ``start`` queues an ``add`` for each present one."""

    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def list(self) -> list[SerialDeviceInfo]: ...

    def events(self) -> AsyncIterator[DeviceEvent]: ...


class QueueSource:
    """Shared plumbing: a queue of events, a table of present devices, ``events()`` until stopped."""

    name = "queue"

    def __init__(self) -> None:
        self._queue: asyncio.Queue[DeviceEvent | None] = asyncio.Queue()
        self._present: dict[str, SerialDeviceInfo] = {}  # key (a sys path or devnode) -> device
        self._stopped = False

    def list(self) -> list[SerialDeviceInfo]:
        return list(self._present.values())

    def _add(self, key: str, device: SerialDeviceInfo) -> None:
        old = self._present.get(key)
        if old == device:
            return
        if old is not None:
            self._queue.put_nowait(DeviceEvent("remove", old))
        self._present[key] = device
        self._queue.put_nowait(DeviceEvent("add", device))

    def _remove(self, key: str) -> None:
        old = self._present.pop(key, None)
        if old is not None:
            self._queue.put_nowait(DeviceEvent("remove", old))

    async def events(self) -> AsyncIterator[DeviceEvent]:
        while True:
            event = await self._queue.get()
            if event is None:
                return
            yield event

    def _close_queue(self) -> None:
        if not self._stopped:
            self._stopped = True
            self._queue.put_nowait(None)


def parse_serial_spec(spec: str, default_baud: int = DEFAULT_BAUD) -> tuple[str, int]:
    """``PATH[@BAUD]`` → (path, baud); raises ValueError in words."""
    text = str(spec).strip()
    path, sep, baud_text = text.rpartition("@")
    if not sep:
        path, baud = text, default_baud
    else:
        try:
            baud = int(baud_text)
        except ValueError:
            raise ValueError(f"serial device {spec!r}: the baud rate {baud_text!r} is not a number") from None
    if not path:
        raise ValueError(f"serial device {spec!r}: give a device path, e.g. /dev/ttyUSB0@115200")
    if not path.startswith("/"):
        raise ValueError(f"serial device {spec!r}: the path must be absolute (e.g. /dev/ttyUSB0)")
    if not 50 <= baud <= MAX_BAUD:
        raise ValueError(f"serial device {spec!r}: the baud rate must be between 50 and {MAX_BAUD}")
    return path, baud


class ConsoleLink(Protocol):
    """An open console byte channel. Bytes arrive through the callback given when it was opened."""

    name: str
    closed: asyncio.Future[Exception | None]  # resolves to None or the exception that ended the link

    def write(self, data: bytes) -> None: ...

    def buffered(self) -> int: ...

    def close(self) -> None: ...
