"""GitLab runners against a fake GitLab HTTP server: create, tags, delete, clean-up, outage, config.toml."""

from __future__ import annotations

import os
import stat
import tomllib

import httpx

from sqlmodel import select

from tests.conftest import eventually
from tests.gitlab.conftest import TAGS, add_instance, add_machine, mac_of
from tests.gitlab.fake_gitlab import REG_TOKEN, USER_TOKEN
from valve_console.backend.gitlab import render_config_toml
from valve_console.backend.models import GitlabRunner


def read_config(farm) -> dict:
    return tomllib.loads(farm.gitlab.config_path.read_text())


async def stored_runners(farm) -> dict[str, GitlabRunner]:
    rows = await farm.store.run(lambda s: list(s.exec(select(GitlabRunner)).all()))
    return {r.mac_address: r for r in rows}


async def test_instance_api_masks_tokens_and_refuses_bad_input(farm, http, fake):
    r = await http.post("/api/v1/gitlab", json={"name": "x", "url": "ftp://nope", "token": "t"})
    assert r.status_code == 400 and "http(s)://" in r.json()["error"]
    r = await http.post("/api/v1/gitlab", json={"name": "x", "url": fake.url})
    assert r.status_code == 400 and "token" in r.json()["error"]
    r = await http.post("/api/v1/gitlab", json={"name": "x", "url": fake.url, "token": "t", "colour": "red"})
    assert r.status_code == 400 and "colour" in r.json()["error"]
    inst = await add_instance(http, fake, registration_token=REG_TOKEN)
    assert inst["token"] == "********" and inst["registration_token"] == "********"
    assert inst["farm_name"] == "test" and inst["farm_tags"] == ["farm:test"]
    listing = (await http.get("/api/v1/gitlab")).json()
    assert "glpat" not in str(listing) and REG_TOKEN not in str(listing)
    assert (await http.post("/api/v1/gitlab", json={"name": "fdo", "url": fake.url, "token": "t"})).status_code == 409
    r = await http.patch("/api/v1/gitlab/nope", json={"expose_runners": False})
    assert r.status_code == 404 and "nope" in r.json()["error"]
    r = await http.patch("/api/v1/gitlab/fdo", json={"expose_runners": "maybe"})
    assert r.status_code == 400
    r = await http.patch("/api/v1/gitlab/fdo", json={"farm_tags": ["a,b"]})
    assert r.status_code == 400 and "comma" in r.json()["error"]
    assert (await http.get("/api/v1/gitlab/fdo")).json()["farm_tags"] == ["farm:test"]  # nothing lost
    async with httpx.AsyncClient(base_url=str(http.base_url)) as anonymous:
        r = await anonymous.post("/api/v1/gitlab", json={"name": "y", "url": fake.url, "token": "t"})
        assert r.status_code == 401 and "token" in r.json()["error"]
    assert (await http.delete("/api/v1/gitlab/fdo")).json()["removed"] == "fdo"
    assert (await http.get("/api/v1/gitlab/fdo")).status_code == 404


async def test_runner_lifecycle_follows_the_machine(farm, http, fake):
    await add_instance(http, fake)
    await add_machine(http, 1, ready=False)
    assert not fake.runners
    await http.patch(f"/api/v1/machine/{mac_of(1)}/", json={"ready_for_service": True})
    (runner,) = await eventually(lambda: fake.by_description("test-virtio-1"), "runner created on ready")
    assert runner["tag_list"] == [*TAGS, "farm:test"]
    assert runner["run_untagged"] is False and runner["locked"] is True and runner["runner_type"] == "instance_type"
    assert ("POST", "/api/v4/user/runners") in fake.requests
    row = (await eventually(lambda: stored_runners(farm), "runner stored"))[mac_of(1)]
    assert row.runner_id == runner["id"] and row.token == runner["token"] and row.token.startswith("glrt-")
    machine = (await http.get(f"/api/v1/machine/{mac_of(1)}/")).json()
    (info,) = machine["runners"]
    assert {k: info[k] for k in ("instance", "runner_id", "state", "error")} == {
        "instance": "fdo",
        "runner_id": runner["id"],
        "state": "ok",
        "error": None,
    }
    assert info["verify"] == "valid (new)" and info["verified_at"] and info["token_expires_at"] is None

    # tags follow the machine's tags (manual ones included): PUT /runners/:id
    await http.patch(f"/api/v1/machine/{mac_of(1)}/", json={"manual_tags": ["ram:16G"]})
    await eventually(lambda: "ram:16G" in fake.runners[runner["id"]]["tag_list"], "tags updated")
    assert fake.runners[runner["id"]]["tag_list"] == [*TAGS, "ram:16G", "farm:test"]
    assert ("PUT", f"/api/v4/runners/{runner['id']}") in fake.requests

    # retired: deleted; active again: a new runner
    assert (await http.post(f"/api/v1/machine/{mac_of(1)}/retire")).status_code == 200
    await eventually(lambda: not fake.runners, "runner deleted on retire")
    assert mac_of(1) not in await stored_runners(farm)
    await http.post(f"/api/v1/machine/{mac_of(1)}/activate")
    (again,) = await eventually(lambda: fake.by_description("test-virtio-1"), "runner created on activate")
    assert again["id"] != runner["id"]

    # not ready for service: deleted
    await http.patch(f"/api/v1/machine/{mac_of(1)}/", json={"ready_for_service": False})
    await eventually(lambda: not fake.runners, "runner deleted when not ready")
    await http.patch(f"/api/v1/machine/{mac_of(1)}/", json={"ready_for_service": True})
    await eventually(lambda: fake.runners, "runner back when ready")

    # not exposed on GitLab: deleted; the toggle is in the machine JSON
    r = await http.patch(f"/api/v1/machine/{mac_of(1)}/", json={"gitlab_exposed": False})
    assert r.json()["gitlab_exposed"] is False
    await eventually(lambda: not fake.runners, "runner deleted when un-exposed")
    assert (await http.patch(f"/api/v1/machine/{mac_of(1)}/", json={"gitlab_exposed": None})).status_code == 400
    await http.patch(f"/api/v1/machine/{mac_of(1)}/", json={"gitlab_exposed": True})
    await eventually(lambda: fake.runners, "runner back when exposed")

    # removed from the farm (DELETE /api/v1/machine/<mac>/): its runner goes, and it is gone for good
    r = await http.delete(f"/api/v1/machine/{mac_of(1)}/")
    assert r.status_code == 200 and r.json() == {"removed": mac_of(1)}
    await eventually(lambda: not fake.runners, "runner deleted when the machine is removed")
    assert not await stored_runners(farm)
    assert (await http.get(f"/api/v1/machine/{mac_of(1)}/")).status_code == 404
    r = await http.delete(f"/api/v1/machine/{mac_of(1)}/")
    assert r.status_code == 404 and "error" in r.json()


async def test_instance_not_exposing_and_removed_instance_delete_runners(farm, http, fake):
    await add_instance(http, fake)
    await add_machine(http, 1)
    await eventually(lambda: fake.runners, "runner created")
    r = await http.patch("/api/v1/gitlab/fdo", json={"expose_runners": False})
    assert r.status_code == 200
    await eventually(lambda: not fake.runners, "runner deleted when the instance stops exposing")
    await http.patch("/api/v1/gitlab/fdo", json={"expose_runners": True})
    await eventually(lambda: fake.runners, "runner back")
    answer = (await http.delete("/api/v1/gitlab/fdo")).json()
    assert answer == {"removed": "fdo", "runners_left_on_gitlab": []}
    assert not fake.runners and not await stored_runners(farm)
    assert read_config(farm).get("runners", []) == []


async def _instance_state(http, name: str, state: str) -> bool:
    return (await http.get(f"/api/v1/gitlab/{name}")).json()["state"] == state


async def test_registration_token_fallback_and_refusal_shown(farm, http, fake):
    fake.user_runners_refused = True  # an old GitLab, or a token without create_runner
    await add_instance(http, fake, registration_token=REG_TOKEN)
    await add_machine(http, 1)
    (runner,) = await eventually(lambda: fake.by_description("test-virtio-1"), "runner via registration token")
    assert ("POST", "/api/v4/runners") in fake.requests
    assert runner["tag_list"] == [*TAGS, "farm:test"]
    # without a registration token the refusal is shown on the machine, and nothing else breaks
    await http.delete("/api/v1/gitlab/fdo")
    await add_instance(http, fake, name="other", token=USER_TOKEN)
    machine = await eventually(
        lambda: _machine_with_runner_error(http, mac_of(1)), "runner error shown on the machine"
    )
    (info,) = machine["runners"]
    assert info["state"] == "error" and info["runner_id"] is None
    assert "403" in info["error"] and "registration token" in info["error"]
    # the instance itself is fine once its sync ends (the refusal is the machine's, not the instance's)
    await eventually(lambda: _instance_state(http, "other", "ok"), "instance other ok")


async def _machine_with_runner_error(http, mac):
    machine = (await http.get(f"/api/v1/machine/{mac}/")).json()
    return machine if machine["runners"] and machine["runners"][0]["error"] else None


async def test_stray_runners_of_this_farm_are_deleted_and_lost_ones_recreated(farm, http, fake):
    stray = fake.add_runner("test-virtio-7", ["old"])
    foreign = fake.add_runner("otherfarm-virtio-1", ["x"])
    prefixless = fake.add_runner("testing-box", ["x"])  # "test" but not "test-"
    await add_machine(http, 1)
    await add_instance(http, fake)
    mine = await eventually(lambda: fake.by_description("test-virtio-1"), "runner created")
    await eventually(lambda: stray["id"] not in fake.runners, "stray runner deleted")
    assert foreign["id"] in fake.runners and prefixless["id"] in fake.runners
    # a runner deleted on GitLab behind our back is created again at the next full sync
    del fake.runners[mine[0]["id"]]
    state = (await http.post("/api/v1/gitlab/fdo/sync")).json()
    assert state["state"] == "ok" and state["runners"] == 1
    (new,) = fake.by_description("test-virtio-1")
    assert new["id"] != mine[0]["id"]
    assert (await stored_runners(farm))[mac_of(1)].runner_id == new["id"]


async def test_gitlab_down_retries_farm_keeps_working_then_syncs(farm, http, fake):
    events = farm.bus.subscribe(["gitlab"])
    await add_instance(http, fake)
    await add_machine(http, 1)
    await add_machine(http, 2)
    await eventually(lambda: len(fake.runners) == 2, "two runners")
    fake.stop()
    # the farm keeps working: a machine is retired, and config.toml drops it at once
    assert (await http.post(f"/api/v1/machine/{mac_of(1)}/retire")).status_code == 200
    await eventually(lambda: [r["name"] for r in read_config(farm)["runners"]] == ["test-virtio-2"], "config.toml")
    state = await eventually(
        lambda: _instance_if(http, lambda i: i["state"] == "unreachable" and i["failures"] >= 3), "retried"
    )
    assert "ConnectionError" in state["reason"] and state["retry_in"] <= 0.4  # the back-off is capped
    health = (await http.get("/api/v1/health")).json()
    assert health["status"] == "degraded" and health["services"]["gitlab"]["state"] == "degraded"
    assert "fdo unreachable" in health["services"]["gitlab"]["reason"]
    seen = [ev.data["instances"]["fdo"]["state"] for ev in events.drain() if ev.type == "gitlab"]
    assert "unreachable" in seen
    assert (await http.patch(f"/api/v1/machine/{mac_of(2)}/", json={"comment": "still fine"})).status_code == 200
    fake.start()  # back on the same port
    await eventually(lambda: _instance_if(http, lambda i: i["state"] == "ok"), "synced again")
    await eventually(lambda: [r["description"] for r in fake.runners.values()] == ["test-virtio-2"], "retired gone")
    assert (await http.get("/api/v1/health")).json()["services"]["gitlab"]["state"] == "ok"
    events.close()


async def _instance_if(http, pred):
    inst = (await http.get("/api/v1/gitlab/fdo")).json()
    return inst if pred(inst) else None


async def test_config_toml_matches_the_machines_and_is_written_only_on_change(farm, http, fake):
    await add_instance(http, fake)
    await add_machine(http, 1)
    await add_machine(http, 2, tags=["gpu:other"])
    await add_machine(http, 3, ready=False)
    await eventually(lambda: len(fake.runners) == 2, "two runners")
    rows = await eventually(lambda: _n_rows(farm, 2), "two rows")
    config = await eventually(lambda: (c := read_config(farm)) and len(c.get("runners", [])) == 2 and c, "config")
    assert config["check_interval"] == 0 and config["concurrent"] >= 2
    assert config["session_server"]["session_timeout"] == 1800
    by_name = {r["name"]: r for r in config["runners"]}
    assert set(by_name) == {"test-virtio-1", "test-virtio-2"}
    for i, name in ((1, "test-virtio-1"), (2, "test-virtio-2")):
        entry, row = by_name[name], rows[mac_of(i)]
        assert entry["url"] == fake.url and entry["id"] == row.runner_id and entry["token"] == row.token
        assert entry["limit"] == 1 and entry["executor"] == "custom"
        assert f"VALVE_CONSOLE_MACHINE={mac_of(i)}" in entry["environment"]
        custom = entry["custom"]
        for stage in ("config", "prepare", "run", "cleanup"):
            assert os.path.basename(custom[f"{stage}_exec"]) == "valve-console"
            args = custom[f"{stage}_args"]
            assert args[0] == "gitlab-executor" and args[-1] == stage
            assert args[args.index("--machine") + 1] == mac_of(i)
    path = farm.gitlab.config_path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # it holds runner tokens
    assert path == farm.settings.data_dir / "gitlab-runner" / "config.toml"
    await http.post("/api/v1/gitlab/fdo/sync")  # returns once any write in flight is done
    before, inode = farm.gitlab.config_writes, path.stat().st_ino
    # a change that does not touch config.toml: no write
    await http.patch(f"/api/v1/machine/{mac_of(1)}/", json={"comment": "hello"})
    await http.post("/api/v1/gitlab/fdo/sync")
    assert farm.gitlab.config_writes == before and path.stat().st_ino == inode
    # a change that does: a new file renamed over the old one (atomic), no temp file left
    await http.patch(f"/api/v1/machine/{mac_of(2)}/", json={"ready_for_service": False})
    await eventually(lambda: len(read_config(farm)["runners"]) == 1, "config rewritten")
    # the file is renamed in a worker thread; the count goes up when the loop hears back
    await eventually(lambda: farm.gitlab.config_writes > before, "the write counted")
    assert farm.gitlab.config_writes == before + 1 and path.stat().st_ino != inode
    assert sorted(p.name for p in path.parent.iterdir() if p.is_file()) == ["config.toml"]


async def _n_rows(farm, n):
    rows = await stored_runners(farm)
    return rows if len(rows) == n else None


def test_config_writer_escapes_what_toml_needs():
    odd = 'a "quoted" \\ back\nslash\ttab é \x01'
    text = render_config_toml(
        {"concurrent": 2, "check_interval": 0, "session_server": {"session_timeout": 1800}},
        [{"name": odd, "id": 5, "limit": 1, "flag": True, "environment": [odd, "B=2"], "custom": {"run_args": []}}],
    )
    data = tomllib.loads(text)
    assert data["session_server"] == {"session_timeout": 1800}
    (runner,) = data["runners"]
    assert runner == {"name": odd, "id": 5, "limit": 1, "flag": True, "environment": [odd, "B=2"], "custom": {
        "run_args": []}}


async def test_a_sync_without_changes_calls_nothing_and_a_restart_keeps_the_runners(tmp_path, fake):
    import httpx

    from tests.conftest import api_url, make_settings
    from valve_console.backend.farm import Farm

    import socket

    with socket.socket() as probe:  # the API URL is in config.toml: keep the same port across the restart
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = make_settings(
        tmp_path / "data", listen=f"127.0.0.1:{port}", gitlab_retry_max=0.4, gitlab_timeout=2.0, training=False
    )
    first = Farm(settings)
    await first.start()
    try:
        async with httpx.AsyncClient(base_url=api_url(first), headers={"Authorization": f"Bearer {first.token}"}) as h:
            await add_instance(h, fake)
            await add_machine(h, 1)
            (runner,) = await eventually(lambda: list(fake.runners.values()), "runner created")
            await eventually(lambda: _n_rows(first, 1), "runner stored")
            calls = len(fake.requests)
            await first.gitlab.sync("fdo", full=False)  # what every machine event triggers
            assert len(fake.requests) == calls
    finally:
        await first.stop()
    text = first.gitlab.config_path.read_text()
    second = Farm(settings)
    await second.start()
    try:
        state = await second.gitlab.sync("fdo", full=True)  # verifies (GET /runners/:id), creates nothing
        assert state["state"] == "ok" and state["runners"] == 1
        assert list(fake.runners) == [runner["id"]]
        assert ("GET", f"/api/v4/runners/{runner['id']}") in fake.requests
        # tokens checks live in memory: after a restart each token is verified once more (and stays)
        assert ("POST", "/api/v4/runners/verify") in fake.requests
        assert state["verify_result"] == "1 valid" and state["last_verify"]
        assert second.gitlab.config_writes == 0 and second.gitlab.config_path.read_text() == text
    finally:
        await second.stop()
