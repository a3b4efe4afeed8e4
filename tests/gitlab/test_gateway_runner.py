"""The generic gateway runner (valve-infra's ``<farm>-gateway``, setting ``gitlab_gateway_runner``): one more
runner per exposing instance, stored under the reserved key ``gateway``, kept by the stray clean-up, renewed
like a DUT's, deleted when the setting goes off; its executor stages (``--gateway``) run with no DUT."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import api_url, eventually, make_settings
from tests.e2e.test_jobs_e2e import job_yaml
from tests.gitlab.conftest import TAGS, add_instance, add_machine, mac_of
from tests.gitlab.test_executor import BUILD_FAILURE, SYSTEM_FAILURE, Stage
from tests.gitlab.test_runners import read_config, stored_runners
from tests.gitlab.test_tokens import HOUR, VERIFY, config_tokens, move_clock
from valve_console.backend.farm import Farm
from valve_console.backend.gitlab import GATEWAY

GATEWAY_TAGS = ["test-gateway", "CI-gateway"]
LIMIT = max(1, (os.cpu_count() or 1) // 8)


@pytest.fixture
def farm_overrides() -> dict[str, Any]:
    """This module's farm has the gateway runner on, and a pre-build filter (the gateway's prepare applies it)."""
    return {"gitlab_gateway_runner": True, "gitlab_allowed_users": ["marge-bot"]}


def entries(farm) -> dict[str, dict]:
    """config.toml's runners by name."""
    path = farm.gitlab.config_path
    return {r["name"]: r for r in (read_config(farm).get("runners", []) if path.exists() else [])}


async def gateway_runner(farm, fake) -> dict:
    """The gateway runner, once it is on the fake GitLab, stored and in config.toml."""
    (runner,) = await eventually(lambda: fake.by_description("test-gateway"), "gateway runner created")
    row = (await eventually(lambda: stored_runners(farm), "gateway runner stored"))[GATEWAY]
    assert (row.runner_id, row.token) == (runner["id"], runner["token"])
    await eventually(lambda: entries(farm).get("test-gateway", {}).get("token") == runner["token"], "config.toml")
    return runner


async def test_gateway_runner_beside_a_dut_runner_and_kept_by_the_clean_up(farm, http, fake):
    await add_instance(http, fake)
    runner = await gateway_runner(farm, fake)  # no machine needed
    assert runner["tag_list"] == GATEWAY_TAGS  # valve-infra's tags: not the farm tags
    assert runner["run_untagged"] is False and runner["locked"] is True and runner["runner_type"] == "instance_type"

    await add_machine(http, 1)
    (dut,) = await eventually(lambda: fake.by_description("test-virtio-1"), "DUT runner created")
    assert dut["tag_list"] == [*TAGS, "farm:test"]
    rows = await eventually(lambda: _rows_if(farm, 2), "both rows stored")
    assert set(rows) == {GATEWAY, mac_of(1)}

    config = await eventually(lambda: len(entries(farm)) == 2 and read_config(farm), "config.toml with both")
    by_name = {r["name"]: r for r in config["runners"]}
    gw, machine = by_name["test-gateway"], by_name["test-virtio-1"]
    assert gw["id"] == runner["id"] and gw["url"] == fake.url and gw["executor"] == "custom"
    assert gw["limit"] == LIMIT and machine["limit"] == 1 and config["concurrent"] == LIMIT + 1
    assert not any(e.startswith("VALVE_CONSOLE_MACHINE=") for e in gw["environment"])
    for stage in ("config", "prepare", "run", "cleanup"):
        args = gw["custom"][f"{stage}_args"]
        assert args[0] == "gitlab-executor" and args[-1] == stage and "--gateway" in args and "--machine" not in args
        dut_args = machine["custom"][f"{stage}_args"]
        assert "--gateway" not in dut_args and dut_args[dut_args.index("--machine") + 1] == mac_of(1)
    for args in (gw["custom"]["prepare_args"], machine["custom"]["prepare_args"]):  # the filter, for both
        assert args[args.index("--allow-user") + 1] == "marge-bot"

    # the views: the machine lists its own runner only; the GitLab JSON shows the gateway runner as such
    (info,) = (await http.get(f"/api/v1/machine/{mac_of(1)}/")).json()["runners"]
    assert info["runner_id"] == dut["id"]
    listed = (await http.get("/api/v1/gitlab")).json()
    (gw_listed,) = [r for r in listed["runners"] if r["gateway"]]
    assert gw_listed["mac_address"] is None and gw_listed["runner_id"] == runner["id"]
    assert [r["mac_address"] for r in listed["runners"] if not r["gateway"]] == [mac_of(1)]
    inst = listed["instances"]["fdo"]
    assert inst["runners"] == 2 and inst["gateway_runner"]["runner_id"] == runner["id"]
    assert inst["gateway_runner"]["state"] == "ok" and inst["gateway_runner"]["tags"] == GATEWAY_TAGS
    assert runner["token"] not in str(listed)

    # the stray clean-up deletes our-prefixed runners it does not know, never the gateway runner
    stray = fake.add_runner("test-virtio-7", ["old"])
    state = (await http.post("/api/v1/gitlab/fdo/sync")).json()
    assert state["state"] == "ok" and stray["id"] not in fake.runners
    assert sorted(fake.runners) == sorted([runner["id"], dut["id"]])

    # the DUT's runner follows its machine; the gateway runner stays
    assert (await http.post(f"/api/v1/machine/{mac_of(1)}/retire")).status_code == 200
    await eventually(lambda: list(fake.runners) == [runner["id"]], "DUT runner deleted, gateway runner kept")
    await eventually(lambda: list(entries(farm)) == ["test-gateway"], "config.toml without the DUT")

    # the instance stops exposing: the gateway runner goes too, and comes back with it
    await http.patch("/api/v1/gitlab/fdo", json={"expose_runners": False})
    await eventually(lambda: not fake.runners, "gateway runner deleted when the instance stops exposing")
    # GitLab forgets it first; our row and config.toml follow once the deletion is stored
    await eventually(lambda: farm.gitlab.instance_json("fdo")["gateway_runner"] is None, "gateway runner forgotten")
    await eventually(lambda: not entries(farm), "config.toml without the gateway runner")
    await http.patch("/api/v1/gitlab/fdo", json={"expose_runners": True})
    await eventually(lambda: fake.by_description("test-gateway"), "gateway runner back")


async def _rows_if(farm, n: int):
    rows = await stored_runners(farm)
    return rows if len(rows) == n else None


async def test_a_refused_gateway_token_is_renewed_like_a_duts(farm, http, fake):
    await add_instance(http, fake)
    runner = await gateway_runner(farm, fake)
    fake.revoke(runner["id"])  # an admin reset its token

    move_clock(farm, HOUR + 1)
    state = await farm.gitlab.sync("fdo", full=True)
    assert fake.requests.count(VERIFY) == 1 and runner["id"] not in fake.runners
    (new,) = fake.by_description("test-gateway")
    assert new["id"] != runner["id"] and new["tag_list"] == GATEWAY_TAGS
    row = (await stored_runners(farm))[GATEWAY]
    assert (row.runner_id, row.token) == (new["id"], new["token"])
    assert config_tokens(farm) == {"test-gateway": new["token"]}
    assert state["verify_result"] == "1 refused (replaced)"
    assert state["gateway_runner"]["verify"].startswith("renewed: GitLab refused its token (HTTP 403")

    move_clock(farm, 2 * HOUR + 2)  # the new token is good: kept
    state = await farm.gitlab.sync("fdo", full=True)
    assert list(fake.runners) == [new["id"]] and state["verify_result"] == "1 valid"


async def test_restarted_with_the_setting_off_the_gateway_runner_is_deleted(tmp_path, fake):
    def settings(gateway: bool):
        return make_settings(
            tmp_path / "data", gitlab_retry_max=0.4, gitlab_timeout=2.0, gitlab_gateway_runner=gateway
        )

    first = Farm(settings(True))
    await first.start()
    try:
        async with httpx.AsyncClient(base_url=api_url(first), headers={"Authorization": f"Bearer {first.token}"}) as h:
            await add_instance(h, fake)
            await add_machine(h, 1)
            runner = await gateway_runner(first, fake)
            (dut,) = await eventually(lambda: fake.by_description("test-virtio-1"), "DUT runner created")
            await eventually(lambda: len(entries(first)) == 2, "config.toml with both")
    finally:
        await first.stop()

    second = Farm(settings(False))
    await second.start()
    try:
        assert "test-gateway" not in entries(second)  # config.toml drops it at start, before GitLab is asked
        state = await second.gitlab.sync("fdo", full=True)
        assert state["state"] == "ok" and state["gateway_runner"] is None
        assert list(fake.runners) == [dut["id"]] and runner["id"] not in fake.runners
        assert ("DELETE", f"/api/v4/runners/{runner['id']}") in fake.requests
        assert set(await stored_runners(second)) == {mac_of(1)}
        assert list(entries(second)) == ["test-virtio-1"]
    finally:
        await second.stop()


async def test_gateway_executor_stages_run_without_a_dut(farm, vivian, http, fake, tmp_path):
    farm.jobs.drain_delay = 0.2
    reg = {"base_name": "virtio", "tags": TAGS, "mac_address": mac_of(1), "ip_address": "10.42.0.1"}
    assert (await http.post("/api/v1/machine/", json=reg)).status_code == 200
    patch = {"pdu": "vpdu1", "pdu_port_id": "1", "ready_for_service": True, "pdu_off_delay": 0.2}
    assert (await http.patch(f"/api/v1/machine/{mac_of(1)}/", json=patch)).status_code == 200
    await add_instance(http, fake)
    await gateway_runner(farm, fake)
    entry = entries(farm)["test-gateway"]
    custom = entry["custom"]
    stage = {name: Stage(custom[f"{name}_exec"], custom[f"{name}_args"]) for name in ("config", "prepare", "run")}
    stage["cleanup"] = Stage(custom["cleanup_exec"], custom["cleanup_args"])
    build_dir = Path(entry["builds_dir"]) / "4242"

    rc, out, err = await stage["config"]()
    assert rc == 0, err
    answer = json.loads(out)
    assert Path(answer["builds_dir"]) == build_dir and "VALVE_CONSOLE_MACHINE" not in answer["job_env"]

    # prepare: the pre-build filter first, then only the backend (there is no DUT to check)
    stage["prepare"].env.update({"CUSTOM_ENV_GITLAB_USER_LOGIN": "eve", "CUSTOM_ENV_CI_PROJECT_NAMESPACE": "eve"})
    rc, _, err = await stage["prepare"]()
    assert rc == BUILD_FAILURE and "Access denied: user eve" in err and not build_dir.exists()
    stage["prepare"].env["CUSTOM_ENV_GITLAB_USER_LOGIN"] = "marge-bot"
    rc, out, err = await stage["prepare"]()
    assert rc == 0, err
    assert "runs on the gateway" in out and "mesa/mesa" in out and build_dir.is_dir()
    args = list(custom["prepare_args"])
    args[args.index("--api") + 1] = "http://127.0.0.1:9"
    rc, _, err = await stage["prepare"](args=args)
    assert rc == SYSTEM_FAILURE and "unreachable" in err

    # run: no VALVE_CONSOLE_MACHINE, even if gitlab-runner's own environment had one; the CI script names its
    # DUT with -i, and the job lands there
    stage["run"].env["VALVE_CONSOLE_MACHINE"] = mac_of(9)
    script = tmp_path / "gateway-job.sh"
    script.write_text(
        "set -eo pipefail\n"
        'echo "machine=${VALVE_CONSOLE_MACHINE-unset}" > env.txt\n'
        'echo "url=$VALVE_CONSOLE_URL" >> env.txt\n'
        'echo "token=$VALVE_CONSOLE_TOKEN" >> env.txt\n'
        "cat > job.yml <<'EOF'\n" + job_yaml("pass") + "EOF\n"
        f"'{custom['run_exec']}' job run -i {mac_of(1)} job.yml\n"
    )
    rc, out, err = await stage["run"](str(script), "step_script")
    assert rc == 0, err
    assert "Execution is over, pipeline status: 0" in out
    env = dict(line.split("=", 1) for line in (build_dir / "env.txt").read_text().splitlines())
    assert env == {"machine": "unset", "url": custom["prepare_args"][custom["prepare_args"].index("--api") + 1],
                   "token": farm.token}
    jobs = (await http.get("/api/v1/jobs")).json()["jobs"]
    assert [j["machine"] for j in jobs] == [mac_of(1)] and jobs[0]["status"] == "PASS"

    rc, _, err = await stage["cleanup"]()
    assert rc == 0, err
    assert not build_dir.exists()

    # a runner is a DUT's or the gateway's, never both: refused in words
    rc, _, err = await stage["prepare"]("--machine", mac_of(1))
    assert rc == SYSTEM_FAILURE and "--machine" in err and "--gateway" in err and "not both" in err
