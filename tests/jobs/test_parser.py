"""JobParser: job templates rendered and parsed in reused worker processes, under a CPU budget, a
memory limit and a wall-clock limit, with a bounded wait for a worker (real processes, no fakes)."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from valve_console.backend.errors import FarmError
from valve_console.backend.jobs.parser import JobParser
from valve_console.backend.jobs import Job, JobError, MachineInfo, Target

from .conftest import job_yaml

MACHINE = MachineInfo(mac_address="02:00:00:00:01:00", base_name="fake", full_name="test-fake-1")
LOOPS = "{% for i in range(3000) %}{% for j in range(3000) %}{% set x = i * j %}{% endfor %}{% endfor %}\n"


@pytest.fixture
async def parser():
    p = JobParser()
    try:
        yield p
    finally:
        await p.close()


async def test_a_job_is_parsed_like_in_process_by_a_reused_worker(parser: JobParser) -> None:
    text = job_yaml()
    assert await parser.peek_target(text) == Target(tags=["gpu:fake"])
    job = await parser.parse(text, MACHINE, variables={"job_bucket": "b"})
    local = Job.parse(text, MACHINE, variables={"job_bucket": "b"})
    assert job.rendered == local.rendered and job.line_of("deployment") == local.line_of("deployment")
    assert job.console_patterns.session_end.search(b"It's now safe to turn off your computer\n")
    assert job.deployment_for_boot(0).cmdline.endswith("SALAD.machine_id=02:00:00:00:01:00")
    for _ in range(3):
        await parser.parse(text, MACHINE)
    assert parser.spawned == 1 and parser.requests == 5


async def test_job_errors_come_back_with_their_lines_and_fields(parser: JobParser) -> None:
    with pytest.raises(JobError) as bad:
        await parser.parse(job_yaml().replace("session_end:", "session_end_typo:"), MACHINE)
    assert bad.value.field == "console_patterns.session_end_typo" and bad.value.line == 7
    with pytest.raises(JobError, match="is undefined"):
        await parser.parse(job_yaml().replace("{{ machine_id }}", "{{ nope }}"), MACHINE, strict=True)


async def test_the_cpu_budget_refuses_a_template_and_a_new_worker_takes_over(parser: JobParser) -> None:
    with pytest.raises(JobError, match=r"took more than 2 s of CPU to render \(Jinja2\)"):
        await parser.peek_target(job_yaml() + LOOPS)
    assert (await parser.peek_target(job_yaml())).tags == ["gpu:fake"]
    assert parser.spawned == 2  # the worker over its budget exited


async def test_the_wall_clock_limit_stops_a_worker() -> None:
    parser = JobParser(cpu_seconds=30, wall_seconds=0.5)
    try:
        with pytest.raises(JobError, match=r"took more than 0.5 s to render and parse \(its worker was stopped\)"):
            await parser.peek_target(job_yaml() + LOOPS)
        assert (await parser.peek_target(job_yaml())).tags == ["gpu:fake"]
    finally:
        await parser.close()


async def test_too_many_waiting_requests_are_refused() -> None:
    parser = JobParser(workers=1, max_waiting=1)
    try:
        heavy = [asyncio.ensure_future(parser.peek_target(job_yaml() + LOOPS)) for _ in range(2)]
        await asyncio.sleep(0.1)  # one on the worker, one waiting
        with pytest.raises(FarmError) as busy:
            await parser.peek_target(job_yaml())
        assert busy.value.status == 503 and "the job parser is busy" in busy.value.message
        results = await asyncio.gather(*heavy, return_exceptions=True)
        assert all(isinstance(r, JobError) for r in results), results
    finally:
        await parser.close()


async def test_a_worker_that_died_while_idle_is_replaced(parser: JobParser) -> None:
    await parser.peek_target(job_yaml())
    (worker,) = parser._idle
    os.kill(worker.proc.pid, signal.SIGKILL)
    await worker.proc.wait()
    assert (await parser.peek_target(job_yaml())).tags == ["gpu:fake"]
    assert parser.spawned == 2


async def test_console_patterns_are_bounded(parser: JobParser) -> None:
    """The backend compiles a job's regexes again when it takes the parsed job: their size is bounded."""
    long = job_yaml().replace("It's now safe to turn off your computer", "x" * 4097)
    with pytest.raises(JobError, match="the regex is longer than 4096 characters") as refused:
        await parser.parse(long, MACHINE)
    assert refused.value.field == "console_patterns.session_end.regex"
    dogs = "".join(f"    w{i}: {{start: {{regex: a}}, reset: {{regex: b}}, stop: {{regex: c}}}}\n" for i in range(33))
    many = job_yaml().replace("console_patterns:\n", "console_patterns:\n  watchdogs:\n" + dogs)
    with pytest.raises(JobError, match="more than 32 watchdogs"):
        await parser.parse(many, MACHINE)
