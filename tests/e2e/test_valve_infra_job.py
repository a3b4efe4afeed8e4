"""A valve-infra job file, written to its schema (tests/unit/data/sample_job.yml: every part of §4.1),
runs unchanged on a Vivian DUT through the real ``valve-console job run`` and exits with its status."""

from __future__ import annotations

from pathlib import Path

from tests.e2e import test_jobs_e2e
from tests.e2e.test_jobs_e2e import JobRun, mac

jobfarm = test_jobs_e2e.jobfarm  # the fixture: four registered Vivian DUTs on the vPDU

SAMPLE = Path(__file__).resolve().parents[1] / "unit" / "data" / "sample_job.yml"
GPU_TAGS = ["amdgpu:gfxversion:gfx10", "amdgpu:codename:NAVI21"]


async def test_the_sample_valve_infra_job_runs_unchanged_and_passes(jobfarm):
    farm, http, tmp = jobfarm
    text = SAMPLE.read_text()
    # the job targets 52:54:00:11:22:04 with a NAVI21's tags: the operator tags Vivian's outlet-4 DUT so
    assert "52:54:00:11:22:04" in text and mac(4) == "52:54:00:11:22:04"
    r = await http.patch(f"/api/v1/machine/{mac(4)}/", json={"manual_tags": GPU_TAGS})
    assert r.status_code == 200, r.text
    run = await JobRun(farm, SAMPLE, "-j", "valve-infra-sample").start()
    assert await run.wait(30) == 0, run.err.decode(errors="replace")
    assert SAMPLE.read_text() == text
    console = run.out.decode(errors="replace")
    err = run.err.decode(errors="replace")
    # the DUT booted the start deployment: kernel command line and boot2container's container
    assert 'b2c.container="-ti --tls-verify=false docker://ci-gateway:8002/mesa' in console
    assert "+ b2c: running the container: -ti --tls-verify=false docker://ci-gateway:8002/" in console
    assert "amdgpu.gpu_recovery=1;amdgpu.lockup_timeout=10000" in console  # the ';' survived iPXE
    # the console patterns of the job did their work, its deqp watchdog included
    for matched in ("deqp.start", "deqp.reset", "deqp.stop", "job_success", "session_end"):
        assert f"Matched the following patterns: {matched}" in err or f", {matched}" in err, (matched, err)
    assert "machine_unfit_for_service" not in err and "Hit the timeout" not in err
    job = (await http.get("/api/v1/job/valve-infra-sample")).json()
    assert job["status"] == "PASS" and job["machine"] == mac(4)
    assert (await http.get(f"/api/v1/machine/{mac(4)}/")).json()["ready_for_service"] is True


async def test_the_sample_job_on_a_machine_without_its_gpu_is_refused_with_406(jobfarm):
    farm, http, tmp = jobfarm
    run = await JobRun(farm, SAMPLE).start()
    assert await run.wait(15) == 6
    assert "HTTP 406" in run.err.decode() and "amdgpu:codename:NAVI21" in run.err.decode()


async def test_a_templated_valve_infra_job_reboots_into_continue_and_uses_the_share(jobfarm):
    farm, http, tmp = jobfarm
    path = SAMPLE.parent / "valve_infra_share_job.yml"
    text = path.read_text()
    share = tmp / "share"
    share.mkdir()
    (share / "input.txt").write_text("42\n")
    run = await JobRun(farm, path, "-j", "templated", "-s", str(share)).start()
    assert await run.wait(30) == 0, run.err.decode(errors="replace")
    assert path.read_text() == text
    console = run.out.decode(errors="replace")
    err = run.err.decode(errors="replace")
    assert "Matched the following patterns: session_reboot" in err and "Boot cycle 1/2, go ahead!" in err
    # the second boot is the continue deployment, rendered for this machine and job
    assert "./install/deqp-runner.sh --resume" in console and "vivian.script=reboot" in console
    job = (await http.get("/api/v1/job/templated")).json()
    assert f"b2c.hostname=job-{job['machine'].replace(':', '-')}-templated" in console
    assert "docker://ci-gateway:8002/mesa" in console
    assert "Matched the following patterns: deqp.start" in err and "job_success" in err
    assert (share / "results.txt").read_text() == "vivian read input.txt: 42\n"
