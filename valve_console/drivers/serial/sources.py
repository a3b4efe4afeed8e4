"""Device sources: pyudev (with a sysfs fallback when no udevd runs), explicit paths, and a fake.

All of them run on the event loop: the udev monitor's socket is watched with ``loop.add_reader``
(no thread), explicit paths are checked once a second, and the fake is driven by a test.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

from . import sysfs
from .base import DEFAULT_BAUD, QueueSource, SerialDeviceInfo, parse_serial_spec

if TYPE_CHECKING:
    import pyudev  # untyped (no stubs): its names are Any to the type checker

log = logging.getLogger(__name__)

UDEV_CONTROL = Path("/run/udev/control")


def udevd_running() -> bool:
    return UDEV_CONTROL.exists()


class PyudevDeviceSource(QueueSource):
    """USB serial adapters (ttyUSB*, ttyACM*, anything under a USB interface) from udev.

    ``mode``: ``udev`` reads udev's properties (``ID_SERIAL_SHORT``, ``ID_PATH``, the
    ``/dev/serial`` links) and listens to udev events; ``sysfs`` reads the same facts from sysfs
    and listens to the kernel's own uevents (hosts without udevd); ``auto`` picks ``udev`` when
    udevd runs. ``include`` names non-USB ttys to report as well (tests use ttyS0).
    """

    def __init__(
        self,
        mode: str = "auto",
        baud: int = DEFAULT_BAUD,
        include: Callable[[str], bool] | None = None,
        sys_root: str = "/sys",
    ) -> None:
        super().__init__()
        if mode not in ("auto", "udev", "sysfs"):
            raise ValueError(f"unknown discovery mode {mode!r} (auto, udev or sysfs)")
        self.requested_mode = mode
        self.mode = mode
        self.baud = baud
        self.include = include
        self.sys_root = sys_root
        self.name = "udev"
        self._monitor: pyudev.Monitor | None = None
        self._fd: int | None = None
        self.events_seen = 0  # raw tty uevents received, for diagnostics and the plumbing test
        self.error: str | None = None

    async def start(self) -> None:
        import pyudev

        if self.mode == "auto":
            self.mode = "udev" if udevd_running() else "sysfs"
        self.name = f"udev({self.mode})"
        context = pyudev.Context()
        try:
            monitor = pyudev.Monitor.from_netlink(context, source="udev" if self.mode == "udev" else "kernel")
            monitor.filter_by(subsystem="tty")
            with contextlib.suppress(Exception):
                monitor.set_receive_buffer_size(4 * 1024 * 1024)
            monitor.start()
            self._monitor = monitor
            self._fd = monitor.fileno()
            asyncio.get_running_loop().add_reader(self._fd, self._on_readable)
        except Exception as exc:  # noqa: BLE001 - no netlink (containers): a scan still works
            self.error = f"no hotplug events: {exc}"
            log.warning("serial discovery: %s", self.error)
        found = await asyncio.to_thread(self._scan, context)
        for key, info in found.items():
            self._add(key, info)

    def _scan(self, context: pyudev.Context) -> dict[str, SerialDeviceInfo]:
        found: dict[str, SerialDeviceInfo] = {}
        for device in context.list_devices(subsystem="tty"):
            info = self._describe(device)
            if info is not None:
                found[device.sys_path] = info
        return found

    def _describe(self, device: pyudev.Device) -> SerialDeviceInfo | None:
        name = device.sys_name
        info = sysfs.describe_tty(name, self.sys_root, self.baud)
        if self.mode == "udev":
            props = device.properties
            links = props.get("DEVLINKS", "").split()
            by_path = next((link for link in links if link.startswith("/dev/serial/by-path/")), None)
            by_id = next((link for link in links if link.startswith("/dev/serial/by-id/")), None)
            if props.get("ID_BUS") == "usb" or by_path or info is not None:
                base = info or SerialDeviceInfo(devnode=device.device_node or f"/dev/{name}", baud=self.baud)
                info = SerialDeviceInfo(
                    devnode=device.device_node or base.devnode,
                    by_path=by_path,
                    by_id=by_id,
                    id_serial_short=props.get("ID_SERIAL_SHORT") or base.id_serial_short,
                    interface=props.get("ID_USB_INTERFACE_NUM") or base.interface,
                    vid=props.get("ID_VENDOR_ID") or base.vid,
                    pid=props.get("ID_MODEL_ID") or base.pid,
                    id_path=props.get("ID_PATH") or base.id_path,
                    port_number=base.port_number,
                    baud=self.baud,
                    source="udev",
                )
        if info is None and self.include is not None and self.include(name):
            info = SerialDeviceInfo(devnode=device.device_node or f"/dev/{name}", baud=self.baud, source=self.name)
        return info

    def _on_readable(self) -> None:
        monitor = self._monitor
        if monitor is None:
            return
        while True:
            try:
                device = monitor.poll(timeout=0)
            except Exception as exc:  # noqa: BLE001 - ENOBUFS after an event storm: rescan later
                log.warning("serial discovery: udev monitor: %s", exc)
                return
            if device is None:
                return
            self.events_seen += 1
            action = device.action
            if action == "remove":
                self._remove(device.sys_path)
            elif action in ("add", "change", "bind", "move"):
                info = self._describe(device)
                if info is not None:
                    self._add(device.sys_path, info)

    async def stop(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._fd)
            self._fd = None
        self._monitor = None
        self._close_queue()


class ExplicitDeviceSource(QueueSource):
    """Devices named by the operator (``--serial PATH[@BAUD]``), watched for appearing and vanishing.

    A USB adapter named by its node gets its USB identity (read from sysfs) so its binding does
    not depend on the name; anything else (a pty, a socat link, ttyS0) is identified by the path
    as written.
    """

    def __init__(self, specs: Iterable[str], poll_interval: float = 1.0, sys_root: str = "/sys") -> None:
        super().__init__()
        self.name = "explicit"
        self.devices = [parse_serial_spec(spec) for spec in specs]
        self.poll_interval = poll_interval
        self.sys_root = sys_root
        self._resolved: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None

    def _describe(self, path: str, baud: int) -> SerialDeviceInfo:
        real = os.path.realpath(path)
        if real.startswith("/dev/"):
            usb = sysfs.describe_tty(os.path.basename(real), self.sys_root, baud)
            if usb is not None:
                return replace(usb, devnode=path, source="explicit")
        return SerialDeviceInfo(devnode=path, baud=baud, source="explicit")

    def _check(self) -> None:
        for path, baud in self.devices:
            try:
                real = os.path.realpath(path) if os.path.exists(path) else None
            except OSError:
                real = None
            if real is None:
                self._resolved.pop(path, None)
                self._remove(path)
            elif self._resolved.get(path) != real:
                self._remove(path)  # the link now names another node: a new device
                self._resolved[path] = real
                self._add(path, self._describe(path, baud))

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            self._check()

    async def start(self) -> None:
        self._check()
        if self.devices:
            self._task = asyncio.create_task(self._watch(), name="serial-explicit-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._close_queue()


class FakeDeviceSource(QueueSource):
    """A device source driven by a test: ``add(info)`` and ``remove(identity)``, pointing at real ptys."""

    def __init__(self, devices: Iterable[SerialDeviceInfo] = ()) -> None:
        super().__init__()
        self.name = "fake"
        self._initial = list(devices)

    async def start(self) -> None:
        for info in self._initial:
            self.add(info)

    def add(self, info: SerialDeviceInfo) -> None:
        if not info.source:
            info = replace(info, source="fake")
        self._add(info.identity, info)

    def remove(self, device: SerialDeviceInfo | str) -> None:
        self._remove(device if isinstance(device, str) else device.identity)

    async def stop(self) -> None:
        self._close_queue()
