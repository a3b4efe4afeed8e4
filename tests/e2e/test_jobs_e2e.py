"""Jobs end to end: Vivian DUTs that follow their boot config, and the real job client in a subprocess.

The farm runs in the test's loop (fixtures ``farm`` and ``vivian``); ``valve-console job run`` is a
child process whose exit code is the job status. Short timeouts keep the file well under 90 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import api_url
from tests.e2e.helpers import ROOT

TAGS = ["virtio:pciid:0x1af4:0x1050", "virtio:family:VIRTIO"]
OUTLETS = (1, 2, 3, 4)


def mac(outlet: int) -> str:
    return f"52:54:00:11:22:{outlet:02x}"


def job_yaml(script: str, *, target: str = "tags: ['virtio:family:VIRTIO']", timeouts: str = "", cont: str = "",
             patterns: str = "") -> str:
    """A job for Vivian DUTs: ``vivian.script=<script>``; ``patterns``: more console_patterns lines."""
    text = f"""version: 1
target:
  {target}
timeouts:
  overall: {{seconds: 30}}
{timeouts}console_patterns:
  session_end: {{regex: "It's now safe to turn off your computer"}}
  job_success: {{regex: "Execution is over, pipeline status: 0"}}
  session_reboot: {{regex: "vivian: reboot requested"}}
{patterns}deployment:
  start:
    kernel:
      url: http://127.0.0.1/kernel
      cmdline: vivian.script={script} console=ttyS1 SALAD.machine_id={{{{ machine_id }}}}
    initramfs:
      url: http://127.0.0.1/initrd
"""
    if cont:
        text += f"""  continue:
    kernel:
      cmdline: vivian.script={cont} SALAD.machine_id={{{{ machine_id }}}}
"""
    return text


@pytest.fixture
async def jobfarm(farm, vivian, tmp_path):
    """Four Vivian DUTs (outlets 1-4), registered, on their outlets and ready for service."""
    async with httpx.AsyncClient(base_url=api_url(farm), headers={"Authorization": f"Bearer {farm.token}"}) as http:
        for outlet in OUTLETS:
            reg = {
                "base_name": "virtio",
                "tags": TAGS,
                "mac_address": mac(outlet),
                "ip_address": f"10.42.0.{10 + outlet}",
            }
            assert (await http.post("/api/v1/machine/", json=reg)).status_code == 200
            patch = {"pdu": "vpdu1", "pdu_port_id": str(outlet), "ready_for_service": True, "pdu_off_delay": 0.2}
            r = await http.patch(f"/api/v1/machine/{mac(outlet)}/", json=patch)
            assert r.status_code == 200, r.text
        farm.jobs.drain_delay = 0.2
        yield farm, http, tmp_path


class JobRun:
    """``valve-console job run`` as a child process; stdout (console) and stderr (ctrl) collected."""

    def __init__(self, farm, path: Path, *args: str) -> None:
        self.cmd = [sys.executable, "-m", "valve_console.cli", "job", "run", str(path), "-e", api_url(farm), *args]
        self.env = {**os.environ, "VALVE_CONSOLE_TOKEN": farm.token}
        self.proc: asyncio.subprocess.Process | None = None
        self.out = b""
        self.err = b""

    async def start(self) -> "JobRun":
        self.proc = await asyncio.create_subprocess_exec(
            *self.cmd,
            cwd=ROOT,
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.gather(self._read("out"), self._read("err"))
        return self

    async def _read(self, which: str) -> None:
        stream = self.proc.stdout if which == "out" else self.proc.stderr
        while chunk := await stream.read(4096):
            setattr(self, which, getattr(self, which) + chunk)

    async def wait(self, timeout: float = 30.0) -> int:
        try:
            rc = await asyncio.wait_for(self.proc.wait(), timeout)
            await asyncio.wait_for(self._reader, 5)
            return rc
        except asyncio.TimeoutError:
            self.kill()
            raise AssertionError(f"job client still running: {self.err.decode(errors='replace')[-2000:]}") from None

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()


def write_job(tmp_path: Path, text: str) -> Path:
    path = tmp_path / f"job-{time.monotonic_ns()}.yml"
    path.write_text(text)
    return path


@contextlib.asynccontextmanager
async def clients(farm, tmp_path, *specs: tuple[str, tuple[str, ...]]):
    runs = []
    try:
        for text, args in specs:
            runs.append(await JobRun(farm, write_job(tmp_path, text), *args).start())
        yield runs
    finally:
        for run in runs:
            run.kill()
            if run.proc is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(run.proc.wait(), 5)


async def wait_status(http, job_id: str, status: str, timeout: float = 15.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = await http.get(f"/api/v1/job/{job_id}")
        if r.status_code == 200 and r.json()["status"] == status:
            return r.json()
        await asyncio.sleep(0.1)
    raise AssertionError(f"job {job_id} never reached {status}")


async def test_passing_and_failing_jobs_exit_with_their_status(jobfarm):
    farm, http, tmp = jobfarm
    async with clients(
        farm, tmp, (job_yaml("pass"), ("-i", mac(1), "--wait")), (job_yaml("fail"), ("-i", mac(2), "-j", "f1"))
    ) as (ok, bad):
        assert await ok.wait() == 0, ok.err.decode()
        assert await bad.wait() == 3, bad.err.decode()
    assert b"Execution is over, pipeline status: 0" in ok.out
    assert b"Command line: vivian.script=pass" in ok.out
    assert b"Matched the following patterns" in ok.err and b"Power up the machine" in ok.err
    assert (await http.get("/api/v1/job/f1")).json()["status"] == "FAIL"
    assert farm.power.outlet_state("vpdu1", "1").value == "OFF"


async def test_timeout_retry_reboot_and_garbage(jobfarm):
    farm, http, tmp = jobfarm
    hang = job_yaml(
        "hang", target=f"id: '{mac(1)}'", timeouts="  console_activity: {seconds: 2, retries: 1}\n", cont="pass"
    )
    reboot = job_yaml("reboot", target=f"id: '{mac(2)}'", timeouts="  boot_cycle: {seconds: 20, retries: 1}\n")
    garbage = job_yaml("garbage", target=f"id: '{mac(3)}'")
    async with clients(farm, tmp, (hang, ()), (reboot, ()), (garbage, ())) as (r1, r2, r3):
        assert await r1.wait() == 0, r1.err.decode()
        assert await r2.wait() == 0, r2.err.decode()
        assert await r3.wait() == 0, r3.err.decode()
    assert b"Hit the timeout console_activity --> Try again!" in r1.err
    assert r1.out.count(b"Command line:") == 2
    assert b"Boot cycle 1/1, go ahead!" in r2.err
    assert b"vivian: reboot requested" in r2.out
    assert b"\x00\x01\x02" in r3.out  # raw bytes reach stdout untouched


async def test_cancel_a_running_job_and_a_queue_on_one_dut(jobfarm):
    farm, http, tmp = jobfarm
    target = f"id: '{mac(4)}'"
    async with clients(farm, tmp, (job_yaml("hang", target=target), ("-j", "hang1"))) as (first,):
        await wait_status(http, "hang1", "RUNNING")
        second = await JobRun(farm, write_job(tmp, job_yaml("pass", target=target)), "-j", "next1").start()
        queued = await wait_status(http, "next1", "QUEUED")
        assert queued["position"] == 1
        assert (await http.get(f"/api/v1/machine/{mac(4)}/")).json()["state"] == "RUNNING"
        await asyncio.sleep(1.0)
        assert (await http.delete("/api/v1/job/hang1")).status_code == 200
        assert await first.wait() == 4, first.err.decode()
        try:
            assert await second.wait() == 0, second.err.decode()
        finally:
            second.kill()
    assert b"position 1" in second.err
    job = (await http.get("/api/v1/job/hang1")).json()
    assert job["state"] == "cancelled"


async def test_four_tagged_jobs_run_in_parallel_one_per_dut(jobfarm):
    farm, http, tmp = jobfarm
    text = job_yaml("pass", cont="pass").replace(
        "vivian.script=pass console", "vivian.script=pass vivian.delay=1 console"
    )
    started = time.monotonic()
    async with clients(farm, tmp, *[(text, ("-t", "virtio:family:VIRTIO", "-j", f"par{i}")) for i in range(4)]) as runs:
        for run in runs:
            assert await run.wait() == 0, run.err.decode()
    elapsed = time.monotonic() - started
    jobs = [(await http.get(f"/api/v1/job/par{i}")).json() for i in range(4)]
    assert sorted(j["machine"] for j in jobs) == sorted(mac(o) for o in OUTLETS)
    # in parallel: the runs overlap in time
    assert max(j["started_at"] for j in jobs) < min(j["ended_at"] for j in jobs)
    assert elapsed < 25


async def test_a_refused_job_is_setup_fail(jobfarm):
    farm, http, tmp = jobfarm
    async with clients(
        farm,
        tmp,
        ("version: 1\ntarget: {tags: ['virtio:family:VIRTIO']}\nconsole_patterns: {}\n", ()),
        (job_yaml("pass", target="tags: ['nope']"), ()),
    ) as (bad, unknown):
        assert await bad.wait() == 6
        assert await unknown.wait() == 6
    assert b"refused" in bad.err and b"line" in bad.err
    assert b"406" in unknown.err
    run = JobRun(farm, tmp / "missing.yml")
    await run.start()
    assert await run.wait() == 6


async def test_a_tty_types_into_the_dut_and_ctrl_a_ctrl_c_cancels(jobfarm):
    import pty

    farm, http, tmp = jobfarm
    master, slave = pty.openpty()
    run = JobRun(farm, write_job(tmp, job_yaml("hang", target=f"id: '{mac(3)}'")), "-j", "tty1")
    try:
        run.proc = await asyncio.create_subprocess_exec(
            *run.cmd, cwd=ROOT, env=run.env, stdin=slave, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        run._reader = asyncio.gather(run._read("out"), run._read("err"))
        deadline = time.monotonic() + 15
        while b"/ # " not in run.out and time.monotonic() < deadline:  # the DUT's shell prompt
            await asyncio.sleep(0.1)
        assert b"/ # " in run.out, run.err.decode()
        os.write(master, b"echo vivian-typed\r\x03")  # plain Ctrl-C goes to the DUT
        while run.out.count(b"vivian-typed") < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert run.out.count(b"vivian-typed") >= 2
        os.write(master, b"\x01\x03")
        assert await run.wait() == 4, run.err.decode()
        assert (await wait_status(http, "tty1", "INCOMPLETE"))["state"] == "cancelled"
    finally:
        run.kill()
        os.close(master)
        os.close(slave)
