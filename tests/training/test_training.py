"""Sgt. Hartman with Vivian DUTs: a real Farm, real vPDUs, DUT processes following their boot config."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import api_url
from tests.e2e.test_jobs_e2e import job_yaml
from tests.training.conftest import RETRY, add_machine, mac, machine, wait_machine

UNFIT = '  machine_unfit_for_service: {regex: "machine unfit for service"}\n'


def user_job(machine_mac: str, script: str) -> str:
    return job_yaml(script, target=f"id: '{machine_mac}'", patterns=UNFIT)


def trained(m: dict) -> bool:
    return m["ready_for_service"] and (m["training"] or {}).get("state") == "qualified"


async def test_a_dut_trains_to_ready(tfarm, vpdu, http):
    sub = tfarm.bus.subscribe(["machine", "job"])
    m = await add_machine(http, 1)
    assert m["state"] == "TRAINING" and m["ready_for_service"] is False
    assert m["training"]["state"] == "registering" and m["training"]["loops"] == 2
    assert m["training"]["reason"] == "a new machine"
    # a user job for a machine in training is refused, and says why
    r = await http.post("/api/v1/jobs", json={"job": user_job(mac(1), "pass")})
    assert r.status_code == 409 and "in training" in r.json()["error"], r.text
    m = await wait_machine(http, 1, trained, "qualified")
    t = m["training"]
    assert m["state"] == "IDLE" and t["passes"] == 2 and t["failures"] == [] and t["attempt"] == 0
    assert [r["loop"] for r in t["results"]] == [0, 1, 2]
    assert all(r["status"] == "PASS" for r in t["results"])
    jobs = {j["id"]: j for j in (await http.get("/api/v1/jobs")).json()["jobs"]}
    kinds = [jobs[r["job"]]["training"] for r in t["results"]]
    assert kinds == ["register", "bootloop", "bootloop"]
    console = (await http.get(f"/api/v1/job/{t['results'][1]['job']}/console")).text
    assert "machine_registration check" in console and "No differences found!" in console
    # progress went through n/N and the machine state said TRAINING while it trained
    events = [e.data for e in sub.drain() if e.type == "machine" and e.data["mac"] == mac(1)]
    progress = [(e["machine"]["state"], (e["machine"]["training"] or {}).get("loop")) for e in events]
    assert ("TRAINING", 1) in progress and ("TRAINING", 2) in progress
    assert progress[-1][0] == "IDLE"
    # now it takes user jobs
    r = await http.post("/api/v1/jobs", json={"job": user_job(mac(1), "pass")})
    assert r.status_code == 200, r.text


async def test_a_flaky_dut_does_not_qualify_and_retraining_backs_off(tfarm, flaky_vpdu, http):
    await add_machine(http, 2, pdu="flaky")

    def failed(attempt: int):
        return lambda m: (m["training"] or {}).get("attempt") == attempt and m["training"]["state"] == "cooldown"

    m = await wait_machine(http, 2, failed(1), "first failed training")
    t = m["training"]
    assert m["ready_for_service"] is False and m["state"] == "TRAINING"
    # check 1 passed, check 2 failed: with 2 of 2 needed it stops there and lists the failure
    assert [(r["loop"], r["status"]) for r in t["results"]] == [(0, "PASS"), (1, "PASS"), (2, "FAIL")]
    assert [f["loop"] for f in t["failures"]] == [2] and t["failures"][0]["job"]
    console = (await http.get(f"/api/v1/job/{t['failures'][0]['job']}/console")).text
    assert "flaky DUT" in console and "pipeline status: 1" in console
    first_delay = t["next_attempt_at"] - t["updated_at"]
    assert first_delay == pytest.approx(RETRY, abs=0.05)
    # a user job is refused with the reason
    r = await http.post("/api/v1/jobs", json={"job": user_job(mac(2), "pass")})
    assert r.status_code == 409 and "training failed" in r.json()["error"], r.text
    # it trains again after the back-off, fails again, and waits twice as long
    m = await wait_machine(http, 2, failed(2), "second failed training")
    t = m["training"]
    assert t["reason"].startswith("retry 1")
    assert t["next_attempt_at"] - t["updated_at"] == pytest.approx(2 * RETRY, abs=0.05)
    m = await wait_machine(http, 2, failed(3), "third failed training")
    t = m["training"]
    assert t["next_attempt_at"] - t["updated_at"] == pytest.approx(2 * RETRY, abs=0.05)  # capped
    assert m["ready_for_service"] is False


async def test_unfit_for_service_sends_a_machine_back_to_training(tfarm, vpdu, http):
    await add_machine(http, 3)
    await wait_machine(http, 3, trained, "qualified")
    r = await http.post("/api/v1/jobs", json={"job": user_job(mac(3), "unfit")})
    assert r.status_code == 200, r.text
    job_id = r.json()["id"]
    m = await wait_machine(http, 3, lambda m: m["state"] == "TRAINING", "back to training")
    assert m["ready_for_service"] is False
    assert m["training"]["reason"] == f"unfit for service (job {job_id})"
    job = (await http.get(f"/api/v1/job/{job_id}")).json()
    assert job["status"] == "INCOMPLETE" and "unfit for service" in job["result"], job
    # the new training qualifies it again
    m = await wait_machine(http, 3, trained, "qualified again")
    assert m["state"] == "IDLE"


async def test_a_job_that_only_defines_the_unfit_pattern_keeps_the_machine(tfarm, vpdu, http):
    await add_machine(http, 4, ready_for_service=True)  # ticking "ready for service" skips training
    m = await machine(http, 4)
    assert m["state"] == "IDLE" and m["training"] is None
    r = await http.post("/api/v1/jobs", json={"job": user_job(mac(4), "pass")})
    job_id = r.json()["id"]
    m = await wait_machine(http, 4, lambda m: m["state"] == "IDLE" and
                           tfarm.jobs.jobs[job_id].done.is_set(), "job done")
    assert (await http.get(f"/api/v1/job/{job_id}")).json()["status"] == "PASS"
    assert m["ready_for_service"] is True and m["training"] is None


async def test_start_stop_skip_through_the_api(tfarm, vpdu, http):
    await add_machine(http, 5)
    base = f"/api/v1/machine/{mac(5)}/training"
    m = await wait_machine(http, 5, lambda m: m["training"]["loop"] == 1 and m["training"]["job"], "loop 1 running")
    loop_job = m["training"]["job"]
    r = await http.post(f"{base}/stop")
    assert r.status_code == 200, r.text
    m = r.json()
    assert m["training"]["state"] == "stopped" and m["state"] == "NOT_READY" and not m["ready_for_service"]
    r = await http.post(f"{base}/stop")
    assert r.status_code == 409 and "not training (stopped)" in r.json()["error"]
    r = await http.post("/api/v1/jobs", json={"job": user_job(mac(5), "pass")})
    assert r.status_code == 409 and "training stopped" in r.json()["error"]
    # the training job that ran was cancelled, and nothing more is queued on the machine
    await wait_machine(http, 5, lambda m: not tfarm.jobs.running.get(mac(5)), "the cancelled job ended")
    job = (await http.get(f"/api/v1/job/{loop_job}")).json()
    assert job["training"] == "bootloop" and job["status"] == "INCOMPLETE" and job["state"] == "cancelled", job
    assert not tfarm.jobs.queues.get(mac(5))
    # start: it trains (and qualifies) again
    r = await http.post(f"{base}/start")
    assert r.status_code == 200 and r.json()["state"] == "TRAINING"
    assert r.json()["training"]["reason"] == "started by the operator"
    r = await http.post(f"{base}/start")
    assert r.status_code == 409 and "already training" in r.json()["error"]
    # skip: ready at once, logged
    r = await http.post(f"{base}/skip")
    assert r.status_code == 200, r.text
    m = r.json()
    assert m["ready_for_service"] and m["training"]["state"] == "skipped" and m["state"] == "IDLE"
    assert any("skipped by the operator" in e["message"] for e in (await http.get("/api/v1/log")).json()["entries"])
    r = await http.post(f"{base}/skip")
    assert r.status_code == 409 and "already ready" in r.json()["error"]
    # start on a ready machine retrains it
    r = await http.post(f"{base}/start")
    assert r.status_code == 200 and r.json()["ready_for_service"] is False and r.json()["state"] == "TRAINING"
    await wait_machine(http, 5, trained, "qualified")
    # ticking "ready for service" while it trains is a skip
    r = await http.post(f"{base}/start")
    assert r.status_code == 200
    r = await http.patch(f"/api/v1/machine/{mac(5)}/", json={"ready_for_service": True})
    assert r.json()["training"]["state"] == "skipped" and r.json()["state"] == "IDLE"
    # errors in words
    r = await http.post(f"{base}/dance")
    assert r.status_code == 400 and "error" in r.json()
    r = await http.post("/api/v1/machine/52:54:00:99:99:99/training/start")
    assert r.status_code == 404 and "error" in r.json()
    await http.post(f"/api/v1/machine/{mac(5)}/retire")
    r = await http.post(f"{base}/start")
    assert r.status_code == 409 and "retired" in r.json()["error"]


async def test_per_machine_loop_override(tfarm, vpdu, http):
    reg = await add_machine(http, 6, training_loops=3, training_qualify=3)
    assert (reg["training_loops"], reg["training_qualify"]) == (3, 3)
    assert reg["training"]["loops"] == 3 and reg["training"]["qualify"] == 3
    m = await wait_machine(http, 6, trained, "qualified")
    assert [r["loop"] for r in m["training"]["results"]] == [0, 1, 2, 3]
    r = await http.patch(f"/api/v1/machine/{mac(6)}/", json={"training_qualify": 4})
    assert r.status_code == 400 and "cannot be more than training_loops (3)" in r.json()["error"]
    r = await http.patch(f"/api/v1/machine/{mac(6)}/", json={"training_loops": 0})
    assert r.status_code == 400 and "training_loops" in r.json()["error"]
    r = await http.patch(f"/api/v1/machine/{mac(6)}/", json={"training_loops": None, "training_qualify": None})
    assert r.status_code == 200 and r.json()["training_loops"] is None
    assert (await machine(http, 6))["training_loops"] is None


async def test_training_survives_a_gateway_restart(tmp_path):
    """The Training row is stored: a qualified machine keeps its results; a machine caught mid-training
    trains again from the registration after the restart (the stale training job ends INCOMPLETE)."""
    from tests.conftest import make_settings
    from tests.training.conftest import add_vpdu
    from valve_console.backend.farm import Farm

    settings = make_settings(tmp_path / "data", training=True, training_loops=2, training_qualify=2,
                             job_console_drain=0.05)
    farm = Farm(settings)
    await farm.start()
    vpdus = []
    try:
        vpdus.append(await add_vpdu(farm, tmp_path, "vpdu1"))
        vpdus.append(await add_vpdu(farm, tmp_path, "stuck", "--no-boot-config"))
        async with httpx.AsyncClient(base_url=api_url(farm), timeout=10,
                                     headers={"Authorization": f"Bearer {farm.token}"}) as http:
            await add_machine(http, 1)
            await add_machine(http, 2, pdu="stuck")
            before = await wait_machine(http, 1, trained, "qualified")
            stuck = await wait_machine(http, 2, lambda m: m["training"]["job"] and m["training"]["loop"] == 1,
                                       "stuck in loop 1")
    finally:
        await farm.stop()
    farm = Farm(settings)
    await farm.start()
    try:
        async with httpx.AsyncClient(base_url=api_url(farm), timeout=10,
                                     headers={"Authorization": f"Bearer {farm.token}"}) as http:
            m = await machine(http, 1)
            assert m["state"] == "IDLE" and m["training"]["results"] == before["training"]["results"]
            assert m["training"]["state"] == "qualified"
            m = await wait_machine(http, 2, lambda m: m["training"]["state"] == "registering", "a new run")
            assert m["state"] == "TRAINING" and m["training"]["reason"] == "a new machine"
            old = (await http.get(f"/api/v1/job/{stuck['training']['job']}")).json()
            assert old["status"] == "INCOMPLETE" and old["training"] == "bootloop", old
    finally:
        await farm.stop()
        for vpdu in vpdus:
            await vpdu.stop()


async def test_a_machine_in_training_is_removed_only_once_stopped(tfarm, vpdu, http):
    await add_machine(http, 6)
    await wait_machine(http, 6, lambda m: m["state"] == "TRAINING", "training")
    r = await http.delete(f"/api/v1/machine/{mac(6)}/")
    assert r.status_code == 409 and "stop its training first" in r.json()["error"], r.text
    assert (await http.get(f"/api/v1/machine/{mac(6)}/")).status_code == 200  # nothing lost
    assert (await http.post(f"/api/v1/machine/{mac(6)}/training/stop")).status_code == 200
    await wait_machine(http, 6, lambda m: not tfarm.jobs.running.get(mac(6)), "the cancelled job ended")
    r = await http.delete(f"/api/v1/machine/{mac(6)}/")
    assert r.status_code == 200, r.text
    assert mac(6) not in (await http.get("/api/v1/machines")).json()["machines"]
    assert mac(6) not in tfarm.training.rows
    # it registers again as a new machine, and trains from the start
    m = await add_machine(http, 6)
    assert m["state"] == "TRAINING" and m["training"]["reason"] == "a new machine"
