"""valve-infra's released job clients, unchanged, against a real farm: the real peers we did not write.

- ``valve-gfx-ci.executor.client==0.0.6`` (PyPI, 2022-03): the ``executorctl`` of valve-infra 2022-09
  (default ``-e http://10.42.0.1/``, streamed multipart with requests-toolbelt).
- ``valve-gfx-ci.executor.client==0.0.4`` (PyPI, 2022-01-25): the client of the seed's valve-infra
  (multipart through ``requests.post(files=...)``).

Each is installed with pip into ``.cache/peers/`` (with the urllib3 of its time: requests-toolbelt 0.9.1
does not import with urllib3 2) and run as a process, as a GitLab trigger container ran it: on the
gateway itself, so without a token (the gateway trusts its own addresses).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.compat.test_v1_protocol import stop, the_job
from tests.conftest import ROOT, api_url, eventually
from tests.jobs.conftest import job_yaml, wait_job
from valve_console.drivers.pdu.base import PortState

PEERS = ROOT / ".cache" / "peers"
VERSIONS = {"0.0.6": ["urllib3<2"], "0.0.4": ["urllib3<2"]}


def install(version: str) -> Path:
    target = PEERS / f"executorctl-{version}"
    if (target / "valve_gfx_ci").is_dir():
        return target
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-warn-conflicts",
           "--target", str(target), f"valve-gfx-ci.executor.client=={version}", *VERSIONS[version]]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        pytest.skip(f"cannot install valve-gfx-ci.executor.client {version} from PyPI: {result.stderr[-300:]}")
    return target


@pytest.fixture(scope="module", params=sorted(VERSIONS, reverse=True))
def executorctl(request) -> list[str]:
    """The command line of one released client version."""
    return [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(install(request.param))!r}); "
            "from valve_gfx_ci.executor.client.__main__ import main; main()"]


async def start(executorctl: list[str], farm, tmp_path: Path, job: str, *args: str) -> asyncio.subprocess.Process:
    path = tmp_path / f"job-{len(list(tmp_path.glob('job-*')))}.yml"
    path.write_text(job)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VALVE_CONSOLE")}
    # its default URL ends with a slash, as ours does here: it posts to //api/v1/jobs
    return await asyncio.create_subprocess_exec(
        *executorctl, "-e", api_url(farm) + "/", "run", *args, str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL, env=env,
    )


async def run(executorctl, farm, tmp_path, job, *args, timeout=90.0) -> tuple[int, str, str]:
    proc = await start(executorctl, farm, tmp_path, job, *args)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


async def test_jobs_pass_and_fail_with_its_exit_codes(executorctl, jobfarm, tmp_path):
    farm, http, macs, duts = jobfarm
    code, out, err = await run(executorctl, farm, tmp_path, job_yaml("pass"), "-t", "gpu:fake", "-j", "ci-job")
    assert code == 0, out + err
    assert "+ job output 1" in out and "Execution is over, pipeline status: 0" in out
    assert "Matched the following patterns: session_end" in out  # its control lines, printed as they come
    code, out, err = await run(executorctl, farm, tmp_path, job_yaml("fail"), "-i", macs[2], "-j", "ci-job")
    assert code == 3, out + err
    ids = [j["id"] for j in (await http.get("/api/v1/jobs")).json()["jobs"]]
    assert "ci-job" in ids and any(i.startswith("ci-job-") for i in ids)  # the repeated -j, made unique


async def test_errors_are_printed_in_words(executorctl, jobfarm, tmp_path):
    farm, http, macs, duts = jobfarm
    code, out, err = await run(executorctl, farm, tmp_path, job_yaml("pass"), "-i", "52:54:00:99:99:99")
    assert code == 6, out + err  # SETUP_FAIL
    assert "Unknown machine ID '52:54:00:99:99:99'" in err and '"None"' not in err
    code, out, err = await run(executorctl, farm, tmp_path, job_yaml("pass"), "-t", "no:such:tag")
    assert code == 6 and "no machine has the tags ['no:such:tag']" in err


async def test_a_queued_job_runs_within_its_accept_window(executorctl, jobfarm, tmp_path):
    farm, http, macs, duts = jobfarm
    first = (await http.post("/api/v1/jobs", json={"job": job_yaml("hang", target=f"id: '{macs[0]}'")})).json()
    await wait_job(http, first["id"], lambda j: j["status"] == "RUNNING")
    client = await start(executorctl, farm, tmp_path, job_yaml("pass"), "-i", macs[0])
    queued = await the_job(http, lambda j: j["status"] == "QUEUED")
    await asyncio.sleep(6)  # past its 5 s wait for our connection
    assert client.returncode is None
    await http.delete(f"/api/v1/job/{first['id']}")
    out, err = await asyncio.wait_for(client.communicate(), 90)
    assert client.returncode == 0, (out + err).decode()
    assert f"({macs[0]}), 1 job(s) ahead" in out.decode() and f"The job is next on {macs[0]}" in out.decode()
    assert (await wait_job(http, queued["id"]))["status"] == "PASS"


async def test_its_share_directory_reaches_the_job(executorctl, jobfarm, tmp_path):
    farm, http, macs, duts = jobfarm
    share = tmp_path / "results"
    share.mkdir()
    (share / "input.txt").write_text("question\n")
    code, out, err = await run(executorctl, farm, tmp_path, job_yaml("pass"), "-i", macs[1], "-s", str(share))
    assert code == 0, out + err
    job = await the_job(http, lambda j: j["machine"] == macs[1] and j["status"] == "PASS")
    stored = farm.settings.data_dir / "jobs" / job["id"] / "share" / "input.txt"
    assert stored.read_text() == "question\n"


async def test_killing_it_cancels_the_job_and_powers_the_dut_off(executorctl, jobfarm, tmp_path):
    farm, http, macs, duts = jobfarm
    client = await start(executorctl, farm, tmp_path, job_yaml("hang", target=f"id: '{macs[3]}'"))
    job = await the_job(http, lambda j: j["status"] == "RUNNING" and j["machine"] == macs[3])
    await eventually(lambda: farm.power.outlet_state("d1", "3") == PortState.ON, "the DUT on")
    client.send_signal(signal.SIGKILL)
    await stop(client)
    ended = await wait_job(http, job["id"])
    assert ended["state"] == "cancelled" and "the client went away" in ended["result"]
    assert farm.power.outlet_state("d1", "3") == PortState.OFF
