"""The job share end to end: ``valve-console job run -s DIR`` (the real CLI) sends DIR with the job, a
Vivian DUT reads a file of it and writes its results over HTTP with its job's key, and the client
unpacks the share into DIR when the job ends."""

from __future__ import annotations

import asyncio

import httpx

from tests.e2e import test_jobs_e2e
from tests.e2e.test_jobs_e2e import JobRun, mac, write_job

jobfarm = test_jobs_e2e.jobfarm  # the fixture: four registered Vivian DUTs on the vPDU

SHARE_JOB = """version: 1
target:
  id: '{mac}'
timeouts:
  overall: {{seconds: 30}}
console_patterns:
  session_end: {{regex: "It's now safe to turn off your computer"}}
  job_success: {{regex: "Execution is over, pipeline status: 0"}}
deployment:
  start:
    kernel:
      url: http://127.0.0.1/kernel
      cmdline:
        - b2c.container="-ti docker://registry.example/results-maker:1 ./run.sh"
        - vivian.share={{{{ job_share_url }}}}
        - vivian.share_echo=input.txt:results.txt
        - vivian.share_put=status.txt:all_green
        - b2c.hostname={{{{ job_bucket }}}}
        - SALAD.machine_id={{{{ machine_id }}}}
"""


async def test_share_round_trip_through_the_cli(jobfarm):
    farm, http, tmp = jobfarm
    share = tmp / "share"
    share.mkdir()
    (share / "input.txt").write_text("the question\n")
    (share / "mine.txt").write_text("left alone\n")
    run = await JobRun(farm, write_job(tmp, SHARE_JOB.format(mac=mac(2))), "-s", str(share), "-j", "share-1").start()
    assert await run.wait(30) == 0, run.err.decode(errors="replace")
    console = run.out.decode(errors="replace")
    assert "+ vivian: share GET input.txt: 13 bytes" in console
    assert "+ vivian: share PUT results.txt: HTTP 200" in console
    assert (share / "results.txt").read_text() == "vivian read input.txt: the question\n"
    assert (share / "status.txt").read_text() == "all green"
    assert (share / "input.txt").read_text() == "the question\n"
    assert (share / "mine.txt").read_text() == "left alone\n"
    assert "the job share" in run.err.decode() and str(share) in run.err.decode()
    # the key stops working with the job
    key_url = next(w for w in console.split() if w.startswith("vivian.share=")).split("=", 1)[1]
    async with httpx.AsyncClient() as dut:
        late = await dut.get(f"{key_url}/input.txt")
        assert late.status_code == 409 and "only while it runs" in late.json()["error"]


async def test_a_missing_share_dir_is_created_and_a_cancelled_job_gives_nothing_back(jobfarm):
    farm, http, tmp = jobfarm
    share = tmp / "new" / "share"
    text = SHARE_JOB.format(mac=mac(3)).replace("- vivian.share=", "- vivian.script=hang\n        - vivian.share=")
    run = await JobRun(farm, write_job(tmp, text), "-s", str(share), "-j", "share-2").start()
    for _ in range(300):
        r = await http.get("/api/v1/job/share-2")
        if r.status_code == 200 and r.json()["status"] == "RUNNING":
            break
        await asyncio.sleep(0.05)
    assert share.is_dir() and list(share.iterdir()) == []
    assert (await http.delete("/api/v1/job/share-2")).status_code == 200
    assert await run.wait(20) == 4
    assert list(share.iterdir()) == []
    assert "not given back" in run.err.decode() and "cancelled" in run.err.decode()
