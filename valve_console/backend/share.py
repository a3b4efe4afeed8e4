"""The job share: valve-infra's per-job bucket (§4.6) without MinIO.

Each job has a directory ``<data_dir>/jobs/<job id>/`` holding ``share/`` (the files) and ``key`` (the
per-job secret of the DUT). The job client may send a tar(.gz) of its share directory with the job
(valve-infra's ``job_bucket_initial_state_tarball_file``); the DUT reads and writes files over HTTP
while the job runs (``/api/v1/job/<id>/share/<key>/<path>``); when the job is over (not cancelled)
the client downloads the share as a tar.gz and unpacks it into its directory.

Stdlib only (the job client uses :func:`pack_dir` and :func:`safe_extract` too). Every method does
file I/O: the backend calls them through ``asyncio.to_thread``. Errors are :class:`ShareError` with a
message in words and an HTTP status.
"""

from __future__ import annotations

import contextlib
import hmac
import io
import os
import secrets
import shutil
import stat
import tarfile
import tempfile
import uuid
from pathlib import Path
from typing import Iterable, Iterator, Optional

MAX_MEMBERS = 10_000  # files and directories in one share
KEY_FILE = "key"
SHARE_DIR = "share"


class ShareError(ValueError):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


# ------------------------------------------------------------------------------------------ tarballs


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


# ------------------------------------------------------------------------------------------ the store


def bucket_name(mac: str, job_id: str) -> str:
    """valve-infra's bucket name ``job-<mac>-<job id>``, sanitised like an S3 bucket name."""
    name = "".join(c if c in "abcdefghijklmnopqrstuvwxyz0123456789.-" else "-" for c in f"job-{mac}-{job_id}".lower())
    return name[:63].rstrip(".-") or "job"


class ShareStore:
    """The job shares under ``root`` (``<data_dir>/jobs``): one directory per job id."""

    def __init__(self, root: Path, max_bytes: int, max_total_bytes: int) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.max_total_bytes = max_total_bytes
        self._keys: dict[str, str] = {}
        self._usage: dict[str, int] = {}

    # ---------------------------------------------------------------- paths and keys
    def job_dir(self, job_id: str) -> Path:
        if not job_id or job_id.startswith(".") or "/" in job_id or "\x00" in job_id:
            raise ShareError(f"{job_id[:80]!r} is not a job id")
        return self.root / job_id

    def share_dir(self, job_id: str) -> Path:
        return self.job_dir(job_id) / SHARE_DIR

    def exists(self, job_id: str) -> bool:
        return self.share_dir(job_id).is_dir()

    @staticmethod
    def new_key() -> str:
        return secrets.token_urlsafe(24)

    def known_key(self, job_id: str) -> Optional[str]:
        """The key of a job whose share this process made (no disk access: safe on the event loop)."""
        return self._keys.get(job_id)

    def key(self, job_id: str) -> Optional[str]:
        key = self._keys.get(job_id)
        if key is None:
            try:
                key = (self.job_dir(job_id) / KEY_FILE).read_text().strip()
            except OSError:
                return None
            self._keys[job_id] = key
        return key

    def check_key(self, job_id: str, key: str) -> bool:
        expected = self.key(job_id)
        return expected is not None and hmac.compare_digest(expected.encode(), key.encode())

    # ---------------------------------------------------------------- size accounting
    def usage(self, job_id: str) -> int:
        if job_id not in self._usage:
            total = 0
            for dirpath, _, files in os.walk(self.share_dir(job_id)):
                for name in files:
                    try:
                        total += os.lstat(os.path.join(dirpath, name)).st_size
                    except OSError:
                        pass
            self._usage[job_id] = total
        return self._usage[job_id]

    def total(self) -> int:
        return sum(self.usage(job_id) for job_id in self.job_ids())

    def job_ids(self) -> list[str]:
        try:
            return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        except FileNotFoundError:
            return []

    def _make_room(self, job_id: Optional[str], extra: int, evictable: Iterable[str]) -> None:
        """Room for ``extra`` more bytes in ``job_id``'s share (None: a staged one): per-job limit, then
        the total limit, removing the shares of ``evictable`` (finished jobs, oldest first) while too full."""
        used = self.usage(job_id) if job_id is not None else 0
        if used + extra > self.max_bytes:
            raise ShareError(
                f"the job's share would hold more than its limit of {self.max_bytes} bytes ({used} used)", 413
            )
        total = self.total()
        candidates = [j for j in evictable if j != job_id]
        while total + extra > self.max_total_bytes and candidates:
            victim = candidates.pop(0)
            total -= self.usage(victim) if self.exists(victim) else 0
            self.remove(victim)
        if total + extra > self.max_total_bytes:
            raise ShareError(
                f"the job shares of this gateway are full ({total} of {self.max_total_bytes} bytes in use)", 507
            )

    # ---------------------------------------------------------------- job lifecycle
    def stage(self, key: str, tarball: bytes | Path | None, evictable: Iterable[str] = ()) -> Path:
        """A new share (``tarball`` unpacked, or empty) in a staging directory; :meth:`adopt` names it.
        ``tarball`` is the archive's bytes or a file holding it (an upload streamed to disk)."""
        self.root.mkdir(parents=True, exist_ok=True)
        staging = self.root / f".incoming-{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            (staging / SHARE_DIR).mkdir()
            if tarball:
                safe_extract(tarball, staging / SHARE_DIR, self.max_bytes)
                size = sum(p.lstat().st_size for p in (staging / SHARE_DIR).rglob("*") if p.is_file())
                self._make_room(None, size, evictable)
            fd = os.open(staging / KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(key + "\n")
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return staging

    def adopt(self, staging: Path, job_id: str, key: str) -> None:
        """Give a staged share its job id (a rename: cheap enough for the event loop)."""
        final = self.job_dir(job_id)
        if final.exists():  # a leftover of an earlier gateway life with the same id
            shutil.rmtree(final, ignore_errors=True)
        os.rename(staging, final)
        self._keys[job_id] = key
        self._usage.pop(job_id, None)

    def discard(self, staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)

    def remove(self, job_id: str) -> None:
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)
        self._keys.pop(job_id, None)
        self._usage.pop(job_id, None)

    def remove_many(self, job_ids: Iterable[str]) -> None:
        for job_id in job_ids:
            self.remove(job_id)

    def prune(self, keep: Iterable[str]) -> list[str]:
        """Remove the shares of jobs no longer in the history (and staging leftovers)."""
        kept = set(keep)
        removed = []
        if not self.root.is_dir():
            return removed
        for path in self.root.iterdir():
            if path.name.startswith(".incoming-") or path.name.startswith(".unpack-"):
                shutil.rmtree(path, ignore_errors=True)
            elif path.is_dir() and path.name not in kept:
                self.remove(path.name)
                removed.append(path.name)
        return removed

    # ---------------------------------------------------------------- files (the DUT's side)
    def _resolve(self, job_id: str, path: str) -> tuple[Path, Path]:
        """(share root, file path) with every component checked: no '..', no link out of the share."""
        rel = _check_name(path)
        if not rel:
            raise ShareError("a file path is needed after the key, e.g. .../results.txt")
        root = self.share_dir(job_id)
        if not root.is_dir():
            raise ShareError(f"job {job_id} has no share (removed with old job history)", 404)
        real_root = root.resolve()
        target = root / rel
        real_parent = target.parent.resolve()
        if real_parent != real_root and real_root not in real_parent.parents:
            raise ShareError(f"{path[:80]!r} leads out of the share", 403)
        return real_root, real_parent / target.name

    def read_path(self, job_id: str, path: str) -> Path:
        real_root, target = self._resolve(job_id, path)
        if target.is_symlink():
            real = target.resolve()
            if real_root not in real.parents:
                raise ShareError(f"{path[:80]!r} leads out of the share", 403)
            target = real
        try:
            mode = target.stat().st_mode
        except OSError:
            raise ShareError(f"no file {path[:200]!r} in the share of job {job_id}", 404) from None
        if not stat.S_ISREG(mode):
            raise ShareError(f"{path[:200]!r} is not a file", 404)
        return target

    def listing(self, job_id: str) -> list[dict[str, object]]:
        root = self.share_dir(job_id)
        if not root.is_dir():
            raise ShareError(f"job {job_id} has no share (removed with old job history)", 404)
        out = []
        for p in sorted(root.rglob("*")):
            if p.is_file() and not p.is_symlink():
                out.append({"path": p.relative_to(root).as_posix(), "size": p.stat().st_size})
        return out

    def check_write(self, job_id: str, path: str) -> int:
        """Whether ``path`` can be written (ShareError in words if not), before any byte of it is read:
        answers how many bytes the file may have (the job's limit less what its other files use)."""
        _, target = self._resolve(job_id, path)
        old = self._writable(job_id, path, target)
        return max(self.max_bytes - self.usage(job_id) + old, 0)

    def _writable(self, job_id: str, path: str, target: Path) -> int:
        """The size of the file ``target`` replaces; ShareError if it is a directory or a parent is not."""
        if target.is_dir() and not target.is_symlink():
            raise ShareError(f"{path[:200]!r} is a directory in the share", 409)
        real_root = self.share_dir(job_id).resolve()
        for p in [target.parent, *target.parent.parents]:
            if p == real_root:
                break
            if p.is_symlink() or (p.exists() and not p.is_dir()):
                raise ShareError(f"{path[:200]!r}: {p.name} is not a directory in the share", 409)
        return target.lstat().st_size if target.is_file() and not target.is_symlink() else 0

    def upload_dir(self, job_id: str) -> Path:
        """Where an upload to ``job_id``'s share is streamed before :meth:`write` moves it in (its job
        directory: the same file system, and removed with the job)."""
        directory = self.job_dir(job_id)
        if not directory.is_dir():
            raise ShareError(f"job {job_id} has no share (removed with old job history)", 404)
        return directory

    def write(self, job_id: str, path: str, data: bytes | Path, evictable: Iterable[str] = ()) -> int:
        """Write (replace) one file: atomically, parents created, within the per-job and total limits.
        ``data`` is the content, or a file of :meth:`upload_dir` holding it (moved into the share)."""
        _, target = self._resolve(job_id, path)
        old = self._writable(job_id, path, target)
        size = data.stat().st_size if isinstance(data, Path) else len(data)
        self._make_room(job_id, size - old, evictable)
        parent = target.parent
        parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, Path):
            tmp = str(data)
        else:
            fd, tmp = tempfile.mkstemp(prefix=".put-", dir=parent)
        try:
            if not isinstance(data, Path):
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)  # replaces a symlink itself, never what it points to
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self._usage[job_id] = self.usage(job_id) + size - old
        return size

    def pack(self, job_id: str) -> bytes:
        root = self.share_dir(job_id)
        if not root.is_dir():
            raise ShareError(f"job {job_id} has no share (removed with old job history)", 410)
        return pack_dir(root)


