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
