"""Vivian's gateway VM: the gateway image (containers/Containerfile) booted in QEMU, with a farm around it.

The seed's Vivian runs its gateway container in a virtual machine. This does the same without running a
container: ``podman image mount`` exposes the built image's root filesystem, a copy of it gets a small
VM layer, and it boots in QEMU with systemd as PID 1:

- **disk** (built once, reused while the image ID and the VM layer are unchanged, in ``.cache/gateway-vm/``):
  the image's root plus Debian's ``linux-image-amd64`` (its modules, pruned of what a VM never loads;
  the kernel is unpacked from the XZ bzImage to a ``vmlinux`` that QEMU boots through PVH, which saves
  the ~5 s TCG spends decompressing it), a busybox initramfs that mounts the root disk, and the VM
  layer: fstab, hostname, systemd-networkd files for the two NICs, root's authorized key (a key made
  for this VM), the farm's settings as a drop-in (dnsmasq on NIC 2, API for the DUTs at 10.42.0.1:8000,
  web front on the public NIC). Everything else a gateway needs is in the image itself.
- **volumes**: ``permanent.img`` and ``tmp.img`` (ext4, virtio disks at ``/mnt/permanent`` and
  ``/mnt/tmp``), kept between runs in the state directory (``make clean`` removes them).
- **networks**: NIC 1 on QEMU user networking (the internet side; host ports forwarded to ssh, the
  API and the web front), NIC 2 on a multicast socket netdev (the private DUT network, a switch shared
  with the DUTs; the group's port is picked per run, on 127.0.0.1 only).
- **DUTs**: ``vivian/vpdu.py --dut qemu`` runs on the host (the gateway reaches it at 10.0.2.2, as in the
  seed); each outlet's QEMU DUT has its NIC on the DUT switch and its serial port wired to a
  ``usb-serial`` adapter (an emulated FTDI) on the gateway's xHCI controller, always plugged.

``run`` prints where everything is, waits for the API and for tty2 to be drawn (timings in
``<state>/status.json``), registers the vPDU as ``vpdu1`` and stays in the foreground until the VM
powers off (``stop``, ``systemctl poweroff`` inside, or Ctrl-C here: an ACPI power-off). Its exit code
is QEMU's. Only one VM runs per state directory. The module only uses the standard library, so
``python3 vivian/gateway_vm.py`` works without the project's virtualenv.

Commands: ``run``, ``disk``, ``connect [-- CMD]``, ``stop``, ``status``, ``probe-kvm``, ``clean``.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import hashlib
import json
import lzma
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
TOP = HERE.parent
try:
    from vivian.build_dut_image import BuildError, Cpio, DutImage, module_order
    from vivian.build_dut_image import build as build_dut_image
except ImportError:  # run as a script: the module is next to this one
    sys.path.insert(0, str(HERE))
    from build_dut_image import BuildError, Cpio, DutImage, module_order  # type: ignore[no-redef]
    from build_dut_image import build as build_dut_image  # type: ignore[no-redef]

QEMU = "qemu-system-x86_64"
PODMAN = ["podman", "--storage-driver", "vfs"]
DEFAULT_IMAGE = "localhost/valve-console/gateway:latest"
DEFAULT_CACHE = TOP / ".cache" / "gateway-vm"  # the disks: `make clean` removes this directory
DEFAULT_DEBS = TOP / ".cache" / "gateway-debs"  # the kernel .deb (a 70 MB download), kept by `make clean`
KERNEL_META = "linux-image-amd64"  # the cloud kernel has no USB: no USB serial adapters
INITRAMFS_INIT = HERE / "gateway-initramfs" / "init"
FORMAT = 1  # bump when the disk layout changes

PUBLIC_MAC = "52:54:00:00:00:01"
PRIVATE_MAC = "52:54:00:00:00:02"
# Fixed PCI slots keep the NIC names (ens3, ens4) and the adapters' /dev/serial/by-path names the same
# whatever else is on the bus (a VGA card for the window or VNC takes slot 2).
PCI_PUBLIC, PCI_PRIVATE, PCI_XHCI, PCI_ROOT, PCI_PERMANENT, PCI_TMP = 3, 4, 5, 6, 7, 8
PUBLIC_IFACE, PRIVATE_IFACE = f"ens{PCI_PUBLIC}", f"ens{PCI_PRIVATE}"
PRIVATE_IP = "10.42.0.1"
GUEST_API_PORT, GUEST_WEB_PORT, GUEST_SSH_PORT = 8000, 8080, 22
SLIRP_GUEST_IP = "10.0.2.15"  # QEMU user networking's first DHCP lease: the gateway's public address
HOST_FROM_GUEST = "10.0.2.2"
MAX_ADAPTERS = 15  # USB 2 ports of one qemu-xhci controller
MCAST_GROUP = "230.0.0.1"

# Modules the gateway's kernel must have for a real gateway (USB serial adapters and their host
# controllers, common NICs) and for this VM (virtio); the disk build refuses a kernel without them.
REQUIRED_MODULES = (
    "usbserial", "ftdi_sio", "cp210x", "pl2303", "ch341", "cdc_acm", "xhci_pci", "ehci_pci",
    "e1000e", "igb", "r8169", "virtio_net", "virtio_blk", "virtio_pci",
)
# What the initramfs loads to mount the root disk (with their dependencies); ext4 asks the crypto
# API for crc32c, which modinfo does not list.
INITRAMFS_MODULES = ("virtio_pci", "virtio_blk", "crc32c_generic", "ext4")
# Module trees a VM never loads, left out of the disk (391 MB of modules → about 150 MB).
PRUNED_MODULES = (
    "sound", "drivers/gpu", "drivers/media", "drivers/infiniband", "drivers/iio", "drivers/staging",
    "drivers/comedi", "drivers/isdn", "drivers/bluetooth", "drivers/target", "drivers/mtd", "drivers/hwmon",
    "drivers/video", "drivers/mmc", "drivers/scsi", "drivers/net/wireless", "drivers/net/ethernet",
    "drivers/net/can", "net/wireless", "net/mac80211", "net/bluetooth",
)
# Units a throw-away VM does not need, masked in the VM layer: they cost seconds of TCG time at boot.
# The serial getty goes too: root has no password (ssh with the VM's key instead), and once a getty holds
# ttyS0 systemd stops printing its status there, which is what the serial log is for.
MASKED_UNITS = ("e2scrub_reap.service", "e2scrub_all.timer", "apt-daily.timer", "apt-daily-upgrade.timer",
                "fstrim.timer", "systemd-tmpfiles-clean.timer", "serial-getty@ttyS0.service")
KERNEL_CMDLINE = (
    "root=/dev/vda rw console=tty1 console=ttyS0,115200 panic=-1 systemd.show_status=yes "
    "net.ifnames=1 tsc=reliable"
)


class VmError(Exception):
    """The VM cannot be built or run; the message says why, in words (one line)."""


# ------------------------------------------------------------------------------------------ helpers


def _run(cmd: Sequence[str], *, what: str | None = None, timeout: float = 600, **kw: object) -> str:
    """Run ``cmd``; its stdout, or :class:`VmError` with the last line of its complaint."""
    try:
        done = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=False, **kw)  # type: ignore[call-overload]
    except FileNotFoundError:
        raise VmError(f"{cmd[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise VmError(f"{what or ' '.join(cmd)} did not finish within {timeout:g} s") from None
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        reason = lines[-1] if lines else f"exit code {done.returncode}"
        raise VmError(f"{what or ' '.join(cmd)} failed: {reason}")
    return str(done.stdout)


def _say(message: str) -> None:
    try:
        print(f"vivian: {message}", flush=True)
    except OSError:  # stdout went away (a closed pipe, a terminal gone): the VM is not stopped for that
        pass


def _sha(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()


def find_qemu(qemu: str = QEMU) -> str:
    path = shutil.which(qemu)
    if path is None:
        raise VmError(f"{qemu} is not installed (apt-get install qemu-system-x86 ipxe-qemu)")
    return path


# ------------------------------------------------------------------------------------------ the image


def image_id(image: str) -> str:
    if shutil.which(PODMAN[0]) is None:
        raise VmError("podman is not installed (apt-get install podman): it builds and mounts the gateway image")
    try:
        return _run([*PODMAN, "image", "inspect", "--format", "{{.Id}}", image], what="podman image inspect").strip()
    except VmError:
        raise VmError(f"the gateway image {image} is not built (make -C containers container)") from None


@contextlib.contextmanager
def mounted_image(image: str) -> Iterator[Path]:
    """The image's root filesystem, read through ``podman image mount`` (no container runs)."""
    root = Path(_run([*PODMAN, "image", "mount", image], what=f"podman image mount {image}").strip())
    try:
        yield root
    finally:
        subprocess.run([*PODMAN, "image", "unmount", image], capture_output=True, check=False)


# ------------------------------------------------------------------------------------------ the kernel


def kernel_package(meta: str = KERNEL_META) -> tuple[str, str]:
    """``(package, version)`` of the kernel the metapackage depends on, e.g. linux-image-6.1.0-57-amd64."""
    try:
        out = _run(["apt-cache", "depends", meta], what=f"apt-cache depends {meta}")
    except VmError as exc:
        raise VmError(f"no gateway kernel: {exc}") from None
    package = next((line.split(":", 1)[1].strip() for line in out.splitlines()
                    if line.strip().startswith("Depends:") and "linux-image-" in line), None)
    if package is None:
        raise VmError(f"no gateway kernel: apt does not know the package {meta} (apt-get update?)")
    version = ""
    for line in _run(["apt-cache", "policy", package]).splitlines():
        if line.strip().startswith("Candidate:"):
            version = line.split(":", 1)[1].strip()
    if not version or version == "(none)":
        raise VmError(f"no gateway kernel: {package} has no installable version (apt-get update?)")
    return package, version


def kernel_deb(package: str, version: str, debs: Path) -> Path:
    """The kernel's .deb, downloaded once into ``debs`` with ``apt-get download``."""
    debs.mkdir(parents=True, exist_ok=True)
    wanted = f"{package}_{version.replace(':', '%3a')}_amd64.deb"
    if (debs / wanted).is_file():
        return debs / wanted
    with tempfile.TemporaryDirectory(dir=debs) as tmp:
        os.chmod(tmp, 0o777)  # apt's _apt user writes the .deb when it can
        try:
            _run(["apt-get", "download", "-q", f"{package}={version}"], cwd=tmp, what=f"apt-get download {package}")
        except VmError as exc:
            raise VmError(f"no gateway kernel: {exc}") from None
        got = sorted(Path(tmp).glob(f"{package}_*.deb"))
        if not got:
            raise VmError(f"no gateway kernel: apt-get download {package} produced no .deb")
        os.replace(got[-1], debs / wanted)
    for old in debs.glob("linux-image-*.deb"):
        if old.name != wanted:
            old.unlink()
    return debs / wanted


def unpack_deb(deb: Path, into: Path) -> None:
    """``dpkg-deb --fsys-tarfile | tar -x --keep-directory-symlink``: /lib stays the usrmerge link."""
    into.mkdir(parents=True, exist_ok=True)
    dpkg = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    try:
        tar = subprocess.run(["tar", "-x", "--keep-directory-symlink", "-C", str(into)], stdin=dpkg.stdout,
                             capture_output=True, text=True, check=False)
    finally:
        assert dpkg.stdout is not None
        dpkg.stdout.close()
    if dpkg.wait() != 0 or tar.returncode != 0:
        raise VmError(f"cannot unpack {deb.name}: {tar.stderr.strip() or 'dpkg-deb failed'}")


def vmlinux_from_bzimage(bzimage: bytes) -> bytes:
    """The ELF kernel inside an XZ-compressed bzImage (QEMU boots it through PVH, no decompression)."""
    at = bzimage.find(b"\xfd7zXZ\x00")
    if at < 0:
        raise VmError("the kernel is not XZ-compressed: cannot unpack a vmlinux from it")
    decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    elf = decompressor.decompress(bzimage[at:])
    if not elf.startswith(b"\x7fELF"):
        raise VmError("the kernel's XZ payload is not an ELF vmlinux")
    return elf


def check_kernel_modules(tree: Path, version: str) -> list[str]:
    """Names of :data:`REQUIRED_MODULES` that the kernel package does not have (built in counts as there)."""
    base = tree / "lib" / "modules" / version
    names = {p.name.split(".ko")[0].replace("-", "_") for p in (base / "kernel").rglob("*.ko*")}
    builtin = base / "modules.builtin"
    if builtin.is_file():
        names |= {Path(line).name.split(".ko")[0].replace("-", "_") for line in builtin.read_text().split()}
    return [m for m in REQUIRED_MODULES if m not in names]


# ------------------------------------------------------------------------------------------ the disk


@dataclass(frozen=True)
class Disk:
    """A built gateway VM disk: root filesystem, kernel (vmlinux, PVH), initramfs."""

    directory: Path
    key: str
    built: bool = False  # built by this call (False: reused)

    @property
    def root(self) -> Path:
        return self.directory / "root.ext4"

    @property
    def kernel(self) -> Path:
        return self.directory / "vmlinux"

    @property
    def initramfs(self) -> Path:
        return self.directory / "initramfs.cpio.gz"

    @property
    def info(self) -> dict[str, object]:
        path = self.directory / "disk.json"
        return json.loads(path.read_text()) if path.is_file() else {}


def ssh_key(cache: Path) -> Path:
    """The private key made for this VM (``<cache>/ssh/id_ed25519``); its public half is root's authorized key."""
    key = cache / "ssh" / "id_ed25519"
    if not key.is_file() or not key.with_suffix(".pub").is_file():
        key.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(key.parent, 0o700)
        for stale in (key, key.with_suffix(".pub")):
            stale.unlink(missing_ok=True)
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vivian-gateway-vm", "-f", str(key)],
             what="ssh-keygen")
    return key


def layer_sources() -> str:
    """Hash of what the disk is made from besides the image and the kernel: the code of the VM layer and
    of the initramfs, and its init (not the rest of this file: a change to how the VM runs keeps the disk)."""
    import inspect

    code = [inspect.getsource(f) for f in (build_disk, apply_vm_layer, farm_settings, gateway_initramfs)]
    values = (PRUNED_MODULES, MASKED_UNITS, INITRAMFS_MODULES, REQUIRED_MODULES, FORMAT, PUBLIC_MAC, PRIVATE_MAC,
              PRIVATE_IP, PUBLIC_IFACE, PRIVATE_IFACE, SLIRP_GUEST_IP, GUEST_API_PORT, GUEST_WEB_PORT)
    return _sha(*code, repr(values),
                INITRAMFS_INIT.read_bytes())


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink():
        path.unlink()
    path.write_text(text)
    os.chmod(path, mode)


def farm_settings() -> dict[str, str]:
    """The gateway's settings in the VM farm (a drop-in: /mnt/permanent/valve-console.env still overrides them)."""
    return {
        "VALVE_CONSOLE_FARM_NAME": "vivian",
        "VALVE_CONSOLE_DNSMASQ_INTERFACE": PRIVATE_IFACE,
        "VALVE_CONSOLE_PRIVATE_IP": f"{PRIVATE_IP}/24",
        "VALVE_CONSOLE_BOOT_API_HOST": f"{PRIVATE_IP}:{GUEST_API_PORT}",
        "VALVE_CONSOLE_WEB_LISTEN": f"{SLIRP_GUEST_IP}:{GUEST_WEB_PORT}",
    }


def apply_vm_layer(root: Path, pubkey: str) -> None:
    """What a VM needs that a container gets from its host: fstab, hostname, network, root's key."""
    etc = root / "etc"
    _write(etc / "fstab", (
        "# The gateway VM (vivian/gateway_vm.py): root on /dev/vda, the seed's two volumes on virtio disks.\n"
        "# No fsck at boot (each costs ~4 s of TCG time on the critical path): the VM powers off cleanly.\n"
        "/dev/vda        /               ext4  rw,errors=remount-ro  0 0\n"
        "LABEL=permanent /mnt/permanent  ext4  rw,nosuid,nodev       0 0\n"
        "LABEL=tmp       /mnt/tmp        ext4  rw,nosuid,nodev       0 0\n"
    ))
    _write(etc / "hostname", "vivian-gateway\n")
    _write(etc / "hosts", "127.0.0.1 localhost\n127.0.1.1 vivian-gateway\n::1 localhost ip6-localhost ip6-loopback\n")
    _write(etc / "machine-id", "")  # made at boot: every VM its own
    _write(etc / "resolv.conf", "nameserver 10.0.2.3\n")  # QEMU user networking's DNS
    network = etc / "systemd" / "network"
    _write(network / "10-public.network", (
        "# NIC 1: the internet side (QEMU user networking).\n"
        f"[Match]\nMACAddress={PUBLIC_MAC}\n\n[Network]\nDHCP=ipv4\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n"
    ))
    _write(network / "20-private.network", (
        "# NIC 2: the private DUT network (the managed dnsmasq serves DHCP and iPXE there).\n"
        f"[Match]\nMACAddress={PRIVATE_MAC}\n\n[Link]\nRequiredForOnline=no\n\n"
        f"[Network]\nAddress={PRIVATE_IP}/24\nConfigureWithoutCarrier=yes\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n"
    ))
    system = etc / "systemd" / "system"
    wants = {
        "multi-user.target.wants/systemd-networkd.service": "/lib/systemd/system/systemd-networkd.service",
        "sockets.target.wants/systemd-networkd.socket": "/lib/systemd/system/systemd-networkd.socket",
        "network-online.target.wants/systemd-networkd-wait-online.service":
            "/lib/systemd/system/systemd-networkd-wait-online.service",
    }
    for link, target in wants.items():
        if not (root / target.lstrip("/")).exists():
            raise VmError(f"the image has no {target}: systemd-networkd is needed for the VM's NICs")
        path = system / link
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        path.symlink_to(target)
    for unit in MASKED_UNITS:
        path = system / unit
        path.unlink(missing_ok=True)
        path.symlink_to("/dev/null")
    # Wait for NIC 1 only (NIC 2 has no carrier until a DUT joins the switch).
    _write(system / "systemd-networkd-wait-online.service.d" / "vivian.conf", (
        "[Service]\nExecStart=\n"
        f"ExecStart=/lib/systemd/systemd-networkd-wait-online --interface={PUBLIC_IFACE} --timeout=60\n"
    ))
    settings = "".join(f"Environment={k}={v}\n" for k, v in farm_settings().items())
    for unit in ("valve-console.service", "valve-console-tty2.service", "valve-console-web.service"):
        _write(system / f"{unit}.d" / "vivian.conf", (
            "# The VM farm (vivian/gateway_vm.py). /mnt/permanent/valve-console.env overrides these, and\n"
            "# /mnt/permanent/vivian.env (written by gateway_vm.py run --env) overrides both.\n"
            f"[Service]\n{settings}EnvironmentFile=-/mnt/permanent/vivian.env\n"
        ))
    ssh = root / "root" / ".ssh"
    ssh.mkdir(parents=True, exist_ok=True)
    os.chmod(ssh, 0o700)
    _write(ssh / "authorized_keys", pubkey if pubkey.endswith("\n") else pubkey + "\n", 0o600)


def gateway_initramfs(tree: Path, busybox: bytes) -> bytes:
    """A gzip initramfs: busybox, :data:`INITRAMFS_MODULES` in load order, and gateway-initramfs/init."""
    import gzip

    modules = module_order(tree, INITRAMFS_MODULES)
    cpio = Cpio()
    for d in ("bin", "dev", "lib", "lib/modules", "newroot", "proc", "sbin", "sys"):
        cpio.dir(d)
    cpio.add("dev/console", 0o020600, rdev=(5, 1))
    cpio.file("bin/busybox", busybox, 0o755)
    cpio.file("init", INITRAMFS_INIT.read_bytes(), 0o755)
    for path in modules:
        cpio.file(f"lib/modules/{path.name}", path.read_bytes())
    cpio.file("lib/modules/load-order", "".join(p.name[: -len(".ko")] + "\n" for p in modules).encode())
    return gzip.compress(cpio.finish(), compresslevel=6)


def _busybox(debs: Path) -> bytes:
    for path in (Path("/bin/busybox"), Path("/usr/bin/busybox")):
        if path.is_file():
            return path.read_bytes()
    tree = debs / "busybox"
    shutil.rmtree(tree, ignore_errors=True)
    with tempfile.TemporaryDirectory(dir=debs) as tmp:
        os.chmod(tmp, 0o777)
        _run(["apt-get", "download", "-q", "busybox-static"], cwd=tmp, what="apt-get download busybox-static")
        unpack_deb(sorted(Path(tmp).glob("busybox-static_*.deb"))[-1], tree)
    return (tree / "bin" / "busybox").read_bytes()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive flock on ``path`` (waits): two builds of the same cache do not overlap."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def build_disk(image: str, cache: Path = DEFAULT_CACHE, debs: Path = DEFAULT_DEBS,
               kernel_meta: str = KERNEL_META, log: bool = True) -> Disk:
    """The disk of ``image``'s current ID (built, or reused when the image and the VM layer are unchanged)."""
    say = _say if log else (lambda _message: None)
    ident = image_id(image)
    package, version = kernel_package(kernel_meta)
    pubkey = ssh_key(cache).with_suffix(".pub").read_text()
    key = _sha(ident, package, version, layer_sources(), pubkey)[:16]
    disk = Disk(cache / f"disk-{key}", key)
    with _locked(cache / "build.lock"):
        if (disk.directory / "disk.json").is_file():
            os.utime(disk.directory)  # most recently used
            return disk
        started = time.monotonic()
        say(f"building the VM disk of {image} ({ident[:12]}) with {package} {version}")
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="build-", dir=cache) as tmp:
            work = Path(tmp)
            deb = kernel_deb(package, version, debs)
            ktree = work / "kernel"
            unpack_deb(deb, ktree)
            kversion = package.removeprefix("linux-image-")
            missing = check_kernel_modules(ktree, kversion)
            if missing:
                raise VmError(f"the kernel {package} lacks modules a gateway needs: {', '.join(missing)}")
            vmlinuz = ktree / "boot" / f"vmlinuz-{kversion}"
            (work / "vmlinux").write_bytes(vmlinux_from_bzimage(vmlinuz.read_bytes()))
            (work / "initramfs.cpio.gz").write_bytes(gateway_initramfs(ktree, _busybox(debs)))
            root = work / "root"
            t0 = time.monotonic()
            with mounted_image(image) as mounted:
                _run(["cp", "-a", f"{mounted}/.", f"{root}/"], what="copying the image's root filesystem")
            copy_s = time.monotonic() - t0
            modules = root / "usr" / "lib" / "modules" / kversion
            shutil.copytree(ktree / "lib" / "modules" / kversion, modules, symlinks=True)
            for pruned in PRUNED_MODULES:
                shutil.rmtree(modules / "kernel" / pruned, ignore_errors=True)
            _run(["chroot", str(root), "/sbin/depmod", "-a", kversion], what="depmod in the image")
            apply_vm_layer(root, pubkey)
            size_mb = int(sum(p.lstat().st_size for p in root.rglob("*")) / 2**20 * 1.4) + 768
            t0 = time.monotonic()
            _run(["mke2fs", "-q", "-t", "ext4", "-L", "gateway", "-E", "root_owner=0:0", "-d", str(root),
                  str(work / "root.ext4"), f"{size_mb}M"], what="mke2fs of the VM disk")
            mkfs_s = time.monotonic() - t0
            shutil.rmtree(root)
            shutil.rmtree(ktree)
            info = {"format": FORMAT, "image": image, "image_id": ident, "kernel": package, "kernel_version": version,
                    "size_mb": size_mb, "build_s": round(time.monotonic() - started, 1),
                    "copy_s": round(copy_s, 1), "mkfs_s": round(mkfs_s, 1)}
            (work / "disk.json").write_text(json.dumps(info, indent=1) + "\n")
            os.replace(work, disk.directory)
            os.mkdir(work)  # for TemporaryDirectory's clean-up
        # Keep this disk and the one used before it (two images, e.g. make vivian's and the tests'); a
        # running VM keeps its open files when its directory goes.
        others = sorted((d for d in cache.glob("disk-*") if d != disk.directory), key=lambda d: d.stat().st_mtime)
        for old in others[:-1]:
            shutil.rmtree(old, ignore_errors=True)
        say(f"VM disk ready in {time.monotonic() - started:.0f} s: {disk.directory}")
    return Disk(disk.directory, key, built=True)


# ------------------------------------------------------------------------------------------ volumes


def make_volume(path: Path, label: str, size: str) -> None:
    if path.exists():
        return
    tmp = path.with_suffix(".new")
    _run(["mke2fs", "-q", "-t", "ext4", "-L", label, "-E", "root_owner=0:0", str(tmp), size], what=f"mke2fs {label}")
    os.replace(tmp, path)


def write_into_volume(volume: Path, files: dict[str, Path], dirs: Sequence[str] = ()) -> None:
    """Copy host files into an ext4 image that is not mounted (``debugfs -w``): DUT boot files, vivian.env."""
    commands = []
    for d in dirs:
        commands.append(f"mkdir {d}")
    for inside, source in files.items():
        commands += [f"rm {inside}", f"write {source} {inside}"]
    script = volume.with_suffix(".debugfs")
    script.write_text("\n".join(commands) + "\n")
    try:
        out = subprocess.run(["debugfs", "-w", "-f", str(script), str(volume)], capture_output=True, text=True,
                             timeout=120, check=False)
    except FileNotFoundError:
        raise VmError("debugfs is not installed (apt-get install e2fsprogs)") from None
    finally:
        script.unlink(missing_ok=True)
    if out.returncode != 0:
        raise VmError(f"debugfs could not write into {volume.name}: {out.stderr.strip()[-300:]}")
    listed = subprocess.run(["debugfs", "-R", "ls -l /", str(volume)], capture_output=True, text=True, check=False)
    for inside in files:
        top = inside.strip("/").split("/")[0]
        if top not in listed.stdout:
            raise VmError(f"debugfs did not write {inside} into {volume.name}")


# ------------------------------------------------------------------------------------------ KVM


def kvm_probe(qemu: str, disk: Disk, timeout: float = 8.0) -> tuple[bool, str]:
    """Boot the VM's kernel and initramfs under KVM to a marker (``vivian.probe``): ``(works, why)``."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is missing or not usable"
    with tempfile.TemporaryDirectory(prefix="vivian-kvm-") as tmp:
        log = Path(tmp) / "serial.log"
        cmd = [qemu, "-accel", "kvm", "-cpu", "host", "-m", "256", "-nographic", "-vga", "none", "-monitor", "none",
               "-no-reboot", "-net", "none", "-kernel", str(disk.kernel), "-initrd", str(disk.initramfs),
               "-append", "console=ttyS0 panic=-1 vivian.probe", "-serial", f"file:{log}"]
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if log.is_file() and b"VIVIAN-PROBE-OK" in log.read_bytes():
                    return True, "a KVM guest booted to userspace"
                if proc.poll() is not None:
                    err = proc.stderr.read().decode(errors="replace").strip().splitlines() if proc.stderr else []
                    return False, f"QEMU with KVM exited: {err[-1] if err else proc.returncode}"
                time.sleep(0.1)
            return False, f"a KVM guest did not reach userspace within {timeout:g} s"
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def accelerator(qemu: str, disk: Disk, cache: Path, wanted: str = "auto", log: bool = True) -> str:
    """``kvm`` or ``tcg``: ``auto`` probes KVM once per host boot and QEMU (the answer is cached)."""
    if wanted in ("kvm", "tcg"):
        return wanted
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip() if Path(
        "/proc/sys/kernel/random/boot_id").exists() else ""
    stamp = _sha(boot_id, qemu, str(Path(qemu).stat().st_mtime))  # the host and QEMU, not the disk
    cached = cache / "kvm-probe.json"
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(cached.read_text())
        if data.get("stamp") == stamp:
            return "kvm" if data["works"] else "tcg"
    works, why = kvm_probe(qemu, disk)
    cached.write_text(json.dumps({"stamp": stamp, "works": works, "why": why}) + "\n")
    if log:
        _say(f"KVM probe: {why}: using {'KVM' if works else 'TCG (software emulation)'}")
    return "kvm" if works else "tcg"


# ------------------------------------------------------------------------------------------ running


@dataclass
class Ports:
    ssh: int = 2222
    api: int = 8001
    web: int = 8081
    vpdu: int = 9191

    def check_free(self) -> None:
        for name, port in (("ssh", self.ssh), ("API", self.api), ("web", self.web), ("vPDU", self.vpdu)):
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind(("127.0.0.1", port))
                except OSError as exc:
                    reason = "in use" if exc.errno == errno.EADDRINUSE else os.strerror(exc.errno or 0).lower()
                    var = {"ssh": "SSH_PORT", "API": "API_PORT", "web": "WEB_PORT", "vPDU": "VPDU_PORT"}[name]
                    raise VmError(f"port {port} on 127.0.0.1 (the {name} forward) is {reason}: "
                                  f"free it or pick another, e.g. make vivian {var}={port + 1}") from None


@dataclass
class RunConfig:
    image: str = DEFAULT_IMAGE
    cache: Path = DEFAULT_CACHE
    state: Path = DEFAULT_CACHE / "state"
    debs: Path = DEFAULT_DEBS
    ports: Ports = field(default_factory=Ports)
    outlets: int = 4
    memory: int = 1536
    smp: int = 2
    display: str = "none"
    accel: str = "auto"
    qemu: str = QEMU
    kernel_meta: str = KERNEL_META
    env: dict[str, str] = field(default_factory=dict)
    dut_image: Path | None = None  # a DUT image cache dir; None: build_dut_image's default
    mcast_port: int = 0  # 0: picked per run


class StateDir:
    """``<state>``: volumes, sockets, logs, the lock of the running VM and its ``status.json``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __getattr__(self, name: str) -> Path:
        files = {"lock": "lock", "status": "status.json", "serial_log": "serial.log", "serial": "serial.sock",
                 "monitor": "monitor.sock", "qemu_log": "qemu.log", "vpdu_log": "vpdu.log", "duts": "duts",
                 "permanent": "permanent.img", "tmp": "tmp.img", "known_hosts": "known_hosts", "env": "vivian.env",
                 "files_stamp": "permanent.files.json"}
        if name in files:
            return self.path / files[name]
        raise AttributeError(name)

    FILES = ("lock", "status.json", "status.tmp", "serial.log", "serial.sock", "monitor.sock", "qemu.log",
             "qemu.pid", "vpdu.log", "permanent.img", "permanent.new", "tmp.img", "tmp.new", "known_hosts",
             "vivian.env", "permanent.files.json", "permanent.debugfs")

    def remove(self) -> None:
        """Delete what a VM keeps here (volumes, logs, sockets), then the directory if nothing else is in it."""
        for name in self.FILES:
            (self.path / name).unlink(missing_ok=True)
        for outlet in range(MAX_ADAPTERS):
            self.outlet_socket(outlet).unlink(missing_ok=True)
        shutil.rmtree(self.path / "duts", ignore_errors=True)
        with contextlib.suppress(OSError):
            self.path.rmdir()

    def outlet_socket(self, outlet: int) -> Path:
        return self.path / f"outlet-{outlet}.sock"

    def running(self) -> dict[str, object] | None:
        """The status of the VM running from this directory, or None."""
        if not self.lock.exists():
            return None
        with open(self.lock) as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                try:
                    return json.loads(self.status.read_text())
                except (OSError, ValueError):
                    return {"state": "starting"}
            fcntl.flock(handle, fcntl.LOCK_UN)
        return None


def preflight(cfg: RunConfig) -> None:
    """The checks that need no image nor disk: QEMU is there, no VM runs from the state directory, the
    forwarded ports are free. :class:`VmError` says what is wrong."""
    find_qemu(cfg.qemu)
    state = StateDir(cfg.state)
    status = state.running()
    if status is not None:
        raise VmError(f"refused: a gateway VM already runs from {state.path} (pid {status.get('pid', '?')}); "
                      "connect with make vivian-connect, or stop it with make vivian-stop")
    for sock in (state.serial, state.monitor):
        if len(str(sock)) > 100:
            raise VmError(f"the state directory path is too long for unix sockets: {state.path}")
    cfg.ports.check_free()


def qemu_command(cfg: RunConfig, disk: Disk, state: StateDir, accel: str, mcast: str) -> list[str]:
    """The gateway VM's QEMU command line (see the module docstring)."""
    p = cfg.ports
    hostfwd = ",".join(f"hostfwd=tcp:127.0.0.1:{host}-:{guest}" for host, guest in
                       ((p.ssh, GUEST_SSH_PORT), (p.api, GUEST_API_PORT), (p.web, GUEST_WEB_PORT)))
    cmd = [
        cfg.qemu, "-name", "vivian-gateway", "-accel", accel, *(["-cpu", "host"] if accel == "kvm" else []),
        "-m", str(cfg.memory), "-smp", str(cfg.smp),
        "-kernel", str(disk.kernel), "-initrd", str(disk.initramfs), "-append", KERNEL_CMDLINE,
        "-drive", f"id=root,file={disk.root},format=raw,if=none,snapshot=on",
        "-device", f"virtio-blk-pci,drive=root,addr={PCI_ROOT:#x}",
        "-drive", f"id=permanent,file={state.permanent},format=raw,if=none",
        "-device", f"virtio-blk-pci,drive=permanent,addr={PCI_PERMANENT:#x}",
        "-drive", f"id=tmp,file={state.tmp},format=raw,if=none",
        "-device", f"virtio-blk-pci,drive=tmp,addr={PCI_TMP:#x}",
        "-netdev", f"user,id=public,{hostfwd}",
        "-device", f"virtio-net-pci,netdev=public,mac={PUBLIC_MAC},addr={PCI_PUBLIC:#x}",
        "-netdev", f"socket,id=private,mcast={mcast},localaddr=127.0.0.1",
        "-device", f"virtio-net-pci,netdev=private,mac={PRIVATE_MAC},addr={PCI_PRIVATE:#x}",
        "-device", f"qemu-xhci,id=xhci,p2={MAX_ADAPTERS},p3=1,addr={PCI_XHCI:#x}",
    ]
    for outlet in range(cfg.outlets):
        cmd += ["-chardev", f"socket,id=outlet{outlet},path={state.outlet_socket(outlet)},server=on,wait=off",
                "-device", f"usb-serial,chardev=outlet{outlet},bus=xhci.0,port={outlet + 1},always-plugged=on,"
                           f"serial={adapter_serial(outlet)}"]
    cmd += [
        "-chardev", f"socket,id=serial0,path={state.serial},server=on,wait=off,logfile={state.serial_log}",
        "-serial", "chardev:serial0",
        "-monitor", f"unix:{state.monitor},server=on,wait=off",
        "-pidfile", str(state.path / "qemu.pid"),
    ]
    if cfg.display == "none":
        cmd += ["-display", "none", "-vga", "none"]
    elif cfg.display == "gtk":
        cmd += ["-display", "gtk", "-vga", "std"]
    elif cfg.display.startswith("vnc"):
        number = cfg.display.partition(":")[2] or "0"
        cmd += ["-display", f"vnc=127.0.0.1:{number}", "-vga", "std"]
    else:
        raise VmError(f"unknown display {cfg.display!r}: none, gtk or vnc[:N]")
    return cmd


def adapter_serial(outlet: int) -> str:
    """The USB serial number of outlet ``outlet``'s adapter (udev's ID_SERIAL_SHORT)."""
    return f"VIVIAN-OUTLET{outlet:02d}"


def vpdu_command(cfg: RunConfig, state: StateDir, accel: str, mcast: str) -> list[str]:
    """The vPDU on the host: outlets start QEMU DUTs on the DUT switch, serial into the gateway's adapters."""
    python = sys.executable or "python3"
    return [
        python, str(HERE / "vpdu.py"), "--host", "127.0.0.1", "--port", str(cfg.ports.vpdu),
        "--num-ports", str(cfg.outlets), "--dut", "qemu",
        "--api", f"http://127.0.0.1:{cfg.ports.api}",
        "--log-dir", str(state.duts),
        f"--dut-arg=--netdev-mcast={mcast}", f"--dut-arg=--serial-socket={state.path}/outlet-{{outlet}}.sock",
        f"--dut-arg=--accel={accel}",
    ]


def ssh_command(cfg: RunConfig, state: StateDir, user: str = "root", tty: bool = False) -> list[str]:
    key = ssh_key(cfg.cache)
    return ["ssh", "-i", str(key), "-p", str(cfg.ports.ssh), "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={state.known_hosts}", "-o", "StrictHostKeyChecking=accept-new",
            "-o", "ConnectTimeout=10", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
            *(["-t"] if tty else ["-T"]), f"{user}@127.0.0.1"]


def guest(cfg: RunConfig, state: StateDir, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a shell command in the VM as root over ssh (output decoded as UTF-8, bad bytes replaced)."""
    try:
        done = subprocess.run([*ssh_command(cfg, state), command], capture_output=True, timeout=timeout,
                              check=False, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(command, 255, "", f"ssh did not finish within {timeout:g} s")
    return subprocess.CompletedProcess(command, done.returncode, done.stdout.decode(errors="replace"),
                                       done.stderr.decode(errors="replace"))


def read_vt(cfg: RunConfig, state: StateDir, vt: int = 2, timeout: float = 30) -> str | None:
    """The text on virtual terminal ``vt`` (``/dev/vcsu<vt>``: one UTF-32 code point per cell; the size from
    ``/dev/vcsa<vt>``'s header), as lines; None when it cannot be read."""
    try:
        done = subprocess.run([*ssh_command(cfg, state), f"head -c 4 /dev/vcsa{vt} && cat /dev/vcsu{vt}"],
                              capture_output=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return None
    return vt_text(done.stdout) if done.returncode == 0 else None


def tty2_drawn(screen: str | None) -> bool:
    """The console on tty2 shows the farm (it is connected, not "connecting to the backend"): the Overview's
    DUT tiles are titled with their count (``DUTs (0)``) and its first line sums up the services."""
    return bool(screen) and "DUTs (" in screen and "services " in screen  # type: ignore[operator]


def vt_text(data: bytes) -> str | None:
    """``/dev/vcsa`` header (rows, columns, cursor) + ``/dev/vcsu`` cells → the screen's lines."""
    if len(data) < 4:
        return None
    rows, cols = data[0], data[1]
    cells = data[4:]
    if not rows or not cols or len(cells) < rows * cols * 4:
        return None
    text = cells[: rows * cols * 4].decode("utf-32-le", errors="replace")
    return "\n".join(text[i * cols:(i + 1) * cols].rstrip() for i in range(rows))


def _http_json(url: str, token: str | None = None, body: dict[str, object] | None = None,
               method: str | None = None, timeout: float = 5.0) -> tuple[int, object]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method or ("POST" if data else "GET"))
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as exc:
        with contextlib.suppress(ValueError):
            return exc.code, json.loads(exc.read() or b"null")
        return exc.code, None


def monitor(state: StateDir, command: str, timeout: float = 5.0) -> str:
    """One command on the QEMU monitor (``system_powerdown``, ``sendkey ctrl-alt-f2``...); its answer."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(str(state.monitor))
        out = b""
        with contextlib.suppress(TimeoutError):
            while b"(qemu)" not in out:
                out += s.recv(4096) or b"(qemu)"
        s.sendall(command.encode() + b"\n")
        answer = b""
        with contextlib.suppress(TimeoutError, OSError):
            while answer.count(b"(qemu)") < 1:
                chunk = s.recv(4096)
                if not chunk:
                    break
                answer += chunk
        return answer.decode(errors="replace")


def install_dut_image(cfg: RunConfig, state: StateDir) -> None:
    """The Vivian DUT image as the gateway's default boot files, and vivian.env, written into the permanent volume."""
    try:
        image: DutImage = build_dut_image(cfg.dut_image)
    except BuildError as exc:
        raise VmError(f"cannot build the DUT image: {exc}") from None
    env_text = "# Written by vivian/gateway_vm.py run (--env) at every start.\n" + "".join(
        f"{k}={v}\n" for k, v in sorted(cfg.env.items()))
    state.env.write_text(env_text)
    stamp = _sha(image.kernel.read_bytes(), image.initramfs.read_bytes(), env_text)
    if state.files_stamp.is_file() and state.files_stamp.read_text() == stamp:
        return
    write_into_volume(state.permanent, {
        "/vivian.env": state.env,
        "/valve-console/files/kernel": image.kernel,
        "/valve-console/files/initramfs.cpio.xz": image.initramfs,
    }, dirs=("/valve-console", "/valve-console/files"))
    state.files_stamp.write_text(stamp)


class Runner:
    """``run``: the gateway VM and the vPDU, in the foreground, until the VM powers off."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.state = StateDir(cfg.state)
        self.qemu: subprocess.Popen[bytes] | None = None
        self.vpdu: subprocess.Popen[bytes] | None = None
        self.status: dict[str, object] = {}
        self._lock_handle: object = None
        self._stopping = False
        self._stop_t = 0.0
        self.started = 0.0

    def _write_status(self, **values: object) -> None:
        self.status.update(values)
        tmp = self.state.status.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.status, indent=1) + "\n")
        os.replace(tmp, self.state.status)

    def _lock(self) -> None:
        self.state.path.mkdir(parents=True, exist_ok=True)
        handle = open(self.state.lock, "a+")  # noqa: SIM115 - held for the whole run
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            pid = "?"
            with contextlib.suppress(OSError, ValueError):
                pid = str(json.loads(self.state.status.read_text()).get("pid", "?"))
            raise VmError(f"refused: a gateway VM already runs from {self.state.path} (pid {pid}); "
                          f"connect with make vivian-connect, or stop it with make vivian-stop") from None
        self._lock_handle = handle

    def prepare(self) -> tuple[Disk, str, str]:
        cfg = self.cfg
        if not 1 <= cfg.outlets <= MAX_ADAPTERS:
            raise VmError(f"--outlets must be between 1 and {MAX_ADAPTERS} (one USB serial adapter each)")
        qemu = find_qemu(cfg.qemu)
        self._lock()
        for sock in (self.state.serial, self.state.monitor):
            if len(str(sock)) > 100:
                raise VmError(f"the state directory path is too long for unix sockets: {self.state.path}")
        cfg.ports.check_free()
        t0 = time.monotonic()
        disk = build_disk(cfg.image, cfg.cache, cfg.debs, cfg.kernel_meta)
        self.status.update(disk_s=round(time.monotonic() - t0, 1), disk_built=disk.built)
        accel = accelerator(qemu, disk, cfg.cache, cfg.accel)
        make_volume(self.state.permanent, "permanent", "4G")
        make_volume(self.state.tmp, "tmp", "2G")
        install_dut_image(cfg, self.state)
        port = cfg.mcast_port or random.SystemRandom().randrange(20000, 60000)
        return disk, accel, f"{MCAST_GROUP}:{port}"

    def start(self, disk: Disk, accel: str, mcast: str) -> None:
        cfg, state = self.cfg, self.state
        for stale in (state.serial, state.monitor, *(state.outlet_socket(i) for i in range(MAX_ADAPTERS))):
            stale.unlink(missing_ok=True)
        state.serial_log.write_bytes(b"")
        state.duts.mkdir(exist_ok=True)
        command = qemu_command(cfg, disk, state, accel, mcast)
        self.started = time.monotonic()
        with open(state.qemu_log, "wb") as log:
            self.qemu = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True)
        with open(state.vpdu_log, "wb") as log:
            self.vpdu = subprocess.Popen(vpdu_command(cfg, state, accel, mcast), stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log, start_new_session=True, cwd=TOP)
        p = cfg.ports
        self._write_status(state="booting", pid=os.getpid(), qemu_pid=self.qemu.pid, vpdu_pid=self.vpdu.pid,
                           accel=accel, mcast=mcast, disk=str(disk.directory), image=cfg.image,
                           ports={"ssh": p.ssh, "api": p.api, "web": p.web, "vpdu": p.vpdu},
                           outlets=cfg.outlets, ssh_key=str(ssh_key(cfg.cache)), known_hosts=str(state.known_hosts),
                           cache=str(cfg.cache), state_dir=str(state.path), started=time.time())
        with contextlib.suppress(OSError):
            print(self.summary(accel, mcast), flush=True)

    def summary(self, accel: str, mcast: str) -> str:
        p, s = self.cfg.ports, self.state
        return "\n".join([
            f"vivian: the gateway VM is booting ({accel.upper()}, {self.cfg.memory} MiB, {self.cfg.smp} CPUs); "
            "under TCG the API answers after about a minute",
            f"  ssh:          make vivian-connect   (ssh -p {p.ssh} root@127.0.0.1 with {ssh_key(self.cfg.cache)})",
            f"  API:          http://127.0.0.1:{p.api}/api/v1/health   (token: /mnt/permanent/valve-console/token)",
            f"  web console:  http://127.0.0.1:{p.web}/   (log in with the token)",
            "  tty2:         make vivian-tty2 (its text), or make vivian VIVIAN_DISPLAY=vnc (or gtk) and ctrl+alt+F2",
            f"  vPDU:         127.0.0.1:{p.vpdu} ({self.cfg.outlets} outlets; python vivian/client.py --port {p.vpdu} "
            "--outlet 3 --on); the gateway reaches it at 10.0.2.2",
            f"  DUT switch:   multicast {mcast} on 127.0.0.1; DUT serial ports on USB adapters "
            f"{adapter_serial(0)}..{adapter_serial(self.cfg.outlets - 1)}",
            f"  serial log:   {s.serial_log}   (console: socat -,raw,echo=0 UNIX-CONNECT:{s.serial})",
            f"  QEMU monitor: socat - UNIX-CONNECT:{s.monitor}",
            f"  volumes:      {s.permanent} and {s.tmp} (kept; make clean removes them)",
            "  stop:         make vivian-stop, `systemctl poweroff` in the VM, or Ctrl-C here",
        ])

    def wait_ready(self, patience: float = 900) -> None:
        """Follow the boot: the API answers (through the forward), tty2 is drawn, vpdu1 is registered and
        systemd has finished starting; each time goes to status.json (``ready`` at the end)."""
        cfg, state = self.cfg, self.state
        api = f"http://127.0.0.1:{cfg.ports.api}"
        deadline = time.monotonic() + patience

        def alive() -> bool:
            return self.qemu is not None and self.qemu.poll() is None and time.monotonic() < deadline

        while not self._api_up(api):
            if not alive():
                return
            time.sleep(0.5)
        api_s = round(time.monotonic() - self.started, 1)
        self._write_status(state="api-ready", api_ready_s=api_s)
        _say(f"API ready {api_s:.0f} s after QEMU started: {api}")
        while not tty2_drawn(read_vt(cfg, state, 2)):
            if not alive():
                return
            time.sleep(1)
        tty2_s = round(time.monotonic() - self.started, 1)
        self._write_status(state="tty2-drawn", tty2_drawn_s=tty2_s)
        _say(f"tty2 drawn {tty2_s:.0f} s after QEMU started")
        token = ""
        while not token and alive():
            done = guest(cfg, state, "cat /mnt/permanent/valve-console/token", timeout=30)
            token = done.stdout.strip() if done.returncode == 0 else ""
            if not token:
                time.sleep(1)
        if token:
            self._register_vpdu(api, token)
        while alive():
            done = guest(cfg, state, "systemctl is-system-running --wait", timeout=300)
            system = done.stdout.strip()
            if system in ("running", "degraded"):
                booted_s = round(time.monotonic() - self.started, 1)
                self._write_status(state="ready", system=system, boot_finished_s=booted_s)
                failed = "" if system == "running" else ": " + guest(
                    cfg, state, "systemctl --failed --plain --no-legend").stdout.strip().replace("\n", "; ")
                _say(f"systemd finished starting {booted_s:.0f} s after QEMU started ({system}{failed}): "
                     "the gateway is ready")
                return
            time.sleep(1)

    @staticmethod
    def _api_up(api: str) -> bool:
        with contextlib.suppress(OSError, ValueError):
            status, _ = _http_json(f"{api}/api/v1/health", timeout=3)
            return status == 200
        return False

    def _register_vpdu(self, api: str, token: str, attempts: int = 5) -> None:
        """vpdu1 at 10.0.2.2:<vPDU port> (how the gateway reaches the host), as the seed's Vivian has it."""
        wanted = f"{HOST_FROM_GUEST}:{self.cfg.ports.vpdu}"
        problem = ""
        for _ in range(attempts):
            try:
                status, pdu = _http_json(f"{api}/api/v1/pdu/vpdu1", token, timeout=60)
                if status == 200 and isinstance(pdu, dict) and (pdu.get("config") or {}).get("hostname") == wanted:
                    return
                if status == 200:
                    _http_json(f"{api}/api/v1/pdu/vpdu1", token, method="DELETE", timeout=60)
                status, answer = _http_json(f"{api}/api/v1/pdu/", token, {
                    "name": "vpdu1", "driver": "vpdu", "config": {"hostname": wanted}}, timeout=60)
                if status == 201:
                    return
                problem = f"HTTP {status} {answer}"
            except OSError as exc:  # refused, reset, timed out: the VM is busy booting
                problem = str(exc)
            time.sleep(2)
        _say(f"warning: could not register vpdu1 at {wanted}: {problem}")

    def stop(self, *_args: object) -> None:
        """Ctrl-C / SIGTERM: an ACPI power-off (systemd shuts down cleanly), then QEMU exits."""
        if self._stopping or self.qemu is None or self.qemu.poll() is not None:
            return
        self._stopping = True
        self._stop_t = time.monotonic()
        _say("powering the gateway VM off (ACPI)...")
        with contextlib.suppress(OSError):
            monitor(self.state, "system_powerdown")

    def wait(self, grace: float = 120) -> int:
        """Wait for QEMU to exit (killed ``grace`` s after a power-off that does not end); its exit code."""
        assert self.qemu is not None
        while True:
            try:
                rc = self.qemu.wait(1)
                break
            except subprocess.TimeoutExpired:
                if self._stopping and time.monotonic() - self._stop_t > grace:
                    _say(f"the VM did not power off within {grace:g} s: killing QEMU")
                    self.qemu.kill()
        self._write_status(state="stopped", exit_code=rc, stopped=time.time(),
                           uptime_s=round(time.monotonic() - self.started, 1))
        return rc

    def cleanup(self) -> None:
        """On the way out (an error here, or QEMU already gone): power the VM off cleanly if it still runs,
        then end QEMU and the vPDU."""
        if self.qemu is not None and self.qemu.poll() is None:
            self.stop()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.qemu.wait(90)
        for proc in (self.vpdu, self.qemu):
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def run(cfg: RunConfig) -> int:
    runner = Runner(cfg)
    disk, accel, mcast = runner.prepare()
    signal.signal(signal.SIGINT, runner.stop)
    signal.signal(signal.SIGTERM, runner.stop)
    try:
        runner.start(disk, accel, mcast)
        try:
            runner.wait_ready()
        except Exception as exc:  # noqa: BLE001 - the VM runs on; only the readiness report failed
            _say(f"warning: could not follow the boot to the end: {type(exc).__name__}: {exc}")
        rc = runner.wait()
        if rc != 0:
            tail = cfg.state / "qemu.log"
            lines = tail.read_text(errors="replace").strip().splitlines() if tail.is_file() else []
            _say(f"QEMU exited with code {rc}{': ' + lines[-1] if lines else ''}")
        else:
            _say("the gateway VM powered off")
        return rc
    finally:
        runner.cleanup()


# ------------------------------------------------------------------------------------------ CLI


def _config(args: argparse.Namespace) -> RunConfig:
    cache = Path(args.cache).resolve()
    state = Path(args.state).resolve() if args.state else cache / "state"
    env: dict[str, str] = {}
    for item in getattr(args, "env", None) or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise VmError(f"--env {item!r} is not NAME=VALUE")
        env[key.strip()] = value
    ports = Ports(*(getattr(args, n, d) for n, d in (("ssh_port", 2222), ("api_port", 8001), ("web_port", 8081),
                                                      ("vpdu_port", 9191))))
    return RunConfig(image=args.image, cache=cache, state=state, debs=Path(args.debs).resolve(), ports=ports,
                     outlets=getattr(args, "outlets", 4), memory=getattr(args, "memory", 1536),
                     smp=getattr(args, "smp", 2), display=getattr(args, "display", "none"),
                     accel=getattr(args, "accel", "auto"), qemu=getattr(args, "qemu", QEMU),
                     kernel_meta=getattr(args, "kernel_package", KERNEL_META), env=env,
                     mcast_port=getattr(args, "mcast_port", 0) or 0)


def _ports_from_status(cfg: RunConfig) -> dict[str, object]:
    status = StateDir(cfg.state).running()
    if status is None:
        raise VmError(f"no gateway VM runs from {cfg.state} (start one with make vivian)")
    ports = status.get("ports") if isinstance(status, dict) else None
    if isinstance(ports, dict):
        cfg.ports = Ports(int(ports["ssh"]), int(ports["api"]), int(ports["web"]), int(ports["vpdu"]))
    return status


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gateway_vm.py", description="Vivian: the gateway image booted in a QEMU VM.")
    p.add_argument("--cache", default=str(DEFAULT_CACHE), help=f"disks, ssh key (default {DEFAULT_CACHE})")
    p.add_argument("--state", help="volumes, sockets, logs of one VM (default <cache>/state)")
    p.add_argument("--debs", default=str(DEFAULT_DEBS), help=f"downloaded .debs (default {DEFAULT_DEBS})")
    p.add_argument("--image", default=DEFAULT_IMAGE, help=f"the gateway image (default {DEFAULT_IMAGE})")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="boot the gateway VM and the vPDU, in the foreground")
    r.add_argument("--ssh-port", type=int, default=2222)
    r.add_argument("--api-port", type=int, default=8001)
    r.add_argument("--web-port", type=int, default=8081)
    r.add_argument("--vpdu-port", type=int, default=9191)
    r.add_argument("--mcast-port", type=int, default=0, help="UDP port of the DUT switch (default: random)")
    r.add_argument("--outlets", type=int, default=4,
                   help=f"vPDU outlets, one USB serial adapter each (1..{MAX_ADAPTERS})")
    r.add_argument("--memory", type=int, default=1536, help="MiB (default 1536)")
    r.add_argument("--smp", type=int, default=2)
    r.add_argument("--display", default="none", help="none (headless, default), gtk, or vnc[:N] (127.0.0.1:590N)")
    r.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto")
    r.add_argument("--qemu", default=QEMU)
    r.add_argument("--kernel-package", default=KERNEL_META, help=f"kernel metapackage (default {KERNEL_META})")
    r.add_argument("--env", action="append", metavar="NAME=VALUE", help="a setting for the gateway (vivian.env)")
    f = sub.add_parser("preflight", help="what run checks before it builds anything: QEMU, a VM already "
                                         "running, the ports (make vivian runs it before building the image)")
    for name, default in (("--ssh-port", 2222), ("--api-port", 8001), ("--web-port", 8081), ("--vpdu-port", 9191)):
        f.add_argument(name, type=int, default=default)
    f.add_argument("--qemu", default=QEMU)
    d = sub.add_parser("disk", help="build (or reuse) the VM disk and print where it is")
    d.add_argument("--kernel-package", default=KERNEL_META)
    c = sub.add_parser("connect", help="ssh into the running VM as root")
    c.add_argument("--user", default="root")
    c.add_argument("cmd", nargs=argparse.REMAINDER, help="a command to run instead of a shell")
    s = sub.add_parser("screen", help="print what a virtual terminal of the running VM shows (default tty2)")
    s.add_argument("--vt", type=int, default=2)
    sub.add_parser("stop", help="power the running VM off (ACPI) and wait until QEMU exits")
    sub.add_parser("status", help="print the running VM's status.json")
    sub.add_parser("probe-kvm", help="does a KVM guest boot here? (else TCG)")
    sub.add_parser("clean", help="remove the disks and volumes (refused while a VM runs)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = _config(args)
        if args.command == "run":
            return run(cfg)
        if args.command == "preflight":
            preflight(cfg)
            return 0
        if args.command == "disk":
            disk = build_disk(cfg.image, cfg.cache, cfg.debs, args.kernel_package)
            print(json.dumps({"directory": str(disk.directory), **disk.info}, indent=1))
            return 0
        if args.command == "connect":
            _ports_from_status(cfg)
            cmd = [c for c in args.cmd if c != "--"]
            ssh = ssh_command(cfg, StateDir(cfg.state), args.user, tty=not cmd and sys.stdin.isatty())
            return subprocess.call([*ssh, *([" ".join(cmd)] if cmd else [])])  # as ssh joins its words
        if args.command == "screen":
            _ports_from_status(cfg)
            text = read_vt(cfg, StateDir(cfg.state), args.vt)
            if text is None:
                raise VmError(f"cannot read tty{args.vt} of the VM (/dev/vcsu{args.vt} over ssh)")
            print(text)
            return 0
        if args.command == "stop":
            state = StateDir(cfg.state)
            _ports_from_status(cfg)
            monitor(state, "system_powerdown")
            deadline = time.monotonic() + 180
            while state.running() is not None:
                if time.monotonic() > deadline:
                    raise VmError("the VM did not power off within 180 s")
                time.sleep(0.5)
            print("vivian: the gateway VM is off")
            return 0
        if args.command == "status":
            status = StateDir(cfg.state).running()
            if status is None:
                print(f"vivian: no gateway VM runs from {cfg.state}", file=sys.stderr)
                return 1
            print(json.dumps(status, indent=1))
            return 0
        if args.command == "probe-kvm":
            disk = build_disk(cfg.image, cfg.cache, cfg.debs)
            works, why = kvm_probe(find_qemu(), disk)
            print(f"{'KVM works' if works else 'KVM does not work'}: {why}")
            return 0 if works else 1
        if args.command == "clean":
            state = StateDir(cfg.state)
            if state.running() is not None:
                raise VmError(f"refused: a gateway VM runs from {cfg.state}; stop it first (make vivian-stop)")
            state.remove()
            shutil.rmtree(cfg.cache, ignore_errors=True)
            where = f"{cfg.cache}, {cfg.state}" if args.state else str(cfg.cache)
            print(f"vivian: removed the VM disks and volumes ({where})")
            return 0
    except VmError as exc:
        print(f"vivian: {exc}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
