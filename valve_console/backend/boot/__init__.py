"""Network boot of the DUTs: boot configs, the iPXE script, dnsmasq host pinning and config.

Everything here is pure (text in, text out) except :func:`write_atomically` (file I/O: call it
through ``asyncio.to_thread``) and :func:`dnsmasq_test` (async: runs ``dnsmasq --test``).

Public API
----------

``BootConfig(kernel_url, initrd_url, cmdline="")``
    What one DUT boots next (frozen dataclass). Built from a job's deployment
    (``Job.deployment_for_boot(n)``) or :func:`registration_boot` for unknown machines. The URLs and
    the cmdline are checked on creation (``ValueError``) so that nothing can inject iPXE commands.

``ipxe_script(config, platform=None, buildarch=None) -> str``
    The answer to ``GET /boot/<mac>/boot.ipxe?platform=&buildarch=`` (valve-infra §5.4): sets
    ``semicolon:hex 3b``, downloads the kernel (with ``initrd=initrd`` unless ``platform == "pcbios"``
    and every ``;`` of the cmdline written as ``${semicolon:string}``), then the initrd, then boots.

``registration_boot(*, kernel_url, initrd_url, api_host, registry, ...) -> BootConfig``
    The default boot of a DUT the gateway does not know (or that has nothing to do): boot2container
    running the ``machine_registration ... register`` container.

``validate_url(url, what="URL") -> str`` and ``validate_cmdline(cmdline) -> str``
    The checks :class:`BootConfig` applies, reusable by the job schema.

``DhcpHost(mac, ip, hostname)``, ``dhcp_hostname(name) -> str``, ``dhcp_hosts(machines, comment=None) -> str``,
``parse_dhcp_hosts(text) -> list[DhcpHost]``, ``write_atomically(path, text, mode=0o644) -> Path``
    The dnsmasq ``--dhcp-hostsfile`` that pins each DUT's IP: lines ``<mac>,<ip>,<hostname>`` (a real
    hostname; valve-infra wrote ``set:<name>``, a dnsmasq *tag*). MACs are normalised with
    :func:`valve_console.backend.registration.normalise_mac`. After writing, SIGHUP the dnsmasq.

``dnsmasq_config(private_interface, private_ip, dhcp_range, tftp_root, hosts_file, leases_file,
ipxe_bios, ipxe_efi, boot_url) -> str``
    The config of an optional managed dnsmasq: DHCP + TFTP only (``port=0``), NTP and DNS options
    pointing at the gateway, BIOS/EFI iPXE binaries over TFTP, and iPXE clients (user class ``iPXE``)
    chained to ``<boot_url>/boot/${netX/mac}/boot.ipxe?platform=${platform}&buildarch=${buildarch}``.
    Refuses a private IP inside the DHCP range.

``prepare_tftp_root(config_text, sources=IPXE_SOURCES) -> (Path | None, problems)``
    Makes the config's ``tftp-root=`` directory and copies the iPXE binaries of its ``dhcp-boot=`` lines
    there from Debian's ipxe package when missing (dnsmasq does not start without the directory).

``dnsmasq_command(conf_file, executable="dnsmasq") -> list[str]``, ``find_dnsmasq() -> str | None``,
``async dnsmasq_test(config_text, timeout=10.0) -> tuple[bool, str]``
    How to run it; ``dnsmasq_test`` syntax-checks a config with ``dnsmasq --test`` (Debian package
    ``dnsmasq-base`` is enough). It returns ``(False, "dnsmasq is not installed")`` when it is missing.

``BootCache(directory, base, max_bytes)``, ``cache_name(url)``, ``safe_file_name(name)``, ``BootCacheError``
    Remote kernels/initramfs downloaded once (httpx, streamed to a temp file, renamed) into
    ``<data>/files/<sha256(url)[:16]>-<basename>`` and served by ``GET /files/<name>``;
    ``await cache.localise(config)`` gives the config with local URLs.

``BootService(bus, machines, root, debounce, dnsmasq_conf)``, ``pinned_hosts(machines)``
    Keeps one pin per machine, updated from each ``machine`` event (its JSON), and rewrites
    ``<root>/hosts.dhcp`` when a pin changed (coalesced per burst, atomically) and runs the optional
    managed dnsmasq (checked with ``dnsmasq --test`` first; SIGHUP after each hosts write).

The package: ``ipxe`` (BootConfig, scripts), ``hosts`` (the dnsmasq hosts file), ``dnsmasq`` (config, TFTP root,
process), ``cache`` (BootCache), ``service`` (BootService), ``files`` (atomic writes); this face re-exports them.
"""

from __future__ import annotations

from ..rules import validate_url  # its home is rules.py; boot's face kept it
from .cache import BootCache, BootCacheError, cache_name, safe_file_name
from .dnsmasq import dnsmasq_command, dnsmasq_config, dnsmasq_test, find_dnsmasq, prepare_tftp_root
from .files import write_atomically
from .hosts import DhcpHost, dhcp_hostname, dhcp_hosts, parse_dhcp_hosts, pinned_hosts
from .ipxe import (
    DEFAULT_REGISTRATION_IMAGE,
    DEFAULT_REGISTRY,
    BootConfig,
    ipxe_script,
    registration_boot,
    validate_cmdline,
)
from .service import BootService

__all__ = [
    "BootCache",
    "BootCacheError",
    "BootConfig",
    "BootService",
    "DEFAULT_REGISTRATION_IMAGE",
    "DEFAULT_REGISTRY",
    "DhcpHost",
    "cache_name",
    "dhcp_hostname",
    "dhcp_hosts",
    "dnsmasq_command",
    "dnsmasq_config",
    "dnsmasq_test",
    "find_dnsmasq",
    "ipxe_script",
    "parse_dhcp_hosts",
    "pinned_hosts",
    "prepare_tftp_root",
    "registration_boot",
    "safe_file_name",
    "validate_cmdline",
    "validate_url",
    "write_atomically",
]
