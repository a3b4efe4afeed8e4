"""Serial consoles: device sources (udev, sysfs, explicit paths, a fake), serial and remote links."""

from .base import DEFAULT_BAUD, ConsoleLink, DeviceEvent, DeviceSource, SerialDeviceInfo, parse_serial_spec
from .remote import RemoteSpec, open_remote, parse_console_url
from .sources import ExplicitDeviceSource, FakeDeviceSource, PyudevDeviceSource, udevd_running
from .transport import open_serial

__all__ = [
    "DEFAULT_BAUD",
    "ConsoleLink",
    "DeviceEvent",
    "DeviceSource",
    "ExplicitDeviceSource",
    "FakeDeviceSource",
    "PyudevDeviceSource",
    "RemoteSpec",
    "SerialDeviceInfo",
    "open_remote",
    "open_serial",
    "parse_console_url",
    "parse_serial_spec",
    "udevd_running",
]
