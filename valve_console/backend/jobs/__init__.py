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

Public API
----------

Errors and enums
    ``JobError(ValueError)`` with ``.line`` (1-based, of the rendered job), ``.field`` (dotted path such as
    ``console_patterns.job_success.regex``), ``.message`` and ``.issues`` (every problem found, a list of
    ``JobIssue(line, field, message)``); ``str(err)`` is e.g.
    ``line 12: console_patterns.job_success.regex: invalid regex 'a(' (missing ), unterminated subpattern)``.
    ``JobStatus`` (IntEnum, also the client's exit code): PASS=0 WARN=1 COMPLETE=2 FAIL=3 INCOMPLETE=4
    UNKNOWN=5 SETUP_FAIL=6, ``JobStatus.from_str(name)`` (unknown → UNKNOWN).
    ``JobConsoleState`` (IntEnum, only moves forward): CREATED ACTIVE DUT_DONE TEAR_DOWN OVER.

Templating
    ``MachineInfo(mac_address, base_name, full_name, tags, ip_address, local_tty_device, ready_for_service)``,
    ``MachineInfo.from_json(machine_json)`` (the shape of ``MachineService.to_json``).
    ``job_variables(machine=None, env=None, variables=None, defaults=None) -> dict``: what a template sees
    (``defaults`` lowest):
    ``ready_for_service``, ``machine_id``, ``machine_tags``, ``local_tty_device``, ``machine`` (base_name,
    full_name, tags, ip_address, local_tty_device, ready_for_service), ``minio_url`` from ``MINIO_URL``, every
    ``EXECUTOR_JOB__<NAME>`` as ``<name>``, then ``variables`` (``minio_url``, ``job_bucket``,
    ``job_bucket_access_key``, ``job_bucket_secret_key``, ...) over all of these. ``env`` defaults to os.environ.
    ``render_job(text, machine=None, env=None, variables=None, *, undefined=None, defaults=None) -> str``:
    sandboxed Jinja2; without ``undefined`` an undefined variable is a ``JobError`` naming the line and the
    variable, with a list it renders empty as valve-infra's Jinja2 did and its name goes into the list.
    ``peek_target(text, env=None, variables=None) -> Target``: the target of a job not yet bound to a
    machine (machine variables undefined and rendering as empty), robust to Jinja outside quoted strings.

Schema (pydantic, unknown keys refused)
    ``Job`` (version, deadline, target, timeouts, console_patterns, deployment), ``Target(id, tags)``,
    ``TimeoutSpec``/``TimeoutsSpec``, ``Pattern`` (``.search(line: bytes) -> bool``), ``WatchdogPatterns``,
    ``ConsolePatterns``, ``Deployment`` (``start``, ``continue_`` alias ``continue``).
    ``Job.parse(text, machine=None, env=None, *, variables=None, defaults=None, target=None, now=None,
    enforce_deadline=True, strict=False)`` renders (``job.undefined_names``: what rendered empty) then loads
    (``machine=None`` uses ``PLACEHOLDER_MACHINE``: validation only).
    ``Job.load(rendered_text, *, target=None, now=None, enforce_deadline=True)`` loads YAML that is already
    rendered. ``target`` overrides the job's (the submission metadata's ``target``).
    ``job.rendered`` (the YAML text), ``job.deployment_for_boot(n) -> BootConfig`` (n = 0 for the first boot:
    ``start``; later boots: ``continue`` over ``start``), ``job.check_deadline(now=None)`` (raises ``JobError``),
    ``job.deadline_expired(now=None) -> bool``, ``job.make_timeouts(clock=time.monotonic, now=None) -> Timeouts``,
    ``job.make_console(timeouts=None, *, has_client=True, clock=None, max_line_length=...) -> JobConsole``.

Runtime
    ``Timeout(name, duration, retries=0, *, clock=time.monotonic, retryable=True)``: ``start(when=None)``,
    ``stop()``, ``reset(when=None)`` (re-base, starts it), ``is_started``, ``elapsed()``, ``remaining()``,
    ``has_expired(now=None)``, ``retry() -> bool`` (counts; True while another attempt is allowed).
    ``Timeouts(spec=None, *, clock=..., deadline=None)``: ``overall`` (never retries), ``infra_setup``,
    ``infra_teardown``, ``boot_cycle``, ``console_activity``, ``first_console_activity``, ``watchdogs``
    (name → Timeout), ``deadline`` (or None; started at creation, never retries); ``expired(now=None)``,
    ``start_boot()`` (§4.4 step 5), ``stop_boot()``, ``get(name)``, iteration.
    ``Watchdog(name, patterns, timeout)``: ``process_line(line) -> "<name>.start|reset|stop" | None``.
    ``JobConsole(patterns, timeouts=None, *, has_client=True, clock=None, max_line_length=16384)``:
    ``start_boot()``, ``feed(data) -> list[LineMatch]``, ``eof()``, ``advance(state)``, ``tear_down()``,
    ``close()``, ``job_status``, ``needs_reboot``, ``unfit_for_service``, ``session_ended``, ``state``,
    ``first_activity_at``, ``last_activity_at``; ``LineMatch(line, patterns).message`` is
    ``Matched the following patterns: ...``.

Parse worker
    ``worker_main(memory_bytes)``: the loop of a worker process (executor.JobParser starts it): requests
    ``(kind, args, cpu_seconds)`` (``peek``: peek_target, ``parse``: Job.parse) pickled on stdin, each under
    a CPU budget (RLIMIT_CPU), answers on stdout; the process under RLIMIT_DATA. A request over a limit is
    answered ``("limit", "the job template took more than 2 s of CPU to render (Jinja2)")`` and the worker
    exits. YAML composition stops after ``MAX_YAML_NODES`` nodes.

Built-in jobs (Sgt. Hartman)
    ``BUILTIN_TEMPLATES`` (``register``, ``bootloop``: Jinja2 text), ``BUILTIN_DEFAULTS`` (``registration_image``,
    ``mars_host``, ``ntp_peer``) and ``builtin_job(name, machine, *, default_kernel_url, default_initramfs_url,
    env=None, variables=None, now=None) -> Job``.
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
