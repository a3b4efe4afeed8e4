"""GitLab runners: one runner per exposed machine per GitLab instance, and gitlab-runner's config.toml.

- ``GitlabInstance`` rows (API ``/api/v1/gitlab``) name a GitLab URL, an access token able to create
  runners (``POST /api/v4/user/runners``, scope ``create_runner``; listing every runner for the
  clean-up needs an admin token), an optional legacy registration token (``POST /api/v4/runners``,
  used when the user-runners call is refused with 403/404), the farm name and farm tags.
- A machine is *exposed* when it is ready for service, not retired and ``gitlab_exposed``. Each exposed
  machine gets one runner on every instance with ``expose_runners``: description ``<full_name>`` (with
  the instance's farm name as prefix; the same as the farm's by default), tags = the machine's tags plus
  the instance's farm tags, ``run_untagged`` false, locked. Its id and token are kept (``GitlabRunner``).
- **Which GitLab runners are ours**: those whose description starts with ``<farm_name>-``. A runner
  with that prefix that is not one of our stored runners is a stray and is deleted (at start and at
  every periodic full sync).
- python-gitlab is synchronous (requests): every call runs in a worker thread (``asyncio.to_thread``).
- GitLab down (connection errors, timeouts, 5xx): the instance is ``unreachable`` with the reason,
  retried with exponential back-off capped at ``gitlab_retry_max``; the farm keeps working and
  config.toml leaves out machines that are no longer exposed at once, whatever GitLab says.
- ``config.toml`` (custom executor calling ``valve-console gitlab-executor``) is rewritten atomically,
  mode 0600 (it holds runner tokens), only when its text changes. The prepare stage's args carry the
  pre-build filter (``gitlab_allowed_users``/``gitlab_allowed_namespaces``: ``--allow-user``/``--allow-namespace``).
- **Tokens** (valve-infra's verify_or_renew_token): on full syncs, each runner's token is checked with
  ``POST /runners/verify`` at most every ``gitlab_verify_interval``. Only a 403 means invalid (an outage or
  any other answer keeps the token); an invalid token, or one whose ``token_expires_at`` is within a day
  (or half its lifetime), is replaced: the old runner is deleted (best effort), a new one is created with the
  same description and tags. The last check is in the runner and instance JSON (in memory: no column).
- **The gateway runner** (valve-infra's generic gateway runner, setting ``gitlab_gateway_runner``, off by
  default): every exposing instance also gets ``<farm_name>-gateway`` with tags ``<farm_name>-gateway`` and
  ``CI-gateway``, for CI jobs that need no particular DUT. It is stored like a machine's runner under the
  reserved key ``GATEWAY`` (never a MAC, so no schema change), which also keeps the stray clean-up off it,
  and goes through the same create/update/verify/renew/delete paths; views that list a machine's runners
  skip it. Its config.toml entry calls the executor with ``--gateway`` (no machine) and
  ``limit = max(1, cpu_count // 8)``. Turned off, the next sync deletes it like an un-exposed machine's.

The package: ``service`` (RunnerService), ``client`` (GitlabApi and its errors), ``config`` (config.toml, the
executor command), ``bodies`` (the API bodies); this face re-exports what other modules use.
"""

from __future__ import annotations

from .bodies import NAME, GitlabInstanceCreate, GitlabInstanceUpdate
from .client import GitlabApi, GitlabDown, RunnerRefused, parse_gitlab_time
from .config import executor_command, gateway_limit, render_config_toml
from .service import GATEWAY, GATEWAY_TAG, MASK, RunnerService

__all__ = [
    "GATEWAY",
    "GATEWAY_TAG",
    "GitlabApi",
    "GitlabDown",
    "GitlabInstanceCreate",
    "GitlabInstanceUpdate",
    "MASK",
    "NAME",
    "RunnerRefused",
    "RunnerService",
    "executor_command",
    "gateway_limit",
    "parse_gitlab_time",
    "render_config_toml",
]
