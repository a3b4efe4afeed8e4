"""The executor through the API: a real Farm, a dummy PDU and fake DUTs played by the test."""

from __future__ import annotations

import asyncio
import base64
import json

import httpx

from tests.conftest import api_url, make_settings
from tests.jobs.conftest import end_being_stored, job_yaml, wait_job
from valve_console.backend.farm import Farm
from valve_console.drivers.pdu.base import PortState


async def submit(http, text, **extra):
    r = await http.post("/api/v1/jobs", json={"job": text, **extra})
    return r


async def test_a_passing_job_runs_and_ends_powered_off(jobfarm):
    farm, http, macs, duts = jobfarm
    sub = farm.bus.subscribe(["job", "machine"])
    r = await submit(http, job_yaml("pass", target=f"id: '{macs[2]}'"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "QUEUED" and body["position"] == 0 and body["machine"] == macs[2]
    job = await wait_job(http, body["id"])
    assert job["status"] == "PASS" and job["state"] == "done"
    assert farm.power.outlet_state("d1", "2") == PortState.OFF
    assert duts.boots[macs[2]] == ["pass"]
    console = (await http.get(f"/api/v1/job/{body['id']}/console")).text
    assert "Execution is over, pipeline status: 0" in console
    assert "SALAD.machine_id" in console
    events = sub.drain()
    states = [e.data["machine"]["state"] for e in events if e.type == "machine" and e.data["mac"] == macs[2]]
    assert "RUNNING" in states and states[-1] == "IDLE"
    # each state counts from when the machine entered it
    seen = [(e.data["machine"]["state"], e.data["machine"]["state_since"]) for e in events
            if e.type == "machine" and e.data["mac"] == macs[2]]
    running = [since for state, since in seen if state == "RUNNING"]
    assert len(set(running)) == 1 and seen[-1][0] == "IDLE" and seen[-1][1] > running[0]
    assert (await http.get(f"/api/v1/machine/{macs[2]}")).json()["state_since"] == seen[-1][1]
    statuses = [e.data["status"] for e in events if e.type == "job"]
    assert statuses[0] == "QUEUED" and "RUNNING" in statuses and statuses[-1] == "PASS"
    listed = (await http.get("/api/v1/jobs")).json()["jobs"]
    assert listed[0]["id"] == body["id"] and listed[0]["status"] == "PASS"
    # the outlet lock is gone again
    assert farm.power.pdus["d1"].locked_by == {}


async def test_a_failing_job_is_fail(jobfarm):
    farm, http, macs, duts = jobfarm
    r = await submit(http, job_yaml("fail"))
    job = await wait_job(http, r.json()["id"])
    assert job["status"] == "FAIL"


async def test_submission_errors_in_the_order_of_valve_infra(jobfarm):
    farm, http, macs, duts = jobfarm
    r = await submit(http, job_yaml(target="id: '02:00:00:00:09:09'"))
    assert r.status_code == 404, r.text
    r = await submit(http, job_yaml(target="tags: ['no-such-tag']"))
    assert r.status_code == 406 and "no-such-tag" in r.json()["error"]
    r = await submit(http, job_yaml(target=f"{{id: '{macs[0]}', tags: ['nope']}}"))
    assert r.status_code == 406
    await http.post(f"/api/v1/machine/{macs[0]}/retire")
    r = await submit(http, job_yaml(target=f"id: '{macs[0]}'"))
    assert r.status_code == 409 and "retired" in r.json()["error"]
    await http.patch(f"/api/v1/machine/{macs[1]}/", json={"ready_for_service": False})
    r = await submit(http, job_yaml(target=f"id: '{macs[1]}'"))
    assert r.status_code == 409 and "not ready for service" in r.json()["error"]
    bad = job_yaml().replace('job_success: {regex: "Execution', 'job_success: {regex: "(Execution')
    r = await submit(http, bad)
    assert r.status_code == 400
    assert "line 8" in r.json()["error"] and "console_patterns.job_success.regex" in r.json()["error"]
    r = await http.post("/api/v1/jobs", json={"job": job_yaml(), "bogus": 1})
    assert r.status_code == 400
    async with httpx.AsyncClient(base_url=api_url(farm)) as anonymous:
        assert (await anonymous.post("/api/v1/jobs", json={"job": job_yaml()})).status_code == 401


async def test_the_v1_multipart_form_is_accepted(jobfarm):
    farm, http, macs, duts = jobfarm
    meta = {"version": 1, "job_id": "form-1", "target": {"id": macs[3]}}
    files = {
        "metadata": (None, json.dumps(meta), "application/json"),
        "job": ("job.yml", job_yaml("pass"), "application/x-yaml"),
    }
    r = await http.post("/api/v1/jobs", files=files)
    # valve-infra's client builds its answer object from every key: exactly these two
    assert r.status_code == 200 and r.json() == {"version": 1, "error_msg": None}, r.text
    assert r.headers["location"] == "/api/v1/job/form-1"
    assert (await wait_job(http, "form-1"))["status"] == "PASS"
    # our client asks for the rich answer; the same id again is made unique, never a 409
    r = await http.post("/api/v1/jobs", files=files, headers={"X-Valve-Console-Client": "1"})
    assert r.status_code == 200, r.text
    assert r.json()["id"].startswith("form-1-") and r.json()["machine"] == macs[3] and r.json()["version"] == 1
    assert (await wait_job(http, r.json()["id"]))["status"] == "PASS"
    r = await http.post("/api/v1/jobs", files={"metadata": (None, "{}", "application/json"), "job": (None, "x")})
    assert r.status_code == 400 and r.json() == {
        "version": 1, "error_msg": "the metadata must be a JSON object with version 1 (got version None)"}


async def test_jobs_for_a_busy_machine_wait_in_a_fifo_queue(jobfarm):
    farm, http, macs, duts = jobfarm
    target = f"id: '{macs[0]}'"
    first = (await submit(http, job_yaml("hang", target=target))).json()
    await wait_job(http, first["id"], lambda j: j["status"] == "RUNNING")
    second = (await submit(http, job_yaml("pass", target=target))).json()
    third = (await submit(http, job_yaml("fail", target=target))).json()
    assert (second["position"], third["position"]) == (1, 2)
    assert farm.view.machine(macs[0])["state"] == "RUNNING"
    listed = {j["id"]: j for j in (await http.get("/api/v1/jobs")).json()["jobs"]}
    assert listed[third["id"]]["position"] == 2
    # cancel the queued third, then the running first: the second runs
    r = await http.delete(f"/api/v1/job/{third['id']}")
    assert r.status_code == 200 and r.json()["status"] == "INCOMPLETE" and r.json()["state"] == "cancelled"
    assert (await http.get(f"/api/v1/job/{second['id']}")).json()["position"] == 1
    r = await http.delete(f"/api/v1/job/{first['id']}")
    assert r.status_code == 200
    job = await wait_job(http, first["id"])
    assert job["status"] == "INCOMPLETE" and job["state"] == "cancelled"
    assert (await wait_job(http, second["id"]))["status"] == "PASS"
    assert (await http.delete(f"/api/v1/job/{second['id']}")).status_code == 409
    assert (await http.delete("/api/v1/job/nope")).status_code == 404


async def test_a_job_whose_end_is_being_stored_cannot_be_cancelled(jobfarm):
    """The status says PASS as soon as the job ends, before its row is stored: a cancel then is a 409,
    not a second end written over the first (CI once met that window)."""
    farm, http, macs, duts = jobfarm
    async with end_being_stored(farm) as held:
        job = (await submit(http, job_yaml("pass", target=f"id: '{macs[1]}'"))).json()
        await asyncio.wait_for(held.wait(), 30)
        assert (await http.get(f"/api/v1/job/{job['id']}")).json()["status"] == "PASS"
        r = await http.delete(f"/api/v1/job/{job['id']}")
        assert r.status_code == 409 and "over" in r.json()["error"]
    assert (await wait_job(http, job["id"]))["status"] == "PASS"


async def test_tags_spread_jobs_over_idle_machines(jobfarm):
    farm, http, macs, duts = jobfarm
    answers = [(await submit(http, job_yaml("pass"))).json() for _ in range(4)]
    assert sorted(a["machine"] for a in answers) == sorted(macs)
    assert all(a["position"] == 0 for a in answers)
    for a in answers:
        assert (await wait_job(http, a["id"]))["status"] == "PASS"


async def test_a_timeout_is_retried_with_the_continue_deployment(jobfarm):
    farm, http, macs, duts = jobfarm
    text = job_yaml(
        "hang",
        target=f"id: '{macs[1]}'",
        timeouts="overall: {seconds: 20}\n  console_activity: {seconds: 1, retries: 1}",
        cont="pass",
    )
    r = await submit(http, text)
    job = await wait_job(http, r.json()["id"])
    assert job["status"] == "PASS", job
    assert duts.boots[macs[1]] == ["hang", "pass"]


async def test_a_timeout_without_retries_aborts(jobfarm):
    farm, http, macs, duts = jobfarm
    text = job_yaml("hang", timeouts="overall: {seconds: 20}\n  console_activity: {seconds: 0.5}")
    job = await wait_job(http, (await submit(http, text)).json()["id"])
    assert job["status"] == "INCOMPLETE" and "console_activity" in job["result"]


async def test_a_reboot_request_boots_again(jobfarm):
    farm, http, macs, duts = jobfarm
    text = job_yaml(
        "reboot",
        target=f"id: '{macs[2]}'",
        timeouts="overall: {seconds: 20}\n  boot_cycle: {seconds: 10, retries: 2}",
        cont="pass",
    )
    job = await wait_job(http, (await submit(http, text)).json()["id"])
    assert job["status"] == "PASS"
    assert duts.boots[macs[2]] == ["reboot", "pass"]


async def test_the_event_stream_gives_console_ctrl_and_session_end(jobfarm):
    farm, http, macs, duts = jobfarm
    r = await submit(http, job_yaml("pass", target=f"id: '{macs[0]}'"))
    job_id = r.json()["id"]
    events: list[tuple[str, dict]] = []
    async with http.stream("GET", f"/api/v1/job/{job_id}/events", timeout=20) as stream:
        kind = None
        async for line in stream.aiter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[6:])))
                if kind == "session_end":
                    break
    kinds = [k for k, _ in events]
    assert kinds[-1] == "session_end" and events[-1][1]["status"] == "PASS"
    console = b"".join(base64.b85decode(d["data"]) for k, d in events if k == "job_io")
    assert b"It's now safe to turn off your computer" in console
    ctrl = [d["msg"] for k, d in events if k == "ctrl"]
    assert any("Power up the machine" in m for m in ctrl)
    assert any(m.startswith("+") and "Matched the following patterns: session_end" in m for m in ctrl)
    # a late reader gets the same, replayed
    async with http.stream("GET", f"/api/v1/job/{job_id}/events") as stream:
        text = (await stream.aread()).decode()
    assert "event: session_end" in text and "event: job_io" in text


async def test_the_boot_script_follows_the_job(jobfarm):
    farm, http, macs, duts = jobfarm
    async with httpx.AsyncClient(base_url=api_url(farm)) as anonymous:
        idle = (await anonymous.get(f"/boot/{macs[0]}/boot.ipxe", params={"platform": "efi"})).text
        assert idle.startswith("#!ipxe") and "register" in idle and "initrd=initrd" in idle
        unknown = (await anonymous.get("/boot/not-a-mac/boot.ipxe")).text
        assert "register" in unknown
        text = job_yaml("hang", target=f"id: '{macs[0]}'")
        job_id = (await submit(http, text)).json()["id"]
        await wait_job(http, job_id, lambda j: j["status"] == "RUNNING")
        for _ in range(100):
            script = (await anonymous.get(f"/boot/{macs[0]}/boot.ipxe", params={"platform": "pcbios"})).text
            if "vivian.script=hang" in script:
                break
            await asyncio.sleep(0.05)
        assert "kernel http://127.0.0.1/kernel vivian.script=hang" in script
        assert "initrd --name initrd http://127.0.0.1/initrd" in script
        await http.delete(f"/api/v1/job/{job_id}")
        await wait_job(http, job_id)
        assert "register" in (await anonymous.get(f"/boot/{macs[0]}/boot.ipxe")).text


async def test_input_reaches_the_dut(jobfarm):
    farm, http, macs, duts = jobfarm
    job_id = (await submit(http, job_yaml("hang", target=f"id: '{macs[3]}'"))).json()["id"]
    await wait_job(http, job_id, lambda j: j["status"] == "RUNNING")
    for _ in range(100):
        r = await http.post(f"/api/v1/job/{job_id}/input", json={"data": "ls\r"})
        if r.status_code == 200:
            break
        await asyncio.sleep(0.05)
    assert r.status_code == 200, r.text
    for _ in range(100):
        if duts.typed.get(macs[3], b"").endswith(b"ls\r"):
            break
        await asyncio.sleep(0.05)
    assert duts.typed[macs[3]].endswith(b"ls\r")
    await http.delete(f"/api/v1/job/{job_id}")
    await wait_job(http, job_id)
    assert (await http.post(f"/api/v1/job/{job_id}/input", json={"data": "x"})).status_code == 409


async def test_jobs_survive_a_restart_in_the_history(tmp_path):
    settings = make_settings(tmp_path / "data")
    farm = Farm(settings)
    await farm.start()
    try:
        await farm.power.add_pdu("d1", "dummy", {"ports": 1})
        async with httpx.AsyncClient(base_url=api_url(farm), headers={"Authorization": f"Bearer {farm.token}"}) as http:
            await http.post(
                "/api/v1/machine/",
                json={"base_name": "fake", "tags": ["t"], "mac_address": "02:00:00:00:02:01", "ip_address": "10.0.0.5"},
            )
            await http.patch(
                "/api/v1/machine/02:00:00:00:02:01/", json={"pdu": "d1", "pdu_port_id": "0", "ready_for_service": True}
            )
            job_id = (await submit(http, job_yaml("hang", target="tags: [t]"))).json()["id"]
            await wait_job(http, job_id, lambda j: j["status"] == "RUNNING")
            # simulate a crash: the database still says RUNNING
            farm.jobs._save = _no_save  # type: ignore[method-assign]
    finally:
        await farm.stop()
    farm = Farm(settings)
    await farm.start()
    try:
        async with httpx.AsyncClient(base_url=api_url(farm)) as http:
            job = (await http.get(f"/api/v1/job/{job_id}")).json()
            assert job["status"] == "INCOMPLETE" and job["state"] == "cancelled"
            assert "restarted" in job["result"]
            assert [j["id"] for j in (await http.get("/api/v1/jobs")).json()["jobs"]] == [job_id]
    finally:
        await farm.stop()


async def _no_save(job) -> None:
    return None


async def test_cancel_job_by_machine_and_bad_forms(jobfarm):
    farm, http, macs, duts = jobfarm
    idle = await http.post(f"/api/v1/machine/{macs[0]}/cancel_job")  # valve-infra: 400, in words
    assert idle.status_code == 400
    assert idle.json()["error"] == f"The machine {macs[0]} isn't running a job. Current state is IDLE"
    job_id = (await submit(http, job_yaml("hang", target=f"id: '{macs[0]}'"))).json()["id"]
    await wait_job(http, job_id, lambda j: j["status"] == "RUNNING")
    r = await http.post(f"/api/v1/machine/{macs[0]}/cancel_job")
    assert r.status_code == 200 and r.text == "Canceling job in machine 10.0.0.10\n"  # valve-infra's text
    assert (await wait_job(http, job_id))["state"] == "cancelled"
    r = await http.post("/api/v1/jobs", content=b"garbage", headers={"Content-Type": "multipart/form-data"})
    assert r.status_code == 400
    r = await http.post("/api/v1/jobs", content=b"[1]")
    assert r.status_code == 400
    r = await http.post("/api/v1/jobs", json={"job": job_yaml(), "target": {"id": 5}})
    assert r.status_code == 400


async def test_unreadable_yaml_is_a_400(jobfarm):
    farm, http, macs, duts = jobfarm
    for text in ["e\u0088\u00c0\ud8b8\udf85", "\x00", "target: [", ""]:
        body = json.dumps({"job": text}).encode()  # lone surrogates as \\u escapes
        r = await http.post("/api/v1/jobs", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 400, (text, r.text)
