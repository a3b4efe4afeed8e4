"""vivian/qemu.py's command line, checked by running the script with --dry-run (no QEMU started)."""

from __future__ import annotations

import subprocess
import sys

from tests.e2e.helpers import ROOT


def qemu_py(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "vivian/qemu.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=30, check=False
    )


def test_an_outlet_network_boots_from_the_gateway_as_the_guest_reaches_it() -> None:
    done = qemu_py("--mac", "52:54:00:11:22:05", "--api", "http://127.0.0.1:8123", "--console", "127.0.0.1:8100",
                   "--outlet", "5", "--dry-run")  # fmt: skip
    assert done.returncode == 0, done.stderr
    words = done.stdout.split()
    assert words[:3] == ["qemu-system-x86_64", "-accel", "tcg"]
    netdev = words[words.index("-netdev") + 1]
    assert "dhcpstart=10.0.2.20" in netdev  # 10.0.2.<15 + outlet>: one address per DUT
    assert "bootfile=http://10.0.2.2:8123/boot/52:54:00:11:22:05/boot.ipxe?platform=${platform}" in netdev
    assert "virtio-net-pci,netdev=net0,mac=52:54:00:11:22:05" in words
    assert "socket,id=console,host=127.0.0.1,port=8100,reconnect=1" in words
    assert "-kernel" not in words and words[words.index("-boot") + 1] == "n"


def test_bad_arguments_are_refused_in_words() -> None:
    done = qemu_py("--mac", "52:54:00:11:22:05", "--api", "https://gw", "--console", "127.0.0.1:8100", "--dry-run")
    assert done.returncode == 2
    assert "must be http://" in done.stderr
    done = qemu_py("--mac", "52:54:00:11:22:05", "--api", "http://gw", "--console", "nowhere", "--dry-run")
    assert done.returncode == 2
    assert "is not HOST:PORT" in done.stderr


def test_a_vm_farm_dut_is_on_the_dut_switch_and_its_serial_is_a_usb_adapter_of_the_gateway() -> None:
    done = qemu_py("--mac", "52:54:00:11:22:03", "--api", "http://127.0.0.1:8001", "--console", "127.0.0.1:8100",
                   "--outlet", "3", "--netdev-mcast", "230.0.0.1:41234",
                   "--serial-socket", "/run/vm/outlet-{outlet}.sock", "--dry-run")  # fmt: skip
    assert done.returncode == 0, done.stderr
    words = done.stdout.split()
    # the NIC joins the switch on loopback only; DHCP and the boot file come from the gateway's dnsmasq
    assert words[words.index("-netdev") + 1] == "socket,id=net0,mcast=230.0.0.1:41234,localaddr=127.0.0.1"
    assert "bootfile=" not in done.stdout and words[words.index("-boot") + 1] == "n"
    # the serial port is the client of the adapter's socket (the outlet's), reconnecting: not the netconsole
    assert words[words.index("-chardev") + 1] == "socket,id=console,path=/run/vm/outlet-3.sock,reconnect=1"
    assert "port=8100" not in done.stdout
    refused = qemu_py("--mac", "52:54:00:11:22:03", "--api", "http://127.0.0.1:8001", "--console", "127.0.0.1:8100",
                      "--netdev-mcast", "230.0.0.1", "--dry-run")
    assert refused.returncode == 2 and "is not MULTICAST_ADDRESS:PORT" in refused.stderr
