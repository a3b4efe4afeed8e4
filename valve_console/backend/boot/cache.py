"""BootCache: remote kernels and initramfs of jobs downloaded once into ``<data>/files/`` and served from there."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import tempfile
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Optional, Union

from .files import _unlink_quietly
from .ipxe import BootConfig

_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,199}")  # fullmatch


def safe_file_name(name: str) -> bool:
    """True if ``name`` may be served from the files directory (one path component, no dot-dot)."""
    return isinstance(name, str) and bool(_FILE_NAME.fullmatch(name)) and ".." not in name


def cache_name(url: str) -> str:
    """``<hash>-<basename>`` of a cached artefact: 16 hex digits of sha256(url), the URL's last path part."""
    import hashlib
    from urllib.parse import urlsplit

    digest = hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]
    base = urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]
    base = re.sub(r"[^A-Za-z0-9._+-]+", "_", base).strip("._-")[:64] or "file"
    return f"{digest}-{base}"


class BootCacheError(Exception):
    """A boot artefact could not be cached (the message says why, in words)."""


class BootCache:
    """Boot artefacts (kernels, initramfs) downloaded once into ``directory`` and served at ``<base>/<name>``.

    ``base`` (a callable or a string) is the gateway's files URL as the DUTs reach it,
    e.g. ``http://10.42.0.1:8000/files``. URLs already under it, and ``tftp://`` URLs, are used as they are.
    """

    def __init__(self, directory: Union[str, os.PathLike[str]], base: Any, max_bytes: int = 2 << 30,
                 timeout: float = 60.0, guard: Optional[Callable[[str, str], Awaitable[None]]] = None) -> None:
        self.directory = Path(directory)
        self._base = base
        self.max_bytes = max_bytes
        self.timeout = timeout
        # Checks each URL fetched (redirects too): raises ValueError for an address the gateway trusts.
        self.guard = guard
        self.downloads = 0  # downloads done (for tests and metrics)
        self._locks: dict[str, asyncio.Lock] = {}

    @property
    def base(self) -> str:
        return str(self._base() if callable(self._base) else self._base).rstrip("/")

    def is_local(self, url: str) -> bool:
        """URLs on the gateway's own API (its /files/, the default boot files at /boot/...) and tftp://
        are used as they are: the DUT fetches them, the gateway never does."""
        from urllib.parse import urlsplit

        if url.lower().startswith("tftp://"):
            return True
        mine, theirs = urlsplit(self.base), urlsplit(url)
        return (theirs.scheme, theirs.netloc.lower()) == (mine.scheme, mine.netloc.lower())

    async def localise(self, config: BootConfig) -> BootConfig:
        """``config`` with its remote kernel/initrd URLs replaced by cached local ones (``BootCacheError``)."""
        kernel = await self.local_url(config.kernel_url, "kernel")
        initrd = await self.local_url(config.initrd_url, "initramfs") if config.initrd_url else None
        return BootConfig(kernel_url=kernel, initrd_url=initrd, cmdline=config.cmdline)

    async def local_url(self, url: str, what: str = "file") -> str:
        if self.is_local(url):
            return url
        name = cache_name(url)
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            path = self.directory / name
            if not await asyncio.to_thread(path.is_file):
                await self._download(url, path, what)
        return f"{self.base}/{name}"

    @contextlib.asynccontextmanager
    async def _open(self, client: Any, url: str, what: str) -> AsyncIterator[Any]:
        """GET ``url`` following at most 5 redirects, each hop checked by the guard; a 200 response."""
        current = url
        for _ in range(6):
            if self.guard is not None:
                try:
                    await self.guard(current, what)
                except ValueError as exc:
                    raise BootCacheError(str(exc)) from None
            async with client.stream("GET", current) as resp:
                if resp.is_redirect and "location" in resp.headers:
                    current = str(resp.url.join(resp.headers["location"]))
                    continue
                if resp.status_code != 200:
                    raise BootCacheError(f"cannot download the {what} {url}: HTTP {resp.status_code}")
                yield resp
                return
        raise BootCacheError(f"cannot download the {what} {url}: too many redirects")

    async def _download(self, url: str, path: Path, what: str) -> None:
        import httpx

        await asyncio.to_thread(self.directory.mkdir, parents=True, exist_ok=True)
        fd, tmp = await asyncio.to_thread(tempfile.mkstemp, prefix=f".{path.name}.", suffix=".part",
                                          dir=self.directory)
        handle = os.fdopen(fd, "wb")
        size = 0
        try:
            try:
                async with httpx.AsyncClient(follow_redirects=False, timeout=self.timeout) as client:
                    async with self._open(client, url, what) as resp:
                        length = resp.headers.get("content-length")
                        if length and length.isdigit() and int(length) > self.max_bytes:
                            raise BootCacheError(
                                f"the {what} {url} is {int(length)} bytes, more than the {self.max_bytes} allowed"
                            )
                        async for chunk in resp.aiter_bytes(1 << 20):
                            size += len(chunk)
                            if size > self.max_bytes:
                                raise BootCacheError(
                                    f"the {what} {url} is larger than the {self.max_bytes} bytes allowed"
                                )
                            await asyncio.to_thread(handle.write, chunk)
            except httpx.HTTPError as exc:
                raise BootCacheError(f"cannot download the {what} {url}: {type(exc).__name__}: {exc}") from None
            await asyncio.to_thread(handle.close)
            await asyncio.to_thread(os.chmod, tmp, 0o644)
            await asyncio.to_thread(os.replace, tmp, path)
            self.downloads += 1
        except BaseException:
            handle.close()
            await asyncio.to_thread(_unlink_quietly, tmp)
            raise
