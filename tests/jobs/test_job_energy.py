"""A job's energy (issue 18): what its machine's metered outlet drew from the job taking it to its end, in the
job's JSON and its stored row (so after a restart too); null on an outlet without a meter."""

from __future__ import annotations

from typing import AsyncIterator

import pytest

from tests.conftest import running_farm
from tests.jobs.conftest import TAGS, FakeDuts, job_yaml, mac_of, wait_job
from valve_console.backend.models import JobRow


@pytest.fixture
async def meterfarm(farm, http) -> AsyncIterator[tuple]:
    farm.power.sample_interval = 0.05
    await farm.power.add_pdu("d1", "dummy", {"ports": 2, "meter": True})
    farm.power.pdus["d1"].driver.set_power("1", None, metered=False)
    macs = [mac_of(i) for i in range(2)]
    for i, mac in enumerate(macs):
        r = await http.post("/api/v1/machine/", json={"base_name": "fake", "tags": TAGS, "mac_address": mac,
                                                      "ip_address": f"10.0.0.{i + 10}"})
        assert r.status_code == 200, r.text
        r = await http.patch(f"/api/v1/machine/{mac}/", json={"pdu": "d1", "pdu_port_id": str(i),
                                                              "ready_for_service": True})
        assert r.status_code == 200, r.text
    duts = FakeDuts(farm)
    duts.start(macs)
    try:
        yield farm, http, macs
    finally:
        await duts.stop()


async def test_a_job_on_a_metered_outlet_stores_its_energy(meterfarm):
    farm, http, macs = meterfarm
    r = await http.post("/api/v1/jobs", json={"job": job_yaml("pass", target=f"id: '{macs[0]}'")})
    assert r.status_code == 200, r.text
    job = await wait_job(http, r.json()["id"])
    assert job["status"] == "PASS"
    duration = job["ended_at"] - job["started_at"]
    assert 0 < job["energy_j"] <= 42.0 * (duration + 1)  # W x dt of the dummy's 42 W while ON
    row = await farm.store.run(lambda s: s.get(JobRow, job["id"]))
    assert row.energy_j == job["energy_j"]
    # Unmetered outlet: no energy, never an invented zero
    r = await http.post("/api/v1/jobs", json={"job": job_yaml("pass", target=f"id: '{macs[1]}'")})
    other = await wait_job(http, r.json()["id"])
    assert other["status"] == "PASS" and other["energy_j"] is None
    # Across a restart: from the stored row
    settings = farm.settings
    await farm.stop()
    async with running_farm(settings) as again:
        assert again.jobs.job_json(again.jobs.get(job["id"]))["energy_j"] == job["energy_j"]
