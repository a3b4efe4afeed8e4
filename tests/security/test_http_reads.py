"""Issue 15, reproduction 7: share keys were public.

A running job's console carries its share URL with the key (the DUT's command line, the job's own
output). Console logs, job consoles and the event stream were open: anyone on the DUT network read the
key and replaced the job's results with an unauthenticated PUT. Those reads now need the operator
(token, unix socket or a trusted network), and a job's text is given to the operator only; what the
DUTs and valve-infra's dashboard read stays open and does not carry the key.
"""

from __future__ import annotations

import re

import httpx

from tests.conftest import api_url, eventually
from tests.jobs.conftest import http, jobfarm, wait_job  # noqa: F401 - fixtures
from tests.jobs.test_share import share_job, submit_with_share, tarball

SECRET_READS = (
    "/api/v1/console/{mac}/log",
    "/api/v1/console/{mac}/log?raw=true&start=0",
    "/api/v1/job/{job}/console",
    "/api/v1/job/{job}/console?raw=true",
    "/api/v1/log",
    "/api/v1/journal",
)
SECRET_STREAMS = (
    "/api/v1/events",
    "/api/v1/console/{mac}/stream?replay=true",
    "/api/v1/job/{job}/events",
)
OPEN_READS = (
    "/api/v1/machines",
    "/api/v1/machine/{mac}/",
    "/api/v1/pdus",
    "/api/v1/pdu/d1",
    "/api/v1/pdu/d1/port/0",
    "/api/v1/health",
    "/api/v1/jobs",
    "/api/v1/job/{job}",  # without its text
    "/api/v1/consoles",
)


async def test_console_and_job_reads_need_the_operator(jobfarm):  # noqa: F811 - the fixture imported above
    farm, http, macs, duts = jobfarm  # noqa: F811
    r = await submit_with_share(http, share_job("hang"), tarball(("results.txt", "file", b"the job's own\n")))
    assert r.status_code == 200, r.text
    job_id = r.json()["id"]
    job = await wait_job(http, job_id, lambda j: j["status"] == "RUNNING")
    mac = job["machine"]

    async def key_in_console() -> str | None:
        text = (await http.get(f"/api/v1/console/{mac}/log")).text
        found = re.search(r"share=\S+/share/([A-Za-z0-9_-]+)", text)
        return found.group(1) if found else None

    key = await eventually(key_in_console, "the share URL in the job's console")
    fill = {"mac": mac, "job": job_id}
    async with httpx.AsyncClient(base_url=api_url(farm), timeout=10) as dut:  # a DUT: no token
        for path in SECRET_READS:
            answer = await dut.get(path.format(**fill))
            assert answer.status_code == 401, (path, answer.status_code)
            assert key not in answer.text and "token" in answer.json()["error"]
            assert answer.headers["www-authenticate"] == "Bearer"
        for path in SECRET_STREAMS:
            async with dut.stream("GET", path.format(**fill)) as stream:
                assert stream.status_code == 401, path
                assert key not in (await stream.aread()).decode()
        for path in OPEN_READS:
            answer = await dut.get(path.format(**fill))
            assert answer.status_code == 200, (path, answer.text)
            assert key not in answer.text, path
        assert "job" not in (await dut.get(f"/api/v1/job/{job_id}")).json()
        # the reproduction's end: without the key the job's results cannot be replaced
        forged = await dut.put(f"/api/v1/job/{job_id}/share/{'A' * len(key)}/results.txt", content=b"forged\n")
        assert forged.status_code == 403
        # the DUT of the job, which has its key, still reads and writes its share
        own = await dut.put(f"/api/v1/job/{job_id}/share/{key}/out.txt", content=b"mine\n")
        assert own.status_code == 200, own.text
    share = farm.settings.data_dir / "jobs" / job_id / "share"
    assert (share / "results.txt").read_bytes() == b"the job's own\n"
    for path in SECRET_READS:  # the operator reads them all
        answer = await http.get(path.format(**fill))
        assert answer.status_code == 200, (path, answer.text)
    assert "job_share_url" in (await http.get(f"/api/v1/job/{job_id}")).json()["job"]
    assert (await http.delete(f"/api/v1/job/{job_id}")).status_code == 200
