"""Build the kernel and busybox registration initramfs that Vivian's QEMU DUTs network-boot.

Everything comes from Debian packages, fetched with ``apt-get download`` and unpacked with
``dpkg-deb -x`` (no root needed):

- the kernel: ``vmlinuz`` of ``linux-image-cloud-amd64`` (the package it depends on), plus the
  virtio-net modules it builds as modules (``virtio_net`` and what it needs, in load order);
- the initramfs: a ``cpio`` (newc) archive, xz-compressed with CRC32 checks as the kernel wants,
  holding ``busybox`` from ``busybox-static`` (the installed one if the package is installed),
  ``vivian/initramfs/init`` (with ``udhcpc.script`` and ``http.sh``, the registration's HTTP client),
  the modules and ``/dev/console``.

The results are cached in ``<repo>/.cache/vivian/`` (or ``$VIVIAN_CACHE``): ``vmlinuz`` and
``initramfs.cpio.xz``, rebuilt when ``vivian/initramfs/`` or this file change (and, with ``--refresh``,
when Debian has newer packages).

Run it: ``python vivian/build_dut_image.py [--cache DIR] [--install DATA_DIR]``; ``--install`` copies
them to ``DATA_DIR/files/kernel`` and ``DATA_DIR/files/initramfs.cpio.xz``, the default boot files a
gateway serves at ``/files/`` (``boot_kernel_url``/``boot_initrd_url`` unset).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import lzma
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
INITRAMFS_DIR = HERE / "initramfs"
DEFAULT_CACHE = HERE.parent / ".cache" / "vivian"
KERNEL_META = "linux-image-cloud-amd64"
BUSYBOX_PACKAGE = "busybox-static"
MODULES = ("virtio_net", "virtio_pci")  # with their dependencies, resolved from each module's modinfo
FORMAT = 1  # bump when the image layout changes


class BuildError(Exception):
    """The image could not be built; the message says why, in words."""


@dataclass(frozen=True)
class DutImage:
    kernel: Path
    initramfs: Path

    def install(self, data_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
        """Copy to ``<data_dir>/files/kernel`` and ``.../initramfs.cpio.xz`` (a gateway's default boot)."""
        files = Path(data_dir) / "files"
        files.mkdir(parents=True, exist_ok=True)
        kernel, initrd = files / "kernel", files / "initramfs.cpio.xz"
        shutil.copyfile(self.kernel, kernel)
        shutil.copyfile(self.initramfs, initrd)
        return kernel, initrd


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300, check=False)
    except FileNotFoundError:
        raise BuildError(f"{cmd[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise BuildError(f"{' '.join(cmd)} did not finish within 300 s") from None
    if done.returncode != 0:
        reason = (done.stderr or done.stdout).strip().splitlines()
        raise BuildError(f"{' '.join(cmd)} failed: {reason[-1] if reason else f'exit code {done.returncode}'}")
    return done.stdout


def kernel_package() -> str:
    """The versioned kernel package the ``linux-image-cloud-amd64`` metapackage depends on."""
    for line in _run(["apt-cache", "depends", KERNEL_META]).splitlines():
        word = line.strip()
        if word.startswith("Depends:") and "linux-image-" in word:
            return word.split(":", 1)[1].strip()
    raise BuildError(f"apt-cache does not know which kernel {KERNEL_META} depends on (apt-get update?)")


def package_version(name: str) -> str:
    out = _run(["apt-cache", "policy", name])
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Candidate:"):
            version = line.split(":", 1)[1].strip()
            if version and version != "(none)":
                return version
    raise BuildError(f"the Debian package {name} is not available (apt-get update?)")


def download(package: str, into: Path) -> Path:
    """``apt-get download`` one package into ``into`` and unpack it there; the unpacked tree."""
    into.mkdir(parents=True, exist_ok=True)
    os.chmod(into, 0o777)  # apt's _apt user writes the .deb here when it can
    _run(["apt-get", "download", "-q", package], cwd=into)
    debs = sorted(into.glob(f"{package}_*.deb"))
    if not debs:
        raise BuildError(f"apt-get download {package} produced no .deb")
    tree = into / f"{package}.tree"
    _run(["dpkg-deb", "-x", str(debs[-1]), str(tree)])
    return tree


def _modinfo_depends(path: Path) -> list[str]:
    data = path.read_bytes()
    at = data.find(b"\0depends=")
    if at < 0:
        return []
    value = data[at + 9 : data.index(b"\0", at + 1)].decode()
    return [d for d in value.split(",") if d]


def module_order(tree: Path, wanted: tuple[str, ...] = MODULES) -> list[Path]:
    """The ``.ko`` files of ``wanted`` and their dependencies, dependencies first."""
    found = {p.name[: -len(".ko")]: p for p in tree.glob("lib/modules/*/kernel/**/*.ko")}
    order: list[Path] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        key = name.replace("-", "_")
        if key in seen:
            return
        seen.add(key)
        path = found.get(key) or found.get(name)
        if path is None:
            raise BuildError(f"the kernel package has no module {name}.ko (built in? then drop it from MODULES)")
        for dep in _modinfo_depends(path):
            visit(dep)
        order.append(path)

    for name in wanted:
        visit(name)
    return order


class Cpio:
    """A cpio archive in the ``newc`` format (what the kernel unpacks as an initramfs)."""

    def __init__(self) -> None:
        self.out = io.BytesIO()
        self.ino = 1

    def add(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        name_b = name.encode() + b"\0"
        header = "070701" + "".join(
            f"{v:08x}"
            for v in (self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name_b), 0)
        )
        self.ino += 1
        self.out.write(header.encode() + name_b)
        self._pad()
        self.out.write(data)
        self._pad()

    def _pad(self) -> None:
        self.out.write(b"\0" * (-self.out.tell() % 4))

    def dir(self, name: str) -> None:
        self.add(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self.add(name, stat.S_IFREG | mode, data)

    def finish(self) -> bytes:
        self.add("TRAILER!!!", 0)
        return self.out.getvalue()


def initramfs(busybox: bytes, modules: list[Path]) -> bytes:
    """The xz-compressed initramfs (CRC32 checks: the kernel's xz decoder does not do CRC64)."""
    cpio = Cpio()
    for d in ("bin", "dev", "etc", "lib", "lib/modules", "proc", "run", "sbin", "sys", "tmp", "usr", "usr/bin",
              "usr/sbin", "usr/share", "usr/share/udhcpc"):
        cpio.dir(d)
    cpio.add("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))
    cpio.add("dev/null", stat.S_IFCHR | 0o666, rdev=(1, 3))
    cpio.file("bin/busybox", busybox, 0o755)
    cpio.file("init", (INITRAMFS_DIR / "init").read_bytes(), 0o755)
    cpio.file("usr/share/udhcpc/default.script", (INITRAMFS_DIR / "udhcpc.script").read_bytes(), 0o755)
    cpio.file("bin/vivian-http", (INITRAMFS_DIR / "http.sh").read_bytes(), 0o755)
    for path in modules:
        cpio.file(f"lib/modules/{path.name}", path.read_bytes())
    order = "".join(p.name[: -len(".ko")] + "\n" for p in modules)
    cpio.file("lib/modules/load-order", order.encode())
    return lzma.compress(cpio.finish(), format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)


def _installed_busybox() -> Path | None:
    try:
        done = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", BUSYBOX_PACKAGE], capture_output=True, text=True, check=False
        )
    except FileNotFoundError:
        return None
    path = Path("/bin/busybox")
    return path if done.stdout.strip().endswith("installed") and path.is_file() else None


def _sources() -> str:
    h = hashlib.sha256()
    for path in (*sorted(INITRAMFS_DIR.iterdir()), Path(__file__)):
        h.update(path.read_bytes())
    return h.hexdigest()


def _packages(kernel_pkg: str) -> dict[str, str]:
    return {
        "kernel": kernel_pkg,
        "kernel_version": package_version(kernel_pkg),
        "busybox": package_version(BUSYBOX_PACKAGE),
    }


def build(cache: str | os.PathLike[str] | None = None, log: bool = False, refresh: bool = False) -> DutImage:
    """The cached image, built first if missing or stale; :class:`BuildError` when it cannot be.

    The cache is stale when ``vivian/initramfs/`` or this file changed; with ``refresh`` also when
    Debian has newer kernel or busybox packages (that check asks apt, which takes a few seconds).
    """
    root = Path(cache or os.environ.get("VIVIAN_CACHE") or DEFAULT_CACHE)
    image = DutImage(root / "vmlinuz", root / "initramfs.cpio.xz")
    stamp_file = root / "image.json"
    sources = _sources()
    old: dict[str, object] = {}
    if image.kernel.is_file() and image.initramfs.is_file() and stamp_file.is_file():
        try:
            old = json.loads(stamp_file.read_text())
        except ValueError:
            old = {}
        if old.get("format") == FORMAT and old.get("sources") == sources and not refresh:
            return image
    kernel_pkg = kernel_package()
    stamp = json.dumps({"format": FORMAT, "sources": sources, **_packages(kernel_pkg)}, sort_keys=True)
    if old and json.dumps(old, sort_keys=True) == stamp:
        return image
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vivian-image-", dir=root) as tmp:
        work = Path(tmp)
        if log:
            print(f"downloading {kernel_pkg}", file=sys.stderr)
        tree = download(kernel_pkg, work / "kernel")
        kernels = sorted(tree.glob("boot/vmlinuz-*"))
        if not kernels:
            raise BuildError(f"{kernel_pkg} has no /boot/vmlinuz-*")
        modules = module_order(tree)
        bb = _installed_busybox()
        if bb is None:
            if log:
                print(f"downloading {BUSYBOX_PACKAGE}", file=sys.stderr)
            bb = download(BUSYBOX_PACKAGE, work / "busybox") / "bin" / "busybox"
            if not bb.is_file():
                raise BuildError(f"{BUSYBOX_PACKAGE} has no /bin/busybox")
        data = initramfs(bb.read_bytes(), modules)
        shutil.copyfile(kernels[-1], work / "vmlinuz")
        (work / "initramfs.cpio.xz").write_bytes(data)
        os.replace(work / "vmlinuz", image.kernel)
        os.replace(work / "initramfs.cpio.xz", image.initramfs)
    stamp_file.write_text(stamp)
    return image


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Build the kernel + busybox initramfs of Vivian's QEMU DUTs.")
    p.add_argument("--cache", help=f"build/cache directory (default $VIVIAN_CACHE or {DEFAULT_CACHE})")
    p.add_argument("--refresh", action="store_true", help="rebuild if Debian has newer kernel/busybox packages")
    p.add_argument("--install", metavar="DATA_DIR", help="copy them to DATA_DIR/files/ as the gateway's default boot")
    args = p.parse_args(argv)
    try:
        image = build(args.cache, log=True, refresh=args.refresh)
    except BuildError as exc:
        print(f"build_dut_image: {exc}", file=sys.stderr)
        return 1
    print(f"kernel:    {image.kernel} ({image.kernel.stat().st_size} bytes)")
    print(f"initramfs: {image.initramfs} ({image.initramfs.stat().st_size} bytes)")
    if args.install:
        kernel, initrd = image.install(args.install)
        print(f"installed: {kernel} and {initrd}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
