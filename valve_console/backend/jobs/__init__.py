"""Jobs: the valve-infra version 1 job description, its templating, timeouts and console state machine.

The package: ``errors`` (JobError, the enums), ``source`` (reading the YAML), ``schema`` (Job, Target,
peek_target), ``templating`` (Jinja2), ``timeouts``, ``console`` (patterns, JobConsole), ``builtin`` (Sgt.
Hartman's jobs) and ``worker`` (the parse worker process) are pure; ``executor`` (JobService), ``parser``
(JobParser) and ``run`` (JobRun) do the I/O. This face re-exports the pure modules' public names.

The pure modules: no I/O, no threads, no event loop; every clock is injectable (except ``worker_main``, the
loop of the parse worker process that the backend runs it in: see ``worker``). The executor,
the job API and the job client build on it. valve-infra's job files keep working (reference ``valve-infra.md`` §4),
with its bugs fixed (§13): the deadline is enforced, ``continue`` deployments use their own URLs and
cmdline, ``EXECUTOR_JOB__*`` variables lose their prefix (not a set of characters), the target is read
without parsing the unrendered YAML, and ``machine_unfit_for_service`` counts only when it matched.

What each module holds (the signatures are in the modules):

- ``errors``: ``JobError`` names the line of the rendered job and the dotted field of every problem
  found (``line 12: console_patterns.job_success.regex: invalid regex ...``); ``JobStatus`` is also the
  job client's exit code (PASS=0 ... SETUP_FAIL=6); ``JobConsoleState`` only moves forward.
- ``templating``: what a template sees (the machine's variables, ``EXECUTOR_JOB__<NAME>`` as ``<name>``,
  the farm's variables over those) and sandboxed Jinja2 rendering; an undefined variable is an error
  naming it, or renders empty as valve-infra's Jinja2 did when the caller asks for that.
- ``schema``: the job (pydantic, unknown keys refused): parse = render then load; ``deployment_for_boot(n)``
  (``continue`` over ``start`` after the first boot); ``peek_target`` reads the target of a job not yet
  bound to a machine without parsing the unrendered YAML.
- ``timeouts``: valve-infra's timeouts and the job deadline (never retried); ``console``: watchdogs,
  console patterns and the per-job console state machine (``JobConsole``).
- ``worker``: the parse worker process loop: each request under a CPU budget (RLIMIT_CPU), the process
  under RLIMIT_DATA, YAML composition bounded in nodes; over a limit the answer says which and the worker
  exits. ``builtin``: Sgt. Hartman's ``register`` and ``bootloop`` jobs.
"""

from __future__ import annotations

from .builtin import BUILTIN_DEFAULTS, BUILTIN_TEMPLATES, builtin_job
from .console import (
    DEFAULT_MAX_LINE_LENGTH,
    DEFAULT_SESSION_END,
    MAX_PATTERN_CHARS,
    ConsolePatterns,
    JobConsole,
    LineMatch,
    Pattern,
    Watchdog,
    WatchdogPatterns,
)
from .errors import JobConsoleState, JobError, JobIssue, JobStatus
from .schema import Deployment, Job, Target, peek_target
from .source import MAX_JOB_CHARS, MAX_YAML_NODES
from .templating import ENV_PREFIX, PLACEHOLDER_MACHINE, MachineInfo, job_variables, render_job
from .timeouts import MAX_WATCHDOGS, Timeout, Timeouts, TimeoutSpec, TimeoutsSpec
from .worker import WORKER_READY, worker_main

__all__ = [
    "BUILTIN_DEFAULTS",
    "BUILTIN_TEMPLATES",
    "ConsolePatterns",
    "DEFAULT_MAX_LINE_LENGTH",
    "DEFAULT_SESSION_END",
    "Deployment",
    "ENV_PREFIX",
    "Job",
    "JobConsole",
    "JobConsoleState",
    "JobError",
    "JobIssue",
    "JobStatus",
    "LineMatch",
    "MAX_JOB_CHARS",
    "MAX_PATTERN_CHARS",
    "MAX_WATCHDOGS",
    "MAX_YAML_NODES",
    "MachineInfo",
    "PLACEHOLDER_MACHINE",
    "Pattern",
    "Target",
    "Timeout",
    "TimeoutSpec",
    "Timeouts",
    "TimeoutsSpec",
    "WORKER_READY",
    "Watchdog",
    "WatchdogPatterns",
    "builtin_job",
    "job_variables",
    "peek_target",
    "render_job",
    "worker_main",
]
