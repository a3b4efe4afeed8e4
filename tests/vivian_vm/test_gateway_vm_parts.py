"""vivian/gateway_vm.py's pieces that need no image and no VM: the QEMU command line, the VM layer,
the kernel checks, the screen reader, the preflight refusals."""

from __future__ import annotations

import lzma
import shutil
import socket
import struct
from pathlib import Path

import pytest

from vivian import gateway_vm as gvm


def config(tmp_path: Path, **kw) -> gvm.RunConfig:
    return gvm.RunConfig(cache=tmp_path / "cache", state=tmp_path / "state", **kw)


def test_the_gateway_vm_is_wired_as_the_seeds_gateway(tmp_path: Path) -> None:
    cfg = config(tmp_path, ports=gvm.Ports(12222, 18001, 18081, 19191), outlets=4)
    disk = gvm.Disk(tmp_path / "disk", "k")
    state = gvm.StateDir(cfg.state)
    cmd = gvm.qemu_command(cfg, disk, state, "tcg", "230.0.0.1:40000")
    text = " ".join(cmd)
    assert cmd[cmd.index("-accel") + 1] == "tcg" and "-cpu" not in cmd
    assert cmd[cmd.index("-kernel") + 1] == str(disk.kernel)  # the PVH vmlinux
    # root copy-on-write (every boot starts from the image), the two volumes kept
    assert f"id=root,file={disk.root},format=raw,if=none,snapshot=on" in cmd
    assert f"id=permanent,file={state.permanent},format=raw,if=none" in cmd
    assert f"id=tmp,file={state.tmp},format=raw,if=none" in cmd
    # NIC 1: user networking with the three forwards, on loopback only; NIC 2: the DUT switch, on loopback
    public = cmd[cmd.index("-netdev") + 1]
    assert public == ("user,id=public,hostfwd=tcp:127.0.0.1:12222-:22,hostfwd=tcp:127.0.0.1:18001-:8000,"
                      "hostfwd=tcp:127.0.0.1:18081-:8080")
    assert "socket,id=private,mcast=230.0.0.1:40000,localaddr=127.0.0.1" in cmd
    assert f"virtio-net-pci,netdev=public,mac={gvm.PUBLIC_MAC},addr=0x3" in cmd  # ens3
    assert f"virtio-net-pci,netdev=private,mac={gvm.PRIVATE_MAC},addr=0x4" in cmd  # ens4
    # one always-plugged FTDI adapter per outlet, on USB 2 ports 1..4 of the xHCI at 00:05.0
    adapters = [w for w in cmd if w.startswith("usb-serial,")]
    assert adapters == [f"usb-serial,chardev=outlet{i},bus=xhci.0,port={i + 1},always-plugged=on,"
                        f"serial=VIVIAN-OUTLET0{i}" for i in range(4)]
    assert f"socket,id=outlet3,path={state.path}/outlet-3.sock,server=on,wait=off" in cmd
    assert "qemu-xhci,id=xhci,p2=15,p3=1,addr=0x5" in cmd
    assert cmd[cmd.index("-display") + 1] == "none" and cmd[cmd.index("-vga") + 1] == "none"
    assert f"unix:{state.monitor},server=on,wait=off" in cmd and "logfile=" in text
    vnc = gvm.qemu_command(config(tmp_path, display="vnc:3"), disk, state, "kvm", "230.0.0.1:40000")
    assert vnc[vnc.index("-display") + 1] == "vnc=127.0.0.1:3" and vnc[vnc.index("-vga") + 1] == "std"
    assert vnc[vnc.index("-cpu") + 1] == "host"
    with pytest.raises(gvm.VmError, match="unknown display 'sdl'"):
        gvm.qemu_command(config(tmp_path, display="sdl"), disk, state, "tcg", "230.0.0.1:1")


def test_the_vpdu_starts_vm_farm_duts(tmp_path: Path) -> None:
    cfg = config(tmp_path, ports=gvm.Ports(1, 2, 3, 19191), outlets=4)
    cmd = gvm.vpdu_command(cfg, gvm.StateDir(cfg.state), "tcg", "230.0.0.1:40000")
    assert cmd[cmd.index("--port") + 1] == "19191" and cmd[cmd.index("--num-ports") + 1] == "4"
    assert cmd[cmd.index("--dut") + 1] == "qemu"
    assert "--dut-arg=--netdev-mcast=230.0.0.1:40000" in cmd
    assert f"--dut-arg=--serial-socket={cfg.state}/outlet-{{outlet}}.sock" in cmd


def test_the_vm_layer(tmp_path: Path) -> None:
    root = tmp_path / "root"
    for unit in ("systemd-networkd.service", "systemd-networkd.socket", "systemd-networkd-wait-online.service"):
        (root / "lib/systemd/system").mkdir(parents=True, exist_ok=True)
        (root / "lib/systemd/system" / unit).write_text("")
    (root / "etc").mkdir()
    (root / "etc" / "hostname").write_text("vm\n")
    (root / "etc" / "machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    gvm.apply_vm_layer(root, "ssh-ed25519 AAAA vivian")
    etc = root / "etc"
    fstab = (etc / "fstab").read_text()
    assert "LABEL=permanent /mnt/permanent" in fstab and "LABEL=tmp       /mnt/tmp" in fstab
    assert (etc / "machine-id").read_text() == "" and (etc / "hostname").read_text() == "vivian-gateway\n"
    assert "Address=10.42.0.1/24" in (etc / "systemd/network/20-private.network").read_text()
    assert "DHCP=ipv4" in (etc / "systemd/network/10-public.network").read_text()
    wants = etc / "systemd/system/multi-user.target.wants/systemd-networkd.service"
    assert wants.is_symlink() and str(wants.readlink()) == "/lib/systemd/system/systemd-networkd.service"
    assert str((etc / "systemd/system/e2scrub_reap.service").readlink()) == "/dev/null"
    dropin = (etc / "systemd/system/valve-console.service.d/vivian.conf").read_text()
    assert "Environment=VALVE_CONSOLE_DNSMASQ_INTERFACE=ens4" in dropin
    assert "Environment=VALVE_CONSOLE_BOOT_API_HOST=10.42.0.1:8000" in dropin
    assert "EnvironmentFile=-/mnt/permanent/vivian.env" in dropin
    keys = root / "root/.ssh/authorized_keys"
    assert keys.read_text() == "ssh-ed25519 AAAA vivian\n" and keys.stat().st_mode & 0o777 == 0o600
    # an image without systemd-networkd cannot be a VM with two NICs: said in words
    (root / "lib/systemd/system/systemd-networkd.service").unlink()
    with pytest.raises(gvm.VmError, match="systemd-networkd is needed"):
        gvm.apply_vm_layer(root, "key")


def test_a_kernel_without_usb_serial_drivers_is_refused(tmp_path: Path) -> None:
    base = tmp_path / "lib/modules/6.1.0-1-cloud-amd64"
    for name in ("virtio_net", "virtio_blk", "virtio_pci", "e1000e", "igb", "r8169"):
        (base / "kernel/drivers" / f"{name}.ko").parent.mkdir(parents=True, exist_ok=True)
        (base / "kernel/drivers" / f"{name}.ko").write_bytes(b"")
    (base / "modules.builtin").write_text("kernel/drivers/usb/host/xhci-pci.ko\n")
    missing = gvm.check_kernel_modules(tmp_path, "6.1.0-1-cloud-amd64")
    assert missing == ["usbserial", "ftdi_sio", "cp210x", "pl2303", "ch341", "cdc_acm", "ehci_pci"]


def test_the_vmlinux_is_unpacked_from_the_bzimage() -> None:
    elf = b"\x7fELF" + bytes(range(256)) * 64
    bzimage = b"MZ setup code" + b"\0" * 100 + lzma.compress(elf, format=lzma.FORMAT_XZ) + b"trailing data"
    assert gvm.vmlinux_from_bzimage(bzimage) == elf
    with pytest.raises(gvm.VmError, match="not XZ-compressed"):
        gvm.vmlinux_from_bzimage(b"MZ lz4 kernel")


def test_a_virtual_terminal_is_read_as_text() -> None:
    rows, cols = 2, 5
    header = bytes([rows, cols, 0, 0])
    cells = "ab─c OK   ".encode("utf-32-le")
    assert gvm.vt_text(header + cells) == "ab─c\nOK"
    assert gvm.vt_text(header + cells[:8]) is None  # short read
    drawn = "\n".join([" vivian 0.1.0  up 0h 01m  services boot STARTING", "─DUTs (0)──────────"])
    assert gvm.tty2_drawn(drawn) and not gvm.tty2_drawn("connecting to the backend...\n─DUTs──")
    assert not gvm.tty2_drawn(None)
    assert struct.calcsize("<I") == 4  # vcsu cells are 32-bit


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="QEMU is not installed (checked first)")
def test_preflight_refuses_in_words(tmp_path: Path) -> None:
    with pytest.raises(gvm.VmError, match="qemu-system-nowhere is not installed"):
        gvm.preflight(config(tmp_path, qemu="qemu-system-nowhere"))
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    try:
        port = holder.getsockname()[1]
        with pytest.raises(gvm.VmError, match=f"port {port} on 127.0.0.1 \\(the web forward\\) is in use"):
            gvm.preflight(config(tmp_path, ports=gvm.Ports(0, 0, port, 0)))
    finally:
        holder.close()
    deep = tmp_path / ("d" * 120)
    with pytest.raises(gvm.VmError, match="too long for unix sockets"):
        gvm.preflight(gvm.RunConfig(state=deep, ports=gvm.Ports(0, 0, 0, 0)))


def test_clean_removes_only_what_a_vm_keeps(tmp_path: Path) -> None:
    state = gvm.StateDir(tmp_path / "state")
    state.path.mkdir()
    for name in ("permanent.img", "tmp.img", "serial.log", "status.json", "outlet-3.sock", "notes.txt"):
        (state.path / name).write_text("x")
    (state.duts).mkdir()
    (state.duts / "dut.log").write_text("x")
    state.remove()
    assert sorted(p.name for p in state.path.iterdir()) == ["notes.txt"]
