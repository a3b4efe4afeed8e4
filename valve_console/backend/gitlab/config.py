"""gitlab-runner's ``config.toml`` (tomli-w) and what its runners run (the custom executor's command)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tomli_w

if TYPE_CHECKING:
    pass


# ---------------------------------------------------------------------------------------- config.toml
CONFIG_HEADER = (
    "# Written by valve-console: edits are overwritten. One [[runners]] per exposed machine and instance\n"
    "# (and <farm>-gateway per instance when gitlab_gateway_runner is on).\n"
    "\n"
)


def _without_none(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` without None (TOML has no null: a key left out is gitlab-runner's default), recursively."""
    return {k: _without_none(v) if isinstance(v, dict) else v for k, v in values.items() if v is not None}


def render_config_toml(global_values: dict[str, Any], runners: list[dict[str, Any]]) -> str:
    """gitlab-runner's config.toml (tomli-w): top-level keys and tables (dict values), then ``[[runners]]``
    entries whose dict values become sub-tables (``[runners.custom]``); None values are left out."""
    document = {**_without_none(global_values), "runners": [_without_none(runner) for runner in runners]}
    if not runners:
        del document["runners"]
    return CONFIG_HEADER + tomli_w.dumps(document)


def gateway_limit() -> int:
    """Jobs the gateway runner takes at once (valve-infra's ``max(1, cpu_count/8)``): its CI scripts share the
    gateway's CPUs with the farm itself."""
    return max(1, (os.cpu_count() or 1) // 8)


def executor_command() -> str:
    """The ``valve-console`` program gitlab-runner calls: the one next to this Python, else on PATH."""
    here = Path(sys.executable).parent / "valve-console"
    if here.exists():
        return str(here)
    return shutil.which("valve-console") or "valve-console"
