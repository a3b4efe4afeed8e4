"""Built-in jobs (Sgt. Hartman's ``register`` and ``bootloop``): their templates, defaults and ``builtin_job``."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Mapping, Optional

from ..boot.ipxe import DEFAULT_REGISTRATION_IMAGE, DEFAULT_REGISTRY
from .schema import Job
from .templating import MachineLike, job_variables

REGISTER_JOB_TEMPLATE = """\
version: 1
target:
  id: '{{ machine_id }}'
timeouts:
  overall:
    minutes: 5
console_patterns:
  session_end:
    regex: '^MaRS: Registration .*$'
  job_success:
    regex: '^MaRS: Registration complete$'
deployment:
  start:
    kernel:
      url: '{{ default_kernel_url }}'
      cmdline:
        - 'b2c.container="-ti --tls-verify=false {{ registration_image }} -m {{ mars_host }} register"'
        - 'b2c.ntp_peer={{ ntp_peer }}'
        - 'b2c.cache_device=auto'
        - '{% if local_tty_device %}console={{ local_tty_device }},115200 {% endif %}SALAD.machine_id={{ machine_id }}'
    initramfs:
      url: '{{ default_initramfs_url }}'
"""

BOOTLOOP_JOB_TEMPLATE = """\
version: 1
target:
  id: '{{ machine_id }}'
timeouts:
  first_console_activity:
    minutes: 2
    retries: 0
  overall:
    minutes: 3
console_patterns:
  session_end:
    regex: '^.*It''s now safe to turn off your computer\\r$'
  job_success:
    regex: '^.*Execution is over, pipeline status: 0\\r$'
  job_warn:
    regex: '^The configured console is not connected to SALAD$'
deployment:
  start:
    kernel:
      url: '{{ default_kernel_url }}'
      cmdline:
        - 'b2c.container="-ti --tls-verify=false {{ registration_image }} -m {{ mars_host }} check"'
        - 'b2c.ntp_peer={{ ntp_peer }}'
        - 'b2c.cache_device=none'
        - 'earlyprintk=vga,keep'
        - '{% if local_tty_device %}console={{ local_tty_device }},115200 {% endif %}SALAD.machine_id={{ machine_id }}'
    initramfs:
      url: '{{ default_initramfs_url }}'
"""

BUILTIN_TEMPLATES: dict[str, str] = {"register": REGISTER_JOB_TEMPLATE, "bootloop": BOOTLOOP_JOB_TEMPLATE}

# Template variables of the built-in jobs that have a default (an EXECUTOR_JOB__<NAME> or ``variables`` wins).
BUILTIN_DEFAULTS: dict[str, str] = {
    "registration_image": f"docker://{DEFAULT_REGISTRY}/{DEFAULT_REGISTRATION_IMAGE}",
    "mars_host": "ci-gateway",
    "ntp_peer": "ci-gateway",
}


def builtin_job(
    name: str,
    machine: MachineLike,
    *,
    default_kernel_url: str,
    default_initramfs_url: str,
    env: Optional[Mapping[str, str]] = None,
    variables: Optional[Mapping[str, Any]] = None,
    now: Optional[datetime] = None,
) -> Job:
    """Sgt. Hartman's ``register`` or ``bootloop`` job for ``machine``.

    ``variables`` may set ``registration_image`` (``docker://host:port/path:tag``), ``mars_host`` (the
    gateway API's ``host[:port]`` as the DUT reaches it) and ``ntp_peer``; see :data:`BUILTIN_DEFAULTS`.
    """
    try:
        template = BUILTIN_TEMPLATES[name]
    except KeyError:
        raise ValueError(f"no built-in job {name!r} (known: {', '.join(BUILTIN_TEMPLATES)})") from None
    from_env = job_variables(None, env)
    merged: dict[str, Any] = {k: v for k, v in BUILTIN_DEFAULTS.items() if k not in from_env}
    merged.update(variables or {})
    merged.update(default_kernel_url=default_kernel_url, default_initramfs_url=default_initramfs_url)
    return Job.parse(template, machine, env, variables=merged, now=now, strict=True)
