"""iPXE boot scripts: ``BootConfig`` (kernel, initrd, cmdline), ``ipxe_script``, ``registration_boot`` (the default
boot of unknown or idle DUTs: boot2container running the registration image) and ``validate_cmdline``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Sequence

from ..rules import IPXE_OPERATORS, control_chars, validate_url

DEFAULT_REGISTRY = "ci-gateway:8002"
DEFAULT_REGISTRATION_IMAGE = "mupuf/valve-infra/machine_registration:latest"

MAX_CMDLINE_LENGTH = 8192


def validate_cmdline(cmdline: str) -> str:
    """Check a kernel command line for an iPXE script; returns it, raises ``ValueError`` in words.

    Refused: control characters (newlines above all), ``&&`` and ``||``. A ``;`` is fine: the
    script writes it as ``${semicolon:string}``.
    """
    if not isinstance(cmdline, str):
        raise ValueError("the kernel cmdline must be a string")
    if len(cmdline) > MAX_CMDLINE_LENGTH:
        raise ValueError(f"the kernel cmdline is longer than {MAX_CMDLINE_LENGTH} characters")
    bad = control_chars(cmdline)
    if bad:
        raise ValueError(
            f"the kernel cmdline contains the control character {bad[0]!r} (a newline would start an iPXE command)"
        )
    for token in IPXE_OPERATORS:
        if token in cmdline:
            raise ValueError(f"the kernel cmdline contains {token!r}, which iPXE would run as a conditional command")
    return cmdline


@dataclass(frozen=True)
class BootConfig:
    """What a DUT boots: kernel URL, optional initrd URL and the kernel command line."""

    kernel_url: str
    initrd_url: Optional[str]
    cmdline: str = ""

    def __post_init__(self) -> None:
        validate_url(self.kernel_url, "kernel URL")
        if self.initrd_url is not None:
            validate_url(self.initrd_url, "initrd URL")
        validate_cmdline(self.cmdline)


def ipxe_script(config: BootConfig, platform: Optional[str] = None, buildarch: Optional[str] = None) -> str:
    """The iPXE script that boots ``config``.

    ``platform`` is iPXE's ``${platform}`` (``pcbios``, ``efi``): EFI kernels need ``initrd=initrd``
    on their command line, BIOS ones must not get it. ``buildarch`` (``i386``, ``x86_64``, ``arm64``)
    does not change the script; it is accepted for the caller's log line.
    """
    del buildarch  # same script on every architecture
    # Re-check: a BootConfig could have been built with object.__setattr__ tricks or dataclasses.replace.
    validate_url(config.kernel_url, "kernel URL")
    if config.initrd_url is not None:
        validate_url(config.initrd_url, "initrd URL")
    cmdline = validate_cmdline(config.cmdline).replace(";", "${semicolon:string}")
    kernel = ["kernel", config.kernel_url]
    if config.initrd_url is not None and platform != "pcbios":
        kernel.append("initrd=initrd")
    if cmdline.strip():
        kernel.append(cmdline.strip())
    lines = [
        "#!ipxe",
        "set semicolon:hex 3b",
        "echo Downloading the kernel",
        " ".join(kernel),
    ]
    if config.initrd_url is not None:
        lines += ["echo Downloading the initrd", f"initrd --name initrd {config.initrd_url}"]
    lines += ["echo Booting!", "boot"]
    return "\n".join(lines) + "\n"


_B2C_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]*")  # fullmatch: "$" would allow a final newline


def _b2c_token(value: str, what: str) -> str:
    if not isinstance(value, str) or not _B2C_TOKEN.fullmatch(value) or len(value) > 512:
        raise ValueError(f"{what} {str(value)[:80]!r} is not valid (letters, digits and . _ : / @ + - only)")
    return value


def registration_boot(
    *,
    kernel_url: str,
    initrd_url: str,
    api_host: str,
    registry: str = DEFAULT_REGISTRY,
    image: str = DEFAULT_REGISTRATION_IMAGE,
    ntp_peer: Optional[str] = None,
    cache_device: str = "none",
    extra_args: Sequence[str] = (),
) -> BootConfig:
    """The boot of an unknown DUT: boot2container running ``machine_registration -m <api_host> register``.

    - ``kernel_url``/``initrd_url``: the default kernel and boot2container initramfs, served by the gateway;
    - ``api_host``: ``host[:port]`` of this gateway's API as the DUT reaches it (the container POSTs to
      ``http://<api_host>/api/v1/machine/``), e.g. ``10.42.0.1:8000``;
    - ``registry``: the container registry (proxy) the DUT pulls from, e.g. ``10.42.0.1:8002``;
    - ``ntp_peer``: defaults to the host part of ``api_host``;
    - ``extra_args``: more kernel arguments, appended as they are.

    No ``console=`` and no ``SALAD.machine_id``: the machine is unknown; the container finds its console
    by ``SALAD.ping``/``SALAD.pong``.
    """
    _b2c_token(api_host, "api_host")
    _b2c_token(registry, "registry")
    _b2c_token(image, "image")
    if ntp_peer is not None:
        peer = ntp_peer
    else:
        peer = api_host.rsplit(":", 1)[0] if api_host.count(":") == 1 else api_host
    _b2c_token(peer, "ntp_peer")
    if cache_device not in ("none", "auto", "reset") and not cache_device.startswith("/dev/"):
        raise ValueError(f"cache_device {cache_device!r} is not none, auto, reset or a /dev/ path")
    _b2c_token(cache_device, "cache_device")
    container = f"-ti --tls-verify=false docker://{registry}/{image} -m {api_host} register"
    args = [f'b2c.container="{container}"', f"b2c.ntp_peer={peer}", f"b2c.cache_device={cache_device}"]
    for arg in extra_args:
        if not isinstance(arg, str) or not arg.strip():
            raise ValueError(f"extra kernel argument {arg!r} is empty or not a string")
        args.append(arg.strip())
    return BootConfig(kernel_url=kernel_url, initrd_url=initrd_url, cmdline=" ".join(args))
