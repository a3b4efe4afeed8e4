"""Device discovery: identities, the sysfs reading of USB adapters, explicit paths, the kernel uevent plumbing."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from tests.conftest import make_settings
from tests.consoles.conftest import need_socat, wait_for
from valve_console.backend.farm import Farm
from valve_console.drivers.serial import (
    ExplicitDeviceSource,
    PyudevDeviceSource,
    SerialDeviceInfo,
    parse_serial_spec,
)
from valve_console.drivers.serial import sysfs

MAC = "52:54:00:11:22:0f"


def test_identity_prefers_serial_then_physical_path_then_node():
    usb = SerialDeviceInfo("/dev/ttyUSB3", id_serial_short="A50285BI", interface="01", id_path="pci-0-usb-0:1:1.1")
    assert usb.identity == "A50285BI-if01"
    clone = SerialDeviceInfo("/dev/ttyUSB0", by_path="/dev/serial/by-path/pci-0000:00:14.0-usb-0:1.2:1.0-port0")
    assert clone.identity == "pci-0000:00:14.0-usb-0:1.2:1.0-port0"
    no_udev = SerialDeviceInfo("/dev/ttyACM0", id_path="pci-0000:00:14.0-usb-0:1.3:1.0")
    assert no_udev.identity == "pci-0000:00:14.0-usb-0:1.3:1.0"
    assert SerialDeviceInfo("/dev/pts/7").identity == "/dev/pts/7"


def test_serial_specs():
    assert parse_serial_spec("/dev/ttyUSB0") == ("/dev/ttyUSB0", 115200)
    assert parse_serial_spec("/dev/serial/by-path/pci-0000:00:14.0-usb-0:1:1.0@921600") == (
        "/dev/serial/by-path/pci-0000:00:14.0-usb-0:1:1.0",
        921600,
    )
    bad_specs = (("ttyUSB0", "absolute"), ("/dev/x@fast", "not a number"), ("/dev/x@0", "between"), ("@9600", "path"))
    for bad, words in bad_specs:
        with pytest.raises(ValueError, match=words):
            parse_serial_spec(bad)


def fake_sysfs(root: Path) -> Path:
    """A sysfs tree as the kernel lays out an FTDI (usb-serial, with a serial), a CDC-ACM clone and ttyS0."""
    usb = root / "devices/pci0000:00/0000:00:14.0/usb1"
    ftdi = usb / "1-1/1-1.2"
    (ftdi / "1-1.2:1.0/ttyUSB0/tty/ttyUSB0").mkdir(parents=True)
    (ftdi / "idVendor").write_text("0403\n")
    (ftdi / "idProduct").write_text("6001\n")
    (ftdi / "serial").write_text("A50285BI\n")
    (ftdi / "1-1.2:1.0/bInterfaceNumber").write_text("00\n")
    (ftdi / "1-1.2:1.0/ttyUSB0/port_number").write_text("0\n")
    os.symlink("../../../ttyUSB0", ftdi / "1-1.2:1.0/ttyUSB0/tty/ttyUSB0/device")
    acm = usb / "1-1/1-1.3"
    (acm / "1-1.3:1.0/tty/ttyACM0").mkdir(parents=True)
    (acm / "idVendor").write_text("1a86\n")
    (acm / "idProduct").write_text("7523\n")
    (acm / "1-1.3:1.0/bInterfaceNumber").write_text("00\n")
    os.symlink("../../../1-1.3:1.0", acm / "1-1.3:1.0/tty/ttyACM0/device")
    (root / "devices/pnp0/00:00/tty/ttyS0").mkdir(parents=True)
    klass = root / "class/tty"
    klass.mkdir(parents=True)
    os.symlink(ftdi / "1-1.2:1.0/ttyUSB0/tty/ttyUSB0", klass / "ttyUSB0")
    os.symlink(acm / "1-1.3:1.0/tty/ttyACM0", klass / "ttyACM0")
    os.symlink(root / "devices/pnp0/00:00/tty/ttyS0", klass / "ttyS0")
    return root


def test_sysfs_reads_usb_adapters_without_udevd(tmp_path):
    root = fake_sysfs(tmp_path / "sys")
    ftdi = sysfs.describe_tty("ttyUSB0", root)
    assert ftdi is not None
    assert (ftdi.vid, ftdi.pid, ftdi.id_serial_short, ftdi.interface, ftdi.port_number) == (
        "0403",
        "6001",
        "A50285BI",
        "00",
        "0",
    )
    assert ftdi.id_path == "pci-0000:00:14.0-usb-0:1.2:1.0"  # as udev's path_id spells it
    assert ftdi.identity == "A50285BI-if00"
    assert ftdi.path_identity == "pci-0000:00:14.0-usb-0:1.2:1.0-port0"  # the /dev/serial/by-path name
    clone = sysfs.describe_tty("ttyACM0", root)
    assert clone is not None and clone.id_serial_short is None
    assert clone.identity == "pci-0000:00:14.0-usb-0:1.3:1.0"  # no serial: the physical port
    assert sysfs.describe_tty("ttyS0", root) is None  # not USB
    assert sorted(sysfs.scan(root)) == ["ttyACM0", "ttyUSB0"]


@need_socat
async def test_explicit_paths_are_watched(socat_pairs):
    pair = socat_pairs("dut")
    source = ExplicitDeviceSource([f"{pair.a}@57600"], poll_interval=0.1)
    await source.start()
    events = source.events()
    first = await asyncio.wait_for(events.__anext__(), 2)
    assert first.action == "add" and first.device.identity == pair.a and first.device.baud == 57600
    pair.stop()
    gone = await asyncio.wait_for(events.__anext__(), 3)
    assert gone.action == "remove" and gone.device.identity == pair.a
    pair.start()
    back = await asyncio.wait_for(events.__anext__(), 3)
    assert back.action == "add" and back.device.identity == pair.a
    await source.stop()


async def test_kernel_uevents_reach_the_loop_without_a_thread():
    uevent = Path("/sys/class/tty/ttyS0/uevent")
    if not uevent.exists() or not os.access(uevent, os.W_OK):
        pytest.skip("no writable /sys/class/tty/ttyS0/uevent to trigger a kernel event")
    source = PyudevDeviceSource("sysfs", include=lambda name: name == "ttyS0")
    await source.start()
    try:
        if source.error:
            pytest.skip(f"no netlink uevents here: {source.error}")
        assert [d.devnode for d in source.list()] == ["/dev/ttyS0"]  # the scan (ttyS0 is not USB: included by hand)
        before = source.events_seen
        uevent.write_text("change")
        await wait_for(lambda: source.events_seen > before, what="a kernel uevent")
        import threading

        import pyudev

        # The monitor is a socket watched by the loop (add_reader), not pyudev's observer thread.
        assert not any(isinstance(t, pyudev.MonitorObserver) for t in threading.enumerate())
        assert source._fd is not None
    finally:
        await source.stop()


@need_socat
async def test_serial_option_gives_a_farm_its_devices(tmp_path, socat_pairs):
    pair = socat_pairs("cli")
    farm = Farm(
        make_settings(tmp_path / "data", serial=[f"{pair.a}@57600"], console_tcp_base=0, console_discovery="off")
    )
    await farm.start()
    try:
        await wait_for(lambda: pair.a in farm.consoles.devices and farm.consoles.devices[pair.a].stream, what="open")
        link = farm.consoles.devices[pair.a].link
        assert link.serial.baudrate == 57600
        await pair.dut.write(f"SALAD.machine_id={MAC}\r\n".encode())
        await wait_for(lambda: MAC in farm.consoles.consoles and farm.consoles.consoles[MAC].stream, what="bound")
        assert farm.consoles.consoles[MAC].to_json()["device"] == pair.a
    finally:
        await farm.stop()


def test_the_command_line_passes_serial_devices_to_the_settings():
    from valve_console.cli import _settings, build_parser

    args = build_parser().parse_args(["--serial", "/dev/ttyUSB0", "--serial", "/dev/ttyACM0@9600"])
    assert _settings(args, data_dir=Path("/tmp/x")).serial == ["/dev/ttyUSB0", "/dev/ttyACM0@9600"]
