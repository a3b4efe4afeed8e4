"""The Overview's data, without Textual: what needs the operator (attention), the tiles' words, the job
trends and the recent-events feed, on the snapshot tests' fake farm."""

from __future__ import annotations

from typing import Any

from tests.tui.fake_farm import GLANCE_MACS, NOW, glance_farm_data, job, training, ts
from valve_console.console_data import Changes, FarmModel
from valve_console.console_data.attention import (
    CONSOLE_SILENT,
    JOB_INFRA,
    SILENT_AFTER,
    TRAINING_FAILING,
    ago,
    attention,
    infra_failure,
)
from valve_console.console_data.changes import Snapshot
from valve_console.console_data.glance import job_rates, running_jobs, tile_of
from valve_console.contract import Console, Health, Job, Machine, Pdu


def model_of(data: dict[str, Any]) -> FarmModel:
    model = FarmModel()
    model.clock = lambda: NOW
    snap = Snapshot(
        health=Health.model_validate(data["health"]), gateway=[],
        machines={mac: Machine.model_validate(m) for mac, m in data["machines"].items()},
        pdus={name: Pdu.model_validate(p) for name, p in data["pdus"].items()},
        consoles={mac: Console.model_validate(c) for mac, c in data["consoles"].items()},
        backend_log=[], jobs=[Job.model_validate(j) for j in data["jobs"]])
    model.apply(Changes(snapshot=snap))
    return model


def kinds_of(model: FarmModel, mac: str) -> set[str]:
    return {item.kind for item in attention(model, NOW) if item.mac == mac}


def test_training_is_failing_only_once_it_can_no_longer_qualify() -> None:
    data = glance_farm_data()
    mac = GLANCE_MACS["training"]
    fail = {"loop": 3, "status": "FAIL", "job": "train-3", "why": "no console", "at": ts(9, 5, 0)}
    data["machines"][mac]["training"] = training("looping", 7, loops=20, qualify=19, failures=[fail])
    assert TRAINING_FAILING not in kinds_of(model_of(data), mac)  # 19 of 20 can still pass
    data["machines"][mac]["training"] = training("looping", 7, loops=20, qualify=19, failures=[fail, fail])
    items = [i for i in attention(model_of(data), NOW) if i.mac == mac]
    assert [i.kind for i in items] == [TRAINING_FAILING]
    assert "2 of 20 loops failed (last: no console)" in items[0].reason
    backoff = [i for i in attention(model_of(data), NOW) if i.mac == GLANCE_MACS["backoff"]]
    assert backoff[0].reason == "backing off: attempt 2 failed (kernel panic), next try in 2m"


def test_a_job_failed_for_the_farm_is_listed_until_the_machine_ends_a_job_otherwise() -> None:
    data = glance_farm_data()
    mac = GLANCE_MACS["infra"]
    assert JOB_INFRA in kinds_of(model_of(data), mac)
    data["jobs"].insert(0, job("job-later", mac, "PASS", "done", ts(9, 28, 0), started=ts(9, 28, 1),
                               ended=ts(9, 29, 0)))
    assert JOB_INFRA not in kinds_of(model_of(data), mac)
    # cancelled by the operator is not the farm's failure; SETUP_FAIL always is
    assert not infra_failure(Job.model_validate(job("j", mac, "INCOMPLETE", "cancelled", 0.0)))
    assert infra_failure(Job.model_validate(job("j", mac, "SETUP_FAIL", "done", 0.0)))
    assert not infra_failure(Job.model_validate(job("j", mac, "FAIL", "done", 0.0)))


def test_a_console_is_silent_only_while_its_machine_runs_a_job_and_text_wakes_it() -> None:
    data = glance_farm_data()
    mac = GLANCE_MACS["silent"]
    model = model_of(data)
    item = next(i for i in attention(model, NOW) if i.kind == CONSOLE_SILENT)
    assert item.mac == mac and item.reason == "nothing printed for 12m while a job runs"
    just_before = ts(9, 18, 0) + SILENT_AFTER - 1  # its last line was at 09:18
    assert CONSOLE_SILENT not in {i.kind for i in attention(model, just_before)}
    model.apply(Changes(console_text={mac: ["a line\r\n"]}))  # text arrives (the model's clock: 09:30)
    assert CONSOLE_SILENT not in kinds_of(model, mac)
    data["machines"][mac]["state"] = "IDLE"  # not running a job: silence is normal
    assert CONSOLE_SILENT not in kinds_of(model_of(data), mac)


def test_tiles_say_what_each_machine_does() -> None:
    model = model_of(glance_farm_data())
    running = running_jobs(model)

    def tile(mac: str) -> Any:
        return tile_of(model, model.machines[mac], running.get(mac), None, False)

    assert tile(GLANCE_MACS["training"]).doing == "train 7/20"
    assert tile(GLANCE_MACS["backoff"]).doing == "backoff #2"
    assert tile(GLANCE_MACS["silent"]).doing == "job job-20260314-091000-aa11bb"
    assert tile(GLANCE_MACS["queued"]).doing == "1 queued"
    virtio = tile("52:54:00:11:22:03")
    assert (virtio.watts, virtio.outlet, virtio.state) == (143.0, "vpdu1/3", "RUNNING")
    assert tile("52:54:00:11:22:09").outlet == "no outlet" and tile("52:54:00:11:22:09").watts is None


def test_job_trends_count_user_jobs_per_hour_and_their_pass_rate() -> None:
    model = model_of(glance_farm_data())
    ended, rates = job_rates(model, NOW, hours=3)
    # 06:30-07:30: none; 07:30-08:30: the FAIL (07:50); 08:30-09:30: PASS 08:40, PASS 09:08:48, nightly FAIL
    # 09:02:17, cancelled 09:12:30, infra 09:27 (INCOMPLETE)
    assert ended == [0.0, 1.0, 5.0]
    assert rates[0] is None and rates[1] == 0.0 and rates[2] == 2 / 5
    model.jobs["t"] = Job.model_validate({**job("t", "m", "PASS", "done", NOW - 60, ended=NOW - 10),
                                          "training": "training"})
    assert job_rates(model, NOW, hours=3)[0] == [0.0, 1.0, 5.0]  # Sgt. Hartman's jobs are not counted


def test_the_feed_says_what_changed() -> None:
    data = glance_farm_data()
    model = model_of(data)
    mac = GLANCE_MACS["idle"]
    changed = Machine.model_validate({**data["machines"][mac], "state": "RUNNING"})
    ended = Job.model_validate(job("job-20260314-092900-cc22dd", GLANCE_MACS["queued"], "FAIL", "done",
                                   ts(9, 29, 0), ended=NOW))
    model.apply(Changes(machines={mac: changed}, jobs={ended.id: ended}))
    texts = [(item.text, item.severity) for item in model.recent]
    assert ("vivian-amd-1 IDLE -> RUNNING", "information") in texts
    assert ("job job-20260314-092900-cc22dd on vivian-amd-2: FAIL", "warning") in texts
    model.apply(Changes(machines={mac: changed}))  # no change of state: nothing more
    assert len(model.recent) == 2


def test_ago_is_short() -> None:
    assert [ago(s) for s in (-5, 0, 59, 60, 3599, 3600, 3725, 86400 + 4 * 3600)] == \
        ["0s", "0s", "59s", "1m", "59m", "1h00", "1h02", "1d04"]
