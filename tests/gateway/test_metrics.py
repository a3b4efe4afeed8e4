"""GET /metrics: Prometheus text format 0.0.4, parsed with prometheus-client's own parser, and the
figures move when the farm does (a real backend, the real vPDU and its simulated DUT processes)."""

from __future__ import annotations


import types

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlmodel import Session

from tests.conftest import api_url, eventually
from tests.gitlab import conftest as gitlab_conftest
from tests.gitlab.conftest import add_instance, add_machine, mac_of
from tests.gitlab.fake_gitlab import USER_TOKEN
from tests.jobs import conftest as jobs_conftest
from tests.jobs.conftest import job_yaml, wait_job
from valve_console.backend import metrics as metrics_mod
from valve_console.backend import power as power_mod
from valve_console.backend.metrics import Exposition, PduCommandStats
from valve_console.backend.models import GitlabRunner

http = jobs_conftest.http  # the job tests' fixtures: 4 ready machines on a dummy PDU, played by fake DUTs
jobfarm = jobs_conftest.jobfarm
fake = gitlab_conftest.fake  # Vivian's GitLab stand-in


async def scrape(farm) -> dict[str, dict[tuple, float]]:
    """{sample name: {sorted label items: value}} from the farm's /metrics, through the real parser."""
    async with httpx.AsyncClient(base_url=api_url(farm), timeout=10) as c:
        r = await c.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return samples


def value(samples, name: str, **labels) -> float | None:
    return samples.get(name, {}).get(tuple(sorted(labels.items())))


async def until(predicate, timeout: float = 10.0):
    return await eventually(predicate, "the metrics to move", timeout, every=0.1)


async def test_metrics_move_with_the_vivian_farm(farm, vivian):
    """An outlet switched through the API, a DUT that boots, registers and prints: every figure follows."""
    async def all_off():
        s = await scrape(farm)
        # the first poll records the outlets, then marks the PDU reachable: wait for both
        off = value(s, "valve_console_pdu_outlets", pdu="vpdu1", state="off") == 16
        return s if off and value(s, "valve_console_pdu_reachable", pdu="vpdu1", driver="vpdu") == 1 else None

    before = await until(all_off)
    assert value(before, "valve_console_pdu_outlets", pdu="vpdu1", state="on") == 0
    assert value(before, "valve_console_pdu_reachable", pdu="vpdu1", driver="vpdu") == 1
    assert sum(before["valve_console_machines"].values()) == 0
    assert value(before, "valve_console_machines", state="WAIT_FOR_CONFIG") == 0
    polls = value(before, "valve_console_pdu_command_seconds_count", pdu="vpdu1")
    assert polls and polls >= 1
    assert value(before, "valve_console_pdu_command_seconds_bucket", pdu="vpdu1", le="+Inf") == polls

    async with httpx.AsyncClient(base_url=api_url(farm), headers={"Authorization": f"Bearer {farm.token}"}) as c:
        r = await c.post("/api/v1/pdu/vpdu1/port/3/state", json={"state": "on"})
        assert r.status_code == 200, r.text
    mac = vivian.running_duts[3].mac

    after = await scrape(farm)  # the answer carried the read-back: the gauge has moved already
    assert value(after, "valve_console_pdu_outlets", pdu="vpdu1", state="on") == 1
    assert value(after, "valve_console_pdu_outlets", pdu="vpdu1", state="off") == 15
    assert value(after, "valve_console_pdu_command_seconds_count", pdu="vpdu1") > polls

    async def registered():
        s = await scrape(farm)
        ok = sum(s["valve_console_machines"].values()) == 1 and (value(s, "valve_console_console_bytes_total", mac=mac)
                                                                 or 0) > 0
        return s if ok else None

    s1 = await until(registered)
    # The DUT registered on its own: no PDU port is set on it yet, exactly as in the seed.
    assert value(s1, "valve_console_machines", state="WAIT_FOR_CONFIG") == 1
    assert value(s1, "valve_console_console_lines_total", mac=mac) >= 1
    assert value(s1, "valve_console_console_connected", mac=mac) == 1
    first = value(s1, "valve_console_console_bytes_total", mac=mac)

    # The operator types on the console: the simulated DUT echoes, the byte counter grows.
    async with httpx.AsyncClient(base_url=api_url(farm), headers={"Authorization": f"Bearer {farm.token}"}) as c:
        r = await c.post(f"/api/v1/console/{mac}/input", json={"data": "uname -a\r"})
        assert r.status_code == 200, r.text

    async def grown():
        s = await scrape(farm)
        return s if value(s, "valve_console_console_bytes_total", mac=mac) > first else None

    await until(grown)


async def test_an_unreachable_pdu_is_0_with_errors_counted(farm):
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there
    await farm.power.add_pdu("gone", "vpdu", {"hostname": f"127.0.0.1:{port}"})

    async def failed():
        s = await scrape(farm)
        return s if (value(s, "valve_console_pdu_command_errors_total", pdu="gone") or 0) >= 1 else None

    s = await until(failed)
    assert value(s, "valve_console_pdu_reachable", pdu="gone", driver="vpdu") == 0
    assert value(s, "valve_console_pdu_failures", pdu="gone") >= 1
    assert value(s, "valve_console_service_ok", service="power") == 0


async def test_jobs_are_counted_by_status_with_durations(jobfarm):
    farm, api, macs, duts = jobfarm
    s0 = await scrape(farm)
    assert value(s0, "valve_console_jobs_total", status="PASS") is None
    assert value(s0, "valve_console_jobs_active", status="QUEUED") == 0

    for script in ("pass", "fail", "pass"):
        r = await api.post("/api/v1/jobs", json={"job": job_yaml(script, target=f"id: '{macs[1]}'")})
        assert r.status_code == 200, r.text
        job = await wait_job(api, r.json()["id"])
        assert job["status"] in ("PASS", "FAIL")

    s1 = await scrape(farm)
    assert value(s1, "valve_console_jobs_total", status="PASS") == 2
    assert value(s1, "valve_console_jobs_total", status="FAIL") == 1
    assert value(s1, "valve_console_job_duration_seconds_count", status="PASS") == 2
    assert value(s1, "valve_console_job_duration_seconds_bucket", status="PASS", le="+Inf") == 2
    assert value(s1, "valve_console_job_duration_seconds_sum", status="PASS") > 0
    assert value(s1, "valve_console_jobs_active", status="RUNNING") == 0
    # Buckets are cumulative: never decreasing along le.
    buckets = sorted(
        (float(dict(k)["le"]), v) for k, v in s1["valve_console_job_duration_seconds_bucket"].items()
        if dict(k)["status"] == "PASS"
    )
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)


async def test_training_progress_is_exported(tmp_path):
    """With Sgt. Hartman on, a machine given an outlet starts training: its loop and loops appear."""
    from tests.conftest import make_settings
    from valve_console.backend.farm import Farm

    farm = Farm(make_settings(tmp_path / "data", training=True, training_loops=7, training_qualify=6))
    await farm.start()
    try:
        await farm.power.add_pdu("d1", "dummy", {"ports": 2})
        mac = "02:00:00:00:03:01"
        async with httpx.AsyncClient(base_url=api_url(farm), headers={"Authorization": f"Bearer {farm.token}"}) as c:
            reg = {"base_name": "fake", "tags": [], "mac_address": mac, "ip_address": "10.0.3.1"}
            assert (await c.post("/api/v1/machine/", json=reg)).status_code == 200
            s0 = await scrape(farm)
            assert "valve_console_training_loop" not in s0  # no training yet: nothing exported
            assert "valve_console_training_failed_attempts" not in s0
            r = await c.patch(f"/api/v1/machine/{mac}/", json={"pdu": "d1", "pdu_port_id": "1"})
            assert r.status_code == 200, r.text

        async def training():
            s = await scrape(farm)
            return s if value(s, "valve_console_training_loop", mac=mac) is not None else None

        s1 = await until(training)
        assert value(s1, "valve_console_training_loops", mac=mac) == 7
        assert value(s1, "valve_console_training_loop", mac=mac) == 0  # registering comes first
        assert value(s1, "valve_console_training_passes", mac=mac) == 0
        assert value(s1, "valve_console_training_failed_attempts", mac=mac) == 0  # a first training
        assert value(s1, "valve_console_training_state", mac=mac, state="registering") == 1
        assert value(s1, "valve_console_machines", state="TRAINING") == 1
    finally:
        await farm.stop()


async def test_training_progress_and_gitlab_runners_are_read_defensively(farm, monkeypatch):
    view = farm.view
    real = view.json
    r = httpx.AsyncClient(base_url=api_url(farm))
    async with r as c:
        for i in range(3):
            reg = {"base_name": "fake", "tags": [], "mac_address": f"02:00:00:00:02:0{i}", "ip_address": f"10.0.1.{i}"}
            assert (await c.post("/api/v1/machine/", json=reg)).status_code == 200

    trainings = {
        "02:00:00:00:02:00": {"loop": 2, "loops": 5, "passes": 1, "state": "cooldown", "attempt": 3},
        "02:00:00:00:02:01": {"loop": "two"},  # not a number: nothing exported
        "02:00:00:00:02:02": None,  # no training: nothing exported
    }

    def to_json(m):
        data = real(m)
        data["training"] = trainings[m.mac_address]
        return data

    monkeypatch.setattr(view, "json", to_json)
    s = await scrape(farm)
    assert s["valve_console_training_loop"] == {(("mac", "02:00:00:00:02:00"),): 2.0}
    assert s["valve_console_training_loops"] == {(("mac", "02:00:00:00:02:00"),): 5.0}
    assert s["valve_console_training_passes"] == {(("mac", "02:00:00:00:02:00"),): 1.0}
    assert s["valve_console_training_failed_attempts"] == {(("mac", "02:00:00:00:02:00"),): 3.0}
    assert s["valve_console_training_state"] == {(("mac", "02:00:00:00:02:00"), ("state", "cooldown")): 1.0}

    # No GitLab service: no runner metric. With one, runners are counted per instance from the database.
    if getattr(farm, "gitlab", None) is None:
        assert "valve_console_gitlab_runners" not in s
        monkeypatch.setattr(farm, "gitlab", object(), raising=False)

    def add(session: Session) -> None:
        for i, mac in enumerate(trainings):
            session.add(GitlabRunner(instance="fdo", mac_address=mac, runner_id=i, token="t", description=mac))

    await farm.store.run(add)
    s = await scrape(farm)
    assert value(s, "valve_console_gitlab_runners", instance="fdo") == 3


async def operator(farm):
    return httpx.AsyncClient(base_url=api_url(farm), headers={"Authorization": f"Bearer {farm.token}"}, timeout=10)


async def test_an_outlet_that_reads_back_wrong_is_flagged_until_a_switch_reads_back_right(farm, monkeypatch):
    monkeypatch.setattr(power_mod, "READBACK_SETTLE", 0.3)  # the stuck relay never settles: fail fast
    await farm.power.add_pdu("d1", "dummy", {"ports": 4, "initial_state": "OFF"})
    driver = farm.power.pdus["d1"].driver
    stuck = {"1"}
    real_set = driver.set

    async def set_outlet(port_id, state):  # a stuck relay: the PDU takes the command, nothing changes
        if port_id not in stuck:
            await real_set(port_id, state)

    monkeypatch.setattr(driver, "set", set_outlet)
    mac = "02:00:00:00:04:01"
    async with await operator(farm) as c:
        reg = {"base_name": "fake", "tags": [], "mac_address": mac, "ip_address": "10.0.4.1"}
        assert (await c.post("/api/v1/machine/", json=reg)).status_code == 200
        assert (await c.patch(f"/api/v1/machine/{mac}/", json={"pdu": "d1", "pdu_port_id": "1"})).status_code == 200
        s0 = await scrape(farm)
        assert value(s0, "valve_console_outlet_readback_mismatch", pdu="d1", port="1", machine=mac) == 0
        assert value(s0, "valve_console_outlet_readback_mismatches_total", pdu="d1", port="1") == 0

        r = await c.post("/api/v1/pdu/d1/port/1/state", json={"state": "on"})
        assert r.status_code >= 400, r.text  # the read-back said OFF
        assert (await c.post("/api/v1/pdu/d1/port/2/state", json={"state": "on"})).status_code == 200
        s1 = await scrape(farm)
        assert value(s1, "valve_console_outlet_readback_mismatch", pdu="d1", port="1", machine=mac) == 1
        assert value(s1, "valve_console_outlet_readback_mismatches_total", pdu="d1", port="1") == 1
        assert value(s1, "valve_console_outlet_readback_mismatch", pdu="d1", port="2", machine="") == 0
        assert value(s1, "valve_console_outlet_readback_mismatches_total", pdu="d1", port="2") == 0

        stuck.clear()  # repaired: the next switch reads back right, the flag goes, the count stays
        assert (await c.post("/api/v1/pdu/d1/port/1/state", json={"state": "on"})).status_code == 200
        s2 = await scrape(farm)
        assert value(s2, "valve_console_outlet_readback_mismatch", pdu="d1", port="1", machine=mac) == 0
        assert value(s2, "valve_console_outlet_readback_mismatches_total", pdu="d1", port="1") == 1


async def test_a_machine_s_seconds_in_its_state_grow_and_start_again_with_a_new_state(farm, monkeypatch):
    now = [1_000_000.0]
    monkeypatch.setattr(farm.view, "clock", lambda: now[0])  # the view's clock: state_since and the seconds
    await farm.power.add_pdu("d1", "dummy", {"ports": 2})
    mac = "02:00:00:00:05:01"
    async with await operator(farm) as c:
        reg = {"base_name": "fake", "tags": [], "mac_address": mac, "ip_address": "10.0.5.1"}
        r = await c.post("/api/v1/machine/", json=reg)
        assert r.status_code == 200
        name = r.json()["full_name"]
        now[0] += 250
        s0 = await scrape(farm)
        assert s0["valve_console_machine_state_seconds"] == {
            (("mac", mac), ("name", name), ("state", "WAIT_FOR_CONFIG")): 250.0}
        now[0] += 50
        s1 = await scrape(farm)
        assert s1["valve_console_machine_state_seconds"] == {
            (("mac", mac), ("name", name), ("state", "WAIT_FOR_CONFIG")): 300.0}
        r = await c.patch(f"/api/v1/machine/{mac}/", json={"pdu": "d1", "pdu_port_id": "1"})
        assert r.status_code == 200 and r.json()["state"] == "NOT_READY"
    now[0] += 40
    s2 = await scrape(farm)  # one series per machine: the state it is in, counted from when it entered it
    assert s2["valve_console_machine_state_seconds"] == {(("mac", mac), ("name", name), ("state", "NOT_READY")): 40.0}


async def test_console_silence_counts_from_the_last_byte_or_the_backend_s_start(farm, monkeypatch):
    now = [farm.started_at + 500]
    monkeypatch.setattr(metrics_mod, "time", types.SimpleNamespace(time=lambda: now[0]))
    mac = "02:00:00:00:06:01"
    console = farm.consoles.console(mac)
    s0 = await scrape(farm)
    assert value(s0, "valve_console_console_silent_seconds", mac=mac) == 500  # no byte since the start
    assert value(s0, "valve_console_uptime_seconds") == 500
    console.feed(b"login: ")
    now[0] = console.last_activity + 42
    s1 = await scrape(farm)
    assert value(s1, "valve_console_console_silent_seconds", mac=mac) == 42
    assert value(s1, "valve_console_console_bytes_total", mac=mac) == 7


async def test_gitlab_refusals_are_exported_per_runner_and_per_instance(farm, fake):
    async with await operator(farm) as http:
        await add_instance(http, fake)  # the admin token: runners are created
        await add_machine(http, 1)
        await eventually(lambda: fake.by_description("test-virtio-1"), "the machine's runner")
        s0 = await eventually(lambda: _gitlab_ok(farm), "instance fdo ok in the metrics")
        assert value(s0, "valve_console_gitlab_runner_error", gitlab="fdo", mac=mac_of(1)) == 0
        assert value(s0, "valve_console_gitlab_token_refused", gitlab="fdo") == 0
        assert value(s0, "valve_console_gitlab_instance_state", gitlab="fdo", state="unreachable") == 0

        # a second instance whose token may not create runners (and no registration token): the runner is refused
        fake.user_runners_refused = True
        await add_instance(http, fake, name="other", token=USER_TOKEN)

        async def refused():
            s = await scrape(farm)
            return s if value(s, "valve_console_gitlab_runner_error", gitlab="other", mac=mac_of(1)) == 1 else None

        s1 = await eventually(refused, "the refused runner in the metrics")
        assert value(s1, "valve_console_gitlab_runner_error", gitlab="fdo", mac=mac_of(1)) == 0
        assert value(s1, "valve_console_gitlab_token_refused", gitlab="other") == 0  # its token is taken

        # GitLab no longer takes fdo's access token (HTTP 401): the instance is unreachable, its token refused
        fake.admin_token = "glpat-rotated-0123456789abcdef"
        assert (await http.post("/api/v1/gitlab/fdo/sync")).status_code == 200
        s2 = await scrape(farm)
        assert value(s2, "valve_console_gitlab_token_refused", gitlab="fdo") == 1
        assert value(s2, "valve_console_gitlab_instance_state", gitlab="fdo", state="unreachable") == 1
        assert value(s2, "valve_console_gitlab_instance_state", gitlab="fdo", state="ok") == 0
        assert value(s2, "valve_console_gitlab_instance_failures", gitlab="fdo") >= 1
        assert value(s2, "valve_console_gitlab_token_refused", gitlab="other") == 0

        fake.down = True  # an outage is unreachable too, but no refused token
        assert (await http.post("/api/v1/gitlab/other/sync")).status_code == 200
        s3 = await scrape(farm)
        assert value(s3, "valve_console_gitlab_instance_state", gitlab="other", state="unreachable") == 1
        assert value(s3, "valve_console_gitlab_token_refused", gitlab="other") == 0


async def _gitlab_ok(farm):
    s = await scrape(farm)
    return s if value(s, "valve_console_gitlab_instance_state", gitlab="fdo", state="ok") == 1 else None


def test_label_values_are_escaped_and_round_trip():
    nasty = 'a "quoted" back\\slash\nnew line'
    exp = Exposition()
    exp.add("valve_console_test", "gauge", "help with \\ and\nnewline", 1.5, {"name": nasty})
    stats = PduCommandStats()
    for seconds in (0.001, 0.02, 0.3, 99.0):
        stats.observe("p", seconds, ok=seconds < 50)
    hist = stats.latency
    for (pdu,), (counts, total, count) in hist.series.items():
        exp.histogram("valve_console_h", "h", {"pdu": pdu}, hist.buckets, counts, total, count)
    families = {f.name: f for f in text_string_to_metric_families(exp.render())}
    assert families["valve_console_test"].samples[0].labels == {"name": nasty}
    assert families["valve_console_test"].documentation == "help with \\ and\nnewline"
    samples = {(s.name, s.labels.get("le")): s.value for s in families["valve_console_h"].samples}
    assert samples[("valve_console_h_bucket", "0.01")] == 1
    assert samples[("valve_console_h_bucket", "0.5")] == 3
    assert samples[("valve_console_h_bucket", "30.0")] == 3
    assert samples[("valve_console_h_bucket", "+Inf")] == 4
    assert samples[("valve_console_h_count", None)] == 4
    assert stats.errors == {"p": 1}


@pytest.mark.parametrize("raw", [float("nan"), float("inf"), 3, 2.5, True])
def test_values_are_in_the_format(raw):
    text = metrics_mod.format_value(raw)
    parsed = next(iter(text_string_to_metric_families(f"# TYPE x gauge\nx {text}\n"))).samples[0].value
    assert (parsed != parsed) if raw != raw else parsed == float(raw)
