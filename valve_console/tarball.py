"""Job-share tarballs, safely: pack a directory into a tar.gz, unpack one with every member checked.

Shared by the backend's job share (backend/share.py) and the job client (client.py), so neither
imports the other. Stdlib only; every function does file I/O (callers use ``asyncio.to_thread``).
Errors are :class:`ShareError` with a message in words and an HTTP status.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Iterator

MAX_MEMBERS = 10_000  # files and directories in one share


class ShareError(ValueError):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def _check_name(name: str) -> str:
    """A member or request path as a relative POSIX path, or ShareError (absolute, ``..``, empty...)."""
    if "\x00" in name or "\\" in name:
        raise ShareError(f"{name[:80]!r}: NUL and backslash are not allowed in share paths")
    if name.startswith("/"):
        raise ShareError(f"{name[:80]!r}: absolute paths are not allowed in a share")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise ShareError(f"{name[:80]!r}: '..' is not allowed in share paths")
    return "/".join(parts)


def _members(tar: tarfile.TarFile, max_bytes: int, max_members: int) -> Iterator[tarfile.TarInfo]:
    total = count = 0
    for member in tar:
        count += 1
        if count > max_members:
            raise ShareError(f"the share has more than {max_members} files and directories", 413)
        name = _check_name(member.name)
        if not name:
            continue  # the root directory itself
        if member.islnk():
            raise ShareError(f"{member.name[:80]!r}: hard links are not supported in a share")
        if not (member.isfile() or member.isdir() or member.issym()):
            raise ShareError(f"{member.name[:80]!r}: only files, directories and symlinks may be in a share")
        if member.issym():
            target = member.linkname
            if target.startswith("/"):
                raise ShareError(f"{member.name[:80]!r}: a symlink to an absolute path ({target[:80]}) is refused")
            depth = len(name.split("/")) - 1
            level = depth
            for part in target.split("/"):
                if part == "..":
                    level -= 1
                elif part not in ("", "."):
                    level += 1
                if level < 0:
                    raise ShareError(f"{member.name[:80]!r}: the symlink points outside the share ({target[:80]})")
        total += max(member.size, 0) if member.isfile() else 0
        if total > max_bytes:
            raise ShareError(f"the share is larger than {max_bytes} bytes once unpacked", 413)
        member.name = name
        yield member


def safe_extract(
    source: bytes | Path, dest: Path, max_bytes: int, max_members: int = MAX_MEMBERS
) -> list[str]:
    """Unpack a tar or tar.gz (bytes or a file) into ``dest`` (created) and return the member names.

    Refused, with nothing written to ``dest``: absolute paths, ``..``, symlinks out of the share,
    hard links, devices and fifos, more than ``max_bytes`` unpacked or ``max_members`` entries. It
    unpacks into a temporary directory next to ``dest`` first, then merges (existing files are
    overwritten, others kept).

    Symlinks are checked against the unpacked tree, not one by one: ``b -> z/..`` then ``z -> .`` is
    harmless for each alone and leads out of the share together. Merged into a ``dest`` that already
    has links, the links of ``dest`` are checked again (one leading out is removed, with an error).
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=dest.parent))
    names: list[str] = []
    try:
        try:
            fileobj = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else open(source, "rb")
            with fileobj, tarfile.open(fileobj=fileobj, mode="r:*") as tar:
                for member in _members(tar, max_bytes, max_members):
                    # the stdlib "data" filter checks again (links resolved on disk, permissions made sane)
                    tar.extract(member, staging, filter="data")
                    names.append(member.name)
        except tarfile.FilterError as exc:
            raise ShareError(f"unsafe share member refused: {exc}") from None
        except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
            if isinstance(exc, ShareError):
                raise
            raise ShareError(f"the share is not a readable tar or tar.gz archive: {exc}") from None
        _check_links(staging)
        _merge(staging, dest)
        _check_links(dest, remove=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return names


def _check_links(root: Path, remove: bool = False) -> None:
    """ShareError if a symlink under ``root`` resolves outside it on disk (through the other links of
    the tree); with ``remove`` the offending links are deleted first."""
    real_top = os.path.realpath(root)
    links = [os.path.join(d, n) for d, dirs, files in os.walk(root) for n in (*dirs, *files)
             if os.path.islink(os.path.join(d, n))]
    escaping = []
    for link in links:
        real = os.path.realpath(link)
        if real != real_top and not real.startswith(real_top + os.sep):
            escaping.append(link)
    if not escaping:
        return
    if remove:
        for link in escaping:
            with contextlib.suppress(OSError):
                os.unlink(link)
    name = os.path.relpath(escaping[0], root)
    raise ShareError(f"{name[:80]!r}: the symlink points outside the share ({os.readlink(escaping[0])[:80]})"
                     if not remove else f"{name[:80]!r}: the symlink points outside the share (removed)")


def _merge(src: Path, dest: Path) -> None:
    """Move the unpacked tree ``src`` into ``dest``, replacing files (never following links in ``dest``)."""
    for entry in sorted(src.iterdir()):
        target = dest / entry.name
        if entry.is_dir() and not entry.is_symlink():
            if target.is_symlink() or (target.exists() and not target.is_dir()):
                target.unlink()
            target.mkdir(exist_ok=True)
            _merge(entry, target)
        else:
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(entry, target)


def pack_dir(src: Path) -> bytes:
    """A tar.gz of the contents of ``src`` (relative names; symlinks kept as symlinks)."""
    src = Path(src)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=6) as tar:
        if src.is_dir():
            for path in sorted(src.rglob("*")):
                tar.add(path, arcname=path.relative_to(src).as_posix(), recursive=False)
    return buffer.getvalue()
