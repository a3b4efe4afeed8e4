"""A real DUT for Vivian: one QEMU virtual machine (TCG, no KVM needed) that network-boots from the gateway.

The vPDU starts this script instead of ``vivian/dut.py`` when run with ``--dut qemu``; it takes the same
``--mac``/``--api``/``--console`` arguments, asks Linux to SIGTERM it when the vPDU dies (PDEATHSIG)
and then *execs* QEMU, so the vPDU's process-group kill on outlet OFF stops the VM like a power cut.

The machine: ``qemu-system-x86_64 -accel tcg``, 256 MiB, no display, one virtio-net NIC with the
DUT's MAC on QEMU user networking (slirp: the guest is 10.0.2.<15 + outlet>, the host — and so the
gateway's API — is 10.0.2.2), and its first serial port (ttyS0) connected by TCP to the gateway's
netconsole (reconnecting every second if the gateway is not there yet). SeaBIOS and iPXE print there too.

Two ways to boot (``--boot``):

- ``ipxe`` (default): the NIC's iPXE ROM gets ``http://10.0.2.2:<api port>/boot/<mac>/boot.ipxe`` as
  its DHCP boot file from slirp and runs the gateway's script, which downloads the kernel and
  initramfs from the gateway. The gateway must then give the DUTs URLs they can reach: run it with
  ``boot_api_host=10.0.2.2:<api port>`` (``VALVE_CONSOLE_BOOT_API_HOST``) and serve the image built by
  ``vivian/build_dut_image.py --install <data dir>`` as its default ``/files/kernel`` and
  ``/files/initramfs.cpio.xz``;
- ``kernel`` (fallback): QEMU loads the cached image itself (``-kernel``/``-initrd``) with the command
  line of the gateway's boot script for this MAC (or a registration command line when the gateway
  does not answer), plus ``vivian.api=10.0.2.2:<port>`` so that no gateway setting is needed.

Under TCG, measured here (2 shared cores): power-on to registered in about 12 s through iPXE (most of it
iPXE downloading the 14 MB Debian cloud kernel over slirp), about 5 s with ``--boot kernel``.

In the VM farm (``vivian/gateway_vm.py``, the gateway image booted in QEMU) a DUT is wired as on real
hardware instead: ``--netdev-mcast ADDR:PORT`` puts its NIC on the farm's DUT switch (a QEMU multicast
socket netdev on 127.0.0.1 that the gateway VM's second NIC shares: DHCP and iPXE come from the gateway's
managed dnsmasq, the boot script and files from its API at 10.42.0.1:8000) and ``--serial-socket PATH``
connects its serial port to the unix socket of a ``usb-serial`` adapter plugged into the gateway VM
(``{outlet}`` in PATH becomes the outlet number), which the gateway sees as ``/dev/ttyUSB*``. The DUT's
QEMU is the socket's client and reconnects every second, so the gateway may boot after it.

Run it by hand: ``python vivian/qemu.py --mac 52:54:00:11:22:00 --api http://127.0.0.1:8000
--console 127.0.0.1:8100 [--boot kernel] [--dry-run]``, or in the VM farm ``... --netdev-mcast
230.0.0.1:PORT --serial-socket STATE/outlet-{outlet}.sock``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
from collections.abc import Sequence
from urllib.parse import urlsplit

try:
    from vivian.dut import fetch_boot_script, kernel_cmdline
except ImportError:  # run as a script (by the vPDU): the module is next to this one
    from dut import fetch_boot_script, kernel_cmdline  # type: ignore[no-redef]

HOST_FROM_GUEST = "10.0.2.2"  # slirp's address of the host
LOOPBACK = ("127.0.0.1", "localhost", "0.0.0.0", "::1", "::", "")
QEMU = "qemu-system-x86_64"
IPXE_QUERY = "?platform=${platform}&buildarch=${buildarch}"  # expanded by iPXE


def guest_api(api: str) -> tuple[str, int]:
    """``(host, port)`` of the gateway API as the guest reaches it (loopback becomes 10.0.2.2)."""
    parts = urlsplit(api if "://" in api else f"http://{api}")
    if parts.scheme not in ("http", ""):
        raise ValueError(f"the API URL {api!r} must be http:// (iPXE and busybox speak plain HTTP)")
    host = parts.hostname or ""
    port = parts.port or 80
    if host in LOOPBACK:
        host = HOST_FROM_GUEST
    return host, port


def guest_ip(outlet: int) -> str:
    """The address slirp's DHCP gives the DUT of ``outlet``: 10.0.2.15, .16, ... (unique per outlet)."""
    return f"10.0.2.{15 + outlet % 200}"


def registration_cmdline(api_host: str) -> str:
    """A registration command line like the gateway's default boot, for when it does not answer."""
    return (
        f'b2c.container="-ti docker://ci-gateway:8002/mupuf/valve-infra/machine_registration:latest '
        f'-m {api_host} register" b2c.cache_device=none'
    )


def _report(message: str) -> None:
    print(f"qemu-dut: {message}", file=sys.stderr, flush=True)


def fetch_cmdline(api: str, mac: str, timeout: float = 3.0) -> str | None:
    """The kernel command line of the gateway's boot script for ``mac`` (None: no answer)."""
    script = fetch_boot_script(api, mac, timeout, report=_report)
    return None if script is None else kernel_cmdline(script)


def unreachable_boot_urls(api: str, mac: str, timeout: float = 3.0) -> list[str]:
    """URLs of the gateway's boot script for ``mac`` that a slirp guest cannot reach (loopback hosts)."""
    script = fetch_boot_script(api, mac, timeout, report=None)
    if script is None:
        return []
    bad = []
    for line in script.splitlines():
        words = line.split()
        for word in words[1:]:
            if word.startswith(("http://", "https://")) and (urlsplit(word).hostname or "") in LOOPBACK:
                bad.append(word)
    return bad


def qemu_command(
    mac: str,
    api: str,
    console: str,
    *,
    outlet: int = 0,
    boot: str = "ipxe",
    memory: int = 256,
    accel: str = "tcg",
    qemu: str = QEMU,
    kernel: str | None = None,
    initrd: str | None = None,
    cmdline: str = "",
    netdev_mcast: str | None = None,
    serial_socket: str | None = None,
) -> list[str]:
    """The QEMU command line of one DUT (see the module docstring)."""
    host, port = guest_api(api)
    if serial_socket:
        chardev = f"socket,id=console,path={serial_socket.replace('{outlet}', str(outlet))},reconnect=1"
    else:
        con_host, _, con_port = console.rpartition(":")
        con_host = con_host.strip("[]") or "127.0.0.1"
        if not con_port.isdigit():
            raise ValueError(f"the console {console!r} is not HOST:PORT")
        chardev = f"socket,id=console,host={con_host},port={con_port},reconnect=1"
    if netdev_mcast:
        group, _, group_port = netdev_mcast.rpartition(":")
        if not group or not group_port.isdigit() or not 0 < int(group_port) < 65536:
            raise ValueError(f"the DUT switch {netdev_mcast!r} is not MULTICAST_ADDRESS:PORT")
        if boot != "ipxe":
            raise ValueError("on the VM farm's DUT switch a DUT network-boots from the gateway: --boot ipxe only")
        # localaddr: the switch stays on this host (without it the frames leave through the default route)
        netdev = f"socket,id=net0,mcast={group}:{group_port},localaddr=127.0.0.1"
    else:
        netdev = f"user,id=net0,dhcpstart={guest_ip(outlet)}"
    cmd = [
        qemu,
        "-accel", accel,
        "-m", str(memory),
        "-nographic", "-vga", "none", "-monitor", "none", "-parallel", "none",
        "-chardev", chardev,
        "-serial", "chardev:console",
    ]
    if boot == "ipxe":
        if not netdev_mcast:  # slirp hands iPXE the boot script's URL; on the switch the gateway's dnsmasq does
            netdev += f",bootfile=http://{host}:{port}/boot/{mac}/boot.ipxe{IPXE_QUERY}"
        cmd += ["-boot", "n"]
    elif boot == "kernel":
        if not kernel or not initrd:
            raise ValueError("--boot kernel needs the kernel and the initramfs")
        cmd += ["-kernel", kernel, "-initrd", initrd, "-append", f"{cmdline} vivian.api={host}:{port}".strip()]
    else:
        raise ValueError(f"unknown boot {boot!r}: ipxe or kernel")
    cmd += ["-netdev", netdev, "-device", f"virtio-net-pci,netdev=net0,mac={mac}"]
    return cmd


def _die_with_parent() -> None:
    """Power goes when the PDU goes: SIGTERM us (then QEMU, which we become) when the vPDU dies."""
    parent = os.getppid()
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG, kept across execve
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:
        os._exit(0)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="A QEMU DUT for Vivian (network-boots from the gateway).")
    p.add_argument("--mac", required=True, help="the DUT's MAC address (its machine id)")
    p.add_argument("--api", required=True, help="gateway API base URL as this host reaches it")
    p.add_argument("--console", required=True, help="gateway netconsole HOST:PORT")
    p.add_argument("--outlet", type=int, default=0, help="the vPDU outlet (picks the guest's IP)")
    p.add_argument("--boot", choices=("ipxe", "kernel"), default="ipxe", help="network boot (ipxe) or -kernel")
    p.add_argument("--memory", type=int, default=256, help="MiB of RAM (default 256)")
    p.add_argument("--accel", default="tcg", help="QEMU accelerator (default tcg; kvm where /dev/kvm works)")
    p.add_argument("--qemu", default=QEMU, help=f"the QEMU executable (default {QEMU})")
    p.add_argument("--image-dir", help="--boot kernel: directory of the built image (default the build cache)")
    p.add_argument("--netdev-mcast", metavar="ADDR:PORT",
                   help="VM farm: the NIC joins this multicast DUT switch (DHCP/iPXE from the gateway VM)")
    p.add_argument("--serial-socket", metavar="PATH",
                   help="VM farm: the serial port connects to this unix socket (a USB serial adapter of the gateway "
                        "VM); {outlet} is replaced by the outlet number")
    p.add_argument("--dry-run", action="store_true", help="print the QEMU command line and exit")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    kernel = initrd = None
    cmdline = ""
    try:
        if args.boot == "kernel":
            try:
                from vivian.build_dut_image import BuildError, build
            except ImportError:  # run as a script (by the vPDU): the module is next to this one
                from build_dut_image import BuildError, build  # type: ignore[no-redef]

            try:
                image = build(args.image_dir)
            except BuildError as exc:
                print(f"qemu-dut: {exc}", file=sys.stderr)
                return 2
            kernel, initrd = str(image.kernel), str(image.initramfs)
            host, port = guest_api(args.api)
            cmdline = fetch_cmdline(args.api, args.mac) or registration_cmdline(f"{host}:{port}")
        cmd = qemu_command(
            args.mac, args.api, args.console, outlet=args.outlet, boot=args.boot, memory=args.memory,
            accel=args.accel, qemu=args.qemu, kernel=kernel, initrd=initrd, cmdline=cmdline,
            netdev_mcast=args.netdev_mcast, serial_socket=args.serial_socket,
        )
    except ValueError as exc:
        print(f"qemu-dut: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(" ".join(cmd))
        return 0
    executable = shutil.which(cmd[0])
    if executable is None:
        print(f"qemu-dut: {cmd[0]} is not installed (apt-get install qemu-system-x86 ipxe-qemu)", file=sys.stderr)
        return 2
    if args.boot == "ipxe" and not args.netdev_mcast:
        for url in unreachable_boot_urls(args.api, args.mac):
            print(
                f"qemu-dut: warning: the gateway's boot script names {url}, which the guest cannot reach: "
                f"run the gateway with boot_api_host={HOST_FROM_GUEST}:<api port>, or use --boot kernel",
                file=sys.stderr,
                flush=True,
            )
    print(f"qemu-dut: {' '.join(cmd)}", file=sys.stderr, flush=True)
    _die_with_parent()
    os.execv(executable, cmd)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
