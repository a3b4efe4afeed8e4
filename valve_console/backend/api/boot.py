"""Network boot (open, DUT-facing): a DUT's iPXE script, valve-infra's ``boot`` bucket names of the default
boot, and the boot artefacts of ``<data>/files/``."""

from __future__ import annotations

import asyncio
import logging
from typing import Literal, Optional

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse, PlainTextResponse, RedirectResponse, Response

from ..boot import ipxe_script, registration_boot, safe_file_name
from ..errors import BadRequest, FarmError
from ..registration import normalise_mac
from .deps import FarmDep, loggable
from .models import ERRORS

log = logging.getLogger("valve_console.backend.api")
router = APIRouter()


@router.get("/boot/{mac}/boot.ipxe", tags=["boot"], response_class=PlainTextResponse)
async def boot_ipxe(
    mac: str,
    farm: FarmDep,
    platform: Optional[str] = Query(default=None, max_length=32),
    buildarch: Optional[str] = Query(default=None, max_length=32),
) -> str:
    """The DUT's iPXE script: its job's current boot, or the registration boot."""
    try:
        key: Optional[str] = normalise_mac(mac)
    except ValueError:
        key = None
    config = farm.jobs.boot_config(key) if key else None
    if key is not None:  # platform and buildarch come from the DUT: escaped, they cannot forge log lines
        log.info("%s queried its boot configuration as a %s / %s platform", key, loggable(platform),
                 loggable(buildarch))
    if config is None:
        kernel, initrd, host = farm.boot_urls()
        try:
            config = registration_boot(kernel_url=kernel, initrd_url=initrd, api_host=host)
        except ValueError as exc:
            raise FarmError(f"the default boot is misconfigured: {exc}", 503) from None
    return ipxe_script(config, platform, buildarch)


@router.get(
    "/boot/{name}",
    tags=["boot"],
    responses={200: {"content": {"application/octet-stream": {}}}, 307: {"description": "elsewhere"}, **ERRORS},
    response_class=Response,
)
async def default_boot_file(
    name: Literal["default_kernel", "default_boot2container.cpio.xz"], farm: FarmDep
) -> Response:
    """valve-infra's MinIO ``boot`` bucket: ``{{ minio_url }}/boot/default_kernel`` and
    ``.../default_boot2container.cpio.xz`` are this gateway's default boot kernel and initramfs."""
    kernel, initrd, host = farm.boot_urls()
    url = kernel if name == "default_kernel" else initrd
    ours = f"http://{host}/files/"
    if not url.startswith(ours):
        return RedirectResponse(url, status_code=307)
    if not safe_file_name(url[len(ours):]):
        raise FarmError(f"the default boot URL {url} is not a file of this gateway's files directory", 404)
    path = farm.settings.data_dir / "files" / url[len(ours):]
    if not await asyncio.to_thread(path.is_file):
        raise FarmError(f"this gateway has no default boot file {url[len(ours):]!r} in its files directory", 404)
    return FileResponse(path, media_type="application/octet-stream")


@router.get(
    "/files/{name}",
    tags=["boot"],
    responses={200: {"content": {"application/octet-stream": {}}}, **ERRORS},
    response_class=Response,
)
async def boot_file(name: str, farm: FarmDep) -> Response:
    """A boot artefact (kernel, initramfs) from ``<data>/files/`` (open, DUT-facing)."""
    if not safe_file_name(name):
        raise BadRequest(
            f"{name[:80]!r} is not a file name: 1-200 letters, digits and . _ + - only, not starting with '.'"
        )
    path = farm.settings.data_dir / "files" / name
    if not await asyncio.to_thread(path.is_file):
        raise FarmError(f"no file {name!r} on this gateway", 404)
    return FileResponse(path, media_type="application/octet-stream")
