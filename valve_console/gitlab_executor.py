"""``valve-console gitlab-executor config|prepare|run|cleanup``: gitlab-runner's custom executor driver.

gitlab-runner (config.toml written by ``backend/gitlab.py``) calls one stage per process, with the
machine, the API URL, the data directory and the builds root as arguments, and the job's variables
as ``CUSTOM_ENV_*`` (``CUSTOM_ENV_CI_JOB_ID``, ``CUSTOM_ENV_CI_PROJECT_PATH``...):

- ``config``: prints JSON (builds_dir ``<builds root>/<job id>``, cache_dir, builds_dir_is_shared false,
  hostname, driver name/version, job_env naming the machine);
- ``prepare``: first the pre-build filter (valve-infra's pre-build ACL): when config.toml gives
  ``--allow-user``/``--allow-namespace`` (from the ``gitlab_allowed_users``/``_namespaces`` settings), a job
  runs only if ``CUSTOM_ENV_GITLAB_USER_LOGIN`` is an allowed user or ``CUSTOM_ENV_CI_PROJECT_NAMESPACE`` is
  an allowed namespace or under one (``ns/...``); otherwise ``Access denied: ...`` and
  ``$BUILD_FAILURE_EXIT_CODE`` (the job's fault, not the farm's: gitlab-runner must not retry it). Then the
  machine must exist, not be retired and be ready for service (asked from the API); otherwise, or with the
  backend down, it exits with ``$SYSTEM_FAILURE_EXIT_CODE``;
- ``run <script> <stage>``: runs the script gitlab-runner generated with bash, in the job's builds dir,
  with ``VALVE_CONSOLE_MACHINE``, ``VALVE_CONSOLE_URL``/``_API`` and ``VALVE_CONSOLE_TOKEN`` set, so the
  CI script's ``valve-console job run job.yml`` runs on this runner's DUT. A failing script exits with
  ``$BUILD_FAILURE_EXIT_CODE``; a script that cannot be run with ``$SYSTEM_FAILURE_EXIT_CODE``;
- ``cleanup``: removes the job's builds dir (never fails the job).

``--gateway`` instead of ``--machine`` is the gateway runner's mode (setting ``gitlab_gateway_runner``): no
DUT. ``prepare`` applies the same pre-build filter, then only checks that the backend answers; ``run`` sets
the same variables but never ``VALVE_CONSOLE_MACHINE`` (not even from gitlab-runner's own environment), so a
CI script's ``valve-console job run`` needs ``-i MAC`` or a job target, as on any host. Both options at once
are refused.

Note: the CI script runs on the gateway as gitlab-runner's user and gets the operator token: only
expose runners to projects you trust, and set the pre-build filter.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from . import __version__

STAGES = ("config", "prepare", "run", "cleanup")


def add_parser(sub: Any) -> None:
    p = sub.add_parser("gitlab-executor", help="gitlab-runner custom executor driver (called by gitlab-runner)")
    p.add_argument("stage", choices=STAGES)
    p.add_argument("script", nargs="?", help="run: the script gitlab-runner generated")
    p.add_argument("stage_name", nargs="?", help="run: the sub-stage (step_script, after_script...)")
    p.add_argument("--machine", help="the DUT's MAC (default: env VALVE_CONSOLE_MACHINE)")
    p.add_argument(
        "--gateway",
        action="store_true",
        help="the gateway runner: no DUT (the CI script's `job run` needs -i or a target); not with --machine",
    )
    p.add_argument("--api", help="the backend's API URL (default: env VALVE_CONSOLE_URL)")
    p.add_argument("--data-dir", dest="gl_data_dir", type=Path, help="read the operator token from <DIR>/token")
    p.add_argument("--builds-dir", dest="builds_dir", type=Path, help="the root of the job build dirs")
    p.add_argument(
        "--allow-user",
        dest="allow_users",
        action="append",
        default=[],
        metavar="LOGIN",
        help="prepare: admit jobs of this GitLab user (repeatable; with no --allow-* every job is admitted)",
    )
    p.add_argument(
        "--allow-namespace",
        dest="allow_namespaces",
        action="append",
        default=[],
        metavar="NS",
        help="prepare: admit jobs of projects in this namespace or under it (repeatable)",
    )


def _code(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def _fail(message: str, code_var: str = "SYSTEM_FAILURE_EXIT_CODE") -> int:
    print(f"valve-console gitlab-executor: {message}", file=sys.stderr, flush=True)
    return _code(code_var, 2 if code_var == "SYSTEM_FAILURE_EXIT_CODE" else 1)


def _env(name: str) -> str | None:
    return os.environ.get(name) or os.environ.get(f"CUSTOM_ENV_{name}")


def _job_id() -> str:
    job = os.environ.get("CUSTOM_ENV_CI_JOB_ID") or "nojob"
    return re.sub(r"[^A-Za-z0-9_.-]", "_", job)[:64]


def _builds_root(args: argparse.Namespace) -> Path:
    if args.builds_dir:
        return Path(args.builds_dir)
    return Path(os.environ.get("TMPDIR") or "/tmp") / "valve-console-builds"


def _job_dir(args: argparse.Namespace) -> Path:
    return _builds_root(args) / _job_id()


def _token(args: argparse.Namespace) -> str | None:
    token = os.environ.get("VALVE_CONSOLE_TOKEN")
    if token:
        return token
    if args.gl_data_dir is not None:
        try:
            return (Path(args.gl_data_dir) / "token").read_text().strip()
        except OSError:
            return None
    return None


def _target(args: argparse.Namespace) -> tuple[str | None, str]:
    """(machine, API URL); the gateway runner has no machine, whatever the environment says."""
    machine = None if getattr(args, "gateway", False) else args.machine or _env("VALVE_CONSOLE_MACHINE")
    api = args.api or _env("VALVE_CONSOLE_URL") or os.environ.get("VALVE_CONSOLE_API") or "http://127.0.0.1:8000"
    return machine, api.rstrip("/")


def stage_config(args: argparse.Namespace) -> int:
    machine, api = _target(args)
    root = _builds_root(args)
    answer = {
        "builds_dir": str(root / _job_id()),
        "cache_dir": str(root.parent / "cache"),
        "builds_dir_is_shared": False,
        "hostname": socket.gethostname(),
        "driver": {"name": "valve-console", "version": __version__},
        "job_env": {"VALVE_CONSOLE_URL": api},
    }
    if not args.gateway:
        answer["job_env"]["VALVE_CONSOLE_MACHINE"] = machine or ""
    print(json.dumps(answer))
    return 0


def admitted(user: str, namespace: str, users: list[str], namespaces: list[str]) -> bool:
    """The pre-build filter: no lists admit everyone; else a listed user, or a namespace equal to or under
    a listed one. GitLab user and namespace paths are unique case-insensitively, so the case is ignored."""
    users = [u.strip().casefold() for u in users if u.strip()]
    namespaces = [n.strip().strip("/").casefold() for n in namespaces if n.strip().strip("/")]
    if not users and not namespaces:
        return True
    user, namespace = user.strip().casefold(), namespace.strip().strip("/").casefold()
    if user and user in users:
        return True
    return bool(namespace) and any(namespace == ns or namespace.startswith(ns + "/") for ns in namespaces)


def stage_prepare(args: argparse.Namespace) -> int:
    import httpx

    if args.allow_users or args.allow_namespaces:
        user = os.environ.get("CUSTOM_ENV_GITLAB_USER_LOGIN") or ""
        namespace = os.environ.get("CUSTOM_ENV_CI_PROJECT_NAMESPACE") or ""
        if not admitted(user, namespace, args.allow_users, args.allow_namespaces):
            return _fail(
                f"Access denied: user {user or '(unknown)'} in namespace {namespace or '(unknown)'} "
                "may not run jobs on this farm",
                "BUILD_FAILURE_EXIT_CODE",
            )
    machine, api = _target(args)
    if args.gateway:
        return _prepare_gateway(args, api)
    if not machine:
        return _fail("no machine: config.toml gives --machine (or set VALVE_CONSOLE_MACHINE)")
    try:
        r = httpx.get(f"{api}/api/v1/machine/{machine}/", timeout=10)
    except httpx.HTTPError as exc:
        return _fail(f"the valve-console backend is unreachable at {api}: {exc or type(exc).__name__}")
    if r.status_code != 200:
        try:
            message = r.json().get("error") or r.text
        except ValueError:
            message = r.text
        return _fail(f"machine {machine}: HTTP {r.status_code}: {message}")
    m = r.json()
    name = m.get("full_name") or machine
    if m.get("is_retired"):
        return _fail(f"machine {name} ({machine}) is retired")
    if not m.get("ready_for_service"):
        return _fail(f"machine {name} ({machine}) is not ready for service (state {m.get('state')})")
    return _prepared(args, f"{name} ({machine}), tags {', '.join(m.get('tags') or []) or '-'}", api)


def _prepared(args: argparse.Namespace, where: str, api: str) -> int:
    """prepare's end, for a DUT's runner and the gateway's: the job's build dir, and one line saying where it runs."""
    try:
        _job_dir(args).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return _fail(f"cannot create the build dir {_job_dir(args)}: {exc.strerror or exc}")
    project = os.environ.get("CUSTOM_ENV_CI_PROJECT_PATH") or "?"
    print(f"valve-console: job {_job_id()} of {project} runs on {where}, via {api}", flush=True)
    return 0


def _prepare_gateway(args: argparse.Namespace, api: str) -> int:
    """The gateway runner's prepare (after the filter): no DUT to check, only that the backend answers, so a
    job does not start its script against a farm that is down."""
    import httpx

    try:
        r = httpx.get(f"{api}/api/v1/health", timeout=10)
    except httpx.HTTPError as exc:
        return _fail(f"the valve-console backend is unreachable at {api}: {exc or type(exc).__name__}")
    if r.status_code != 200:
        return _fail(f"the valve-console backend at {api} answers HTTP {r.status_code} to /api/v1/health")
    where = f"the gateway {socket.gethostname()} (no DUT: `valve-console job run` needs -i MAC or a target)"
    return _prepared(args, where, api)


def stage_run(args: argparse.Namespace) -> int:
    if not args.script or not args.stage_name:
        return _fail("run needs <script path> <stage name>")
    machine, api = _target(args)
    script = Path(args.script)
    if not script.is_file():
        return _fail(f"the script {script} does not exist")
    workdir = _job_dir(args)
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return _fail(f"cannot create the build dir {workdir}: {exc.strerror or exc}")
    env = dict(os.environ)
    env.update({"VALVE_CONSOLE_URL": api, "VALVE_CONSOLE_API": api})
    env.pop("VALVE_CONSOLE_MACHINE", None)  # only ever this runner's DUT; none for the gateway runner
    if machine:
        env["VALVE_CONSOLE_MACHINE"] = machine
    token = _token(args)
    if token:
        env["VALVE_CONSOLE_TOKEN"] = token
    bash = shutil.which("bash") or "/bin/bash"
    try:
        code = subprocess.call([bash, str(script)], cwd=workdir, env=env)
    except OSError as exc:
        return _fail(f"cannot run {script} with {bash}: {exc.strerror or exc}")
    if code != 0:
        print(
            f"valve-console gitlab-executor: stage {args.stage_name} failed (exit code {code})",
            file=sys.stderr,
            flush=True,
        )
        return _code("BUILD_FAILURE_EXIT_CODE", 1)
    return 0


def stage_cleanup(args: argparse.Namespace) -> int:
    root = _builds_root(args).resolve()
    target = _job_dir(args).resolve()
    if target.parent != root:  # never remove anything outside the builds root
        return _fail(f"refusing to remove {target}: not under {root}")
    shutil.rmtree(target, ignore_errors=True)
    return 0


def main(args: argparse.Namespace) -> int:
    stage = {"config": stage_config, "prepare": stage_prepare, "run": stage_run, "cleanup": stage_cleanup}
    if getattr(args, "gateway", False) and args.machine:
        return _fail(
            f"--machine {args.machine} and --gateway together: a runner is either a DUT's (--machine MAC) "
            "or the gateway runner (--gateway), not both"
        )
    try:
        return stage[args.stage](args)
    except Exception as exc:  # noqa: BLE001 - any crash is an infrastructure failure for the runner
        return _fail(f"{args.stage} failed: {type(exc).__name__}: {exc}")
