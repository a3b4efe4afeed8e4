"""USB serial adapters read straight from sysfs, for hosts where no udevd runs.

Without udevd there is no ``ID_SERIAL_SHORT`` or ``/dev/serial/by-path``. The same facts are in
sysfs: a tty whose device sits under a USB interface (ttyUSB via usb-serial, ttyACM via cdc_acm)
has ``bInterfaceNumber`` on that interface and ``idVendor``/``idProduct``/``serial`` on the USB
device above it. The physical path is rebuilt the way udev's path_id builtin spells it
(``pci-0000:00:14.0-usb-0:1.2:1.0``), so an identity is the same with or without udevd.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .base import DEFAULT_BAUD, SerialDeviceInfo

_PCI = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-9a-f]$")
_USB_ROOT = re.compile(r"^usb\d+$")
_USB_IFACE = re.compile(r"^\d+-[\d.]+:\d+\.\d+$")


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace").strip() or None
    except OSError:
        return None


def _bus_path_prefix(root_parent: Path) -> str | None:
    """The path_id prefix of a USB host controller: ``pci-<addr>`` or ``platform-<name>``."""
    name = root_parent.name
    if _PCI.fullmatch(name):
        return f"pci-{name}"
    if "platform" in root_parent.parts:
        return f"platform-{name}"
    return None


def describe_tty(name: str, sys_root: str | Path = "/sys", baud: int = DEFAULT_BAUD) -> SerialDeviceInfo | None:
    """Describe ``/sys/class/tty/<name>`` if it is a USB serial adapter, else None."""
    root = Path(sys_root)
    try:
        tty_dir = Path(os.path.realpath(root / "class" / "tty" / name))
    except OSError:
        return None
    if not tty_dir.exists():
        return None
    interface_dir: Path | None = None
    usb_dir: Path | None = None
    for parent in tty_dir.parents:
        if parent == root or parent == parent.parent:
            break
        if interface_dir is None and (parent / "bInterfaceNumber").exists():
            interface_dir = parent
        if (parent / "idVendor").exists():
            usb_dir = parent
            break
    if usb_dir is None:
        return None
    port_number = _read(root / "class" / "tty" / name / "device" / "port_number")
    id_path = None
    usb_root = next((p for p in usb_dir.parents if _USB_ROOT.fullmatch(p.name)), None)
    if usb_root is not None and interface_dir is not None and _USB_IFACE.fullmatch(interface_dir.name):
        prefix = _bus_path_prefix(usb_root.parent)
        port_path = interface_dir.name.split("-", 1)[1]  # "1-1.2:1.0" -> "1.2:1.0"
        if prefix:
            id_path = f"{prefix}-usb-0:{port_path}"
    serial = _read(usb_dir / "serial")
    if serial is not None:
        serial = re.sub(r"[^\w.\-]", "_", serial)  # as udev's ID_SERIAL_SHORT replaces odd characters
    return SerialDeviceInfo(
        devnode=f"/dev/{name}",
        id_serial_short=serial,
        interface=_read(interface_dir / "bInterfaceNumber") if interface_dir is not None else None,
        vid=_read(usb_dir / "idVendor"),
        pid=_read(usb_dir / "idProduct"),
        id_path=id_path,
        port_number=port_number,
        baud=baud,
        source="sysfs",
    )


def scan(sys_root: str | Path = "/sys", baud: int = DEFAULT_BAUD) -> dict[str, SerialDeviceInfo]:
    """Every USB serial adapter under ``<sys_root>/class/tty``, keyed by tty name."""
    found: dict[str, SerialDeviceInfo] = {}
    try:
        names = sorted(os.listdir(Path(sys_root) / "class" / "tty"))
    except OSError:
        return found
    for name in names:
        info = describe_tty(name, sys_root, baud)
        if info is not None:
            found[name] = info
    return found
