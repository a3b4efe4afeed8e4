"""Network boot of the DUTs: boot configs, the iPXE script, dnsmasq host pinning and config.

Everything here is pure (text in, text out) except :func:`write_atomically` (file I/O: call it
through ``asyncio.to_thread``) and :func:`dnsmasq_test` (async: runs ``dnsmasq --test``).

What each module holds (the signatures are in the modules):

- ``ipxe``: ``BootConfig``, what one DUT boots next, checked on creation so nothing can inject iPXE
  commands; the iPXE script of ``GET /boot/<mac>/boot.ipxe`` (valve-infra §5.4, ``;`` of a cmdline kept
  on BIOS); the registration boot of a DUT the gateway does not know (boot2container running
  ``machine_registration ... register``).
- ``hosts``: the dnsmasq ``--dhcp-hostsfile`` that pins each DUT's IP (``<mac>,<ip>,<hostname>``: a real
  hostname, where valve-infra wrote a dnsmasq tag).
- ``dnsmasq``: the optional managed dnsmasq (DHCP + TFTP only, iPXE clients chained to the boot URL; a
  private IP inside the DHCP range is refused), its TFTP root with Debian's iPXE binaries, and
  ``dnsmasq --test``.
- ``cache``: remote kernels and initramfs downloaded once (streamed, renamed into place) and served by
  ``GET /files/<name>``; ``files``: atomic writes.
- ``service``: ``BootService`` keeps one pin per machine from each ``machine`` event, rewrites the hosts
  file when a pin changed (coalesced per burst) and SIGHUPs the managed dnsmasq it runs.

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
