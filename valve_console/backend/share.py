"""The job share: valve-infra's per-job bucket (§4.6) without MinIO.

Each job has a directory ``<data_dir>/jobs/<job id>/`` holding ``share/`` (the files) and ``key`` (the
per-job secret of the DUT). The job client may send a tar(.gz) of its share directory with the job
(valve-infra's ``job_bucket_initial_state_tarball_file``); the DUT reads and writes files over HTTP
while the job runs (``/api/v1/job/<id>/share/<key>/<path>``); when the job is over (not cancelled)
the client downloads the share as a tar.gz and unpacks it into its directory.

Stdlib only. The tarballs (:func:`pack_dir`, :func:`safe_extract`, which the job client uses too) live
in ``valve_console/tarball.py`` and are re-exported here. Every method does file I/O: the backend calls
them through ``asyncio.to_thread``. Errors are :class:`ShareError` with a message in words and an HTTP
status.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import secrets
import shutil
import stat
import tempfile
import uuid
from pathlib import Path
from typing import Iterable, Optional

from ..tarball import MAX_MEMBERS, ShareError, _check_name, pack_dir, safe_extract

__all__ = ["MAX_MEMBERS", "ShareError", "ShareStore", "bucket_name", "pack_dir", "safe_extract"]

KEY_FILE = "key"
SHARE_DIR = "share"


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
        removed: list[str] = []
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


