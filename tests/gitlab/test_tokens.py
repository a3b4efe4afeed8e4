"""Runner tokens (valve-infra's verify_or_renew_token): POST /runners/verify at most every
``gitlab_verify_interval``, a refused (403) or expiring token replaced by a new runner, an outage or any
other answer never costs a token. Time is moved through ``RunnerService.clock``, never waited for."""

from __future__ import annotations

import time
import tomllib

from tests.conftest import eventually
from tests.gitlab.conftest import TAGS, add_instance, add_machine, mac_of
from tests.gitlab.test_runners import stored_runners

VERIFY = ("POST", "/api/v4/runners/verify")
HOUR, DAY = 3600.0, 86400.0


def config_tokens(farm) -> dict[str, str]:
    """Runner name → token in the config.toml gitlab-runner reads."""
    config = tomllib.loads(farm.gitlab.config_path.read_text())
    return {r["name"]: r["token"] for r in config.get("runners", [])}


def move_clock(farm, seconds: float) -> None:
    """The service's token clock runs ``seconds`` ahead of the real one."""
    farm.gitlab.clock = lambda: time.time() + seconds


async def one_runner(farm, fake) -> dict:
    (runner,) = await eventually(lambda: fake.by_description("test-virtio-1"), "runner created")
    row = (await eventually(lambda: stored_runners(farm), "runner stored"))[mac_of(1)]
    assert row.token == runner["token"]
    await eventually(lambda: config_tokens(farm).get("test-virtio-1") == runner["token"], "config.toml")
    return runner


async def test_a_refused_token_is_replaced_and_checks_wait_for_the_interval(farm, http, fake):
    await add_instance(http, fake)
    await add_machine(http, 1)
    runner = await one_runner(farm, fake)
    fake.revoke(runner["id"])  # an admin reset the token: GitLab refuses ours from now on

    # a fresh token needs no check: full syncs within the interval do not call verify
    for _ in range(2):
        state = await farm.gitlab.sync("fdo", full=True)
    assert fake.requests.count(VERIFY) == 0 and state["state"] == "ok"
    assert (await stored_runners(farm))[mac_of(1)].runner_id == runner["id"]

    # an hour later the next full sync verifies: 403, so the old runner goes and a new one comes
    move_clock(farm, HOUR + 1)
    state = await farm.gitlab.sync("fdo", full=True)
    assert fake.requests.count(VERIFY) == 1
    assert runner["id"] not in fake.runners
    assert ("DELETE", f"/api/v4/runners/{runner['id']}") in fake.requests
    (new,) = fake.by_description("test-virtio-1")
    assert new["id"] != runner["id"] and new["tag_list"] == [*TAGS, "farm:test"]
    row = (await stored_runners(farm))[mac_of(1)]
    assert (row.runner_id, row.token) == (new["id"], new["token"])
    assert config_tokens(farm) == {"test-virtio-1": new["token"]}
    assert state["verify_result"] == "1 refused (replaced)" and state["last_verify"] >= time.time() + HOUR
    (info,) = (await http.get(f"/api/v1/machine/{mac_of(1)}/")).json()["runners"]
    assert info["runner_id"] == new["id"] and info["state"] == "ok"
    assert info["verify"].startswith("renewed: GitLab refused its token (HTTP 403")
    listed = (await http.get("/api/v1/gitlab")).json()
    assert listed["instances"]["fdo"]["verify_result"] == "1 refused (replaced)"
    assert listed["runners"][0]["verify"] == info["verify"] and new["token"] not in str(listed)

    # the new token is good: no second replacement, and no check again before the interval
    await farm.gitlab.sync("fdo", full=True)
    assert fake.requests.count(VERIFY) == 1 and list(fake.runners) == [new["id"]]
    move_clock(farm, 2 * HOUR + 2)
    state = await farm.gitlab.sync("fdo", full=True)
    assert fake.requests.count(VERIFY) == 2 and list(fake.runners) == [new["id"]]
    assert state["verify_result"] == "1 valid"


async def test_a_verify_error_or_an_outage_keeps_the_token(farm, http, fake):
    await add_instance(http, fake)
    await add_machine(http, 1)
    runner = await one_runner(farm, fake)
    old = fake.revoke(runner["id"])  # the token is bad, but GitLab cannot tell us now

    fake.verify_status = 500
    move_clock(farm, HOUR + 1)
    state = await farm.gitlab.sync("fdo", full=True)
    assert fake.requests.count(VERIFY) == 1 and state["state"] == "ok"
    assert state["verify_result"] == "1 unverified (kept)"
    assert list(fake.runners) == [runner["id"]] and (await stored_runners(farm))[mac_of(1)].token == old
    assert config_tokens(farm) == {"test-virtio-1": old}
    (info,) = (await http.get(f"/api/v1/machine/{mac_of(1)}/")).json()["runners"]
    assert info["verify"].startswith("unverified: HTTP 500")

    # GitLab unreachable: the check is inconclusive, the instance is unreachable, the token stays
    fake.verify_status = None
    fake.stop()
    move_clock(farm, 2 * HOUR + 2)
    state = await farm.gitlab.sync("fdo", full=True)
    assert state["state"] == "unreachable"
    assert (await stored_runners(farm))[mac_of(1)].token == old and config_tokens(farm) == {"test-virtio-1": old}
    (info,) = (await http.get(f"/api/v1/machine/{mac_of(1)}/")).json()["runners"]
    assert info["verify"].startswith("unverified: ConnectionError")

    # back: the next check (after the interval) gets its 403 and the runner is replaced
    fake.start()
    move_clock(farm, 3 * HOUR + 3)
    state = await farm.gitlab.sync("fdo", full=True)
    assert state["state"] == "ok" and runner["id"] not in fake.runners
    (new,) = fake.by_description("test-virtio-1")
    assert config_tokens(farm) == {"test-virtio-1": new["token"]}


async def test_a_token_about_to_expire_is_renewed_once(farm, http, fake):
    fake.token_lifetime = 2 * DAY  # POST /user/runners answers a token_expires_at two days ahead
    await add_instance(http, fake)
    await add_machine(http, 1)
    runner = await one_runner(farm, fake)
    (info,) = (await http.get(f"/api/v1/machine/{mac_of(1)}/")).json()["runners"]
    assert info["token_expires_at"] == runner["token_expires_at"].replace(".000Z", "Z")

    move_clock(farm, DAY / 2)  # a day and a half left: kept
    await farm.gitlab.sync("fdo", full=True)
    assert list(fake.runners) == [runner["id"]]

    move_clock(farm, 1.5 * DAY)  # half a day left: renewed by the same path as a refused token
    state = await farm.gitlab.sync("fdo", full=True)
    assert runner["id"] not in fake.runners
    (new,) = fake.by_description("test-virtio-1")
    assert config_tokens(farm) == {"test-virtio-1": new["token"]} and new["token"] != runner["token"]
    assert "1 expiring (replaced)" in state["verify_result"]
    (info,) = (await http.get(f"/api/v1/machine/{mac_of(1)}/")).json()["runners"]
    assert info["verify"].startswith("renewed: its token expires at ")

    # the new token lives on: the next sync does not churn the runner
    await farm.gitlab.sync("fdo", full=True)
    assert list(fake.runners) == [new["id"]]
