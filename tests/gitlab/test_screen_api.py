"""The API behind the console's GitLab screen: instances checked on GitLab before they are stored, a
runner's token renewed on demand, config.toml and the pre-build filter in the listing."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from sqlmodel import select

from tests.conftest import eventually
from tests.gitlab.conftest import add_instance, add_machine, mac_of
from tests.gitlab.fake_gitlab import ADMIN_TOKEN, FakeGitlab
from valve_console.backend.models import GitlabInstance


@pytest.fixture
def farm_overrides() -> dict[str, Any]:
    return {"gitlab_allowed_users": ["marge-bot"], "gitlab_allowed_namespaces": ["mesa"]}


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def stored_instances(farm) -> list[GitlabInstance]:
    return await farm.store.run(lambda s: list(s.exec(select(GitlabInstance)).all()))


async def test_a_wrong_token_or_url_is_refused_in_gitlabs_words_and_nothing_is_stored(farm, http, fake) -> None:
    r = await http.post("/api/v1/gitlab", json={"name": "fdo", "url": fake.url, "token": "glpat-wrong"})
    assert r.status_code == 400, r.text
    assert r.json()["error"] == f"GitLab at {fake.url} refused the token: 401 Unauthorized"
    url = f"http://127.0.0.1:{closed_port()}"
    r = await http.post("/api/v1/gitlab", json={"name": "fdo", "url": url, "token": ADMIN_TOKEN})
    assert r.status_code == 400 and r.json()["error"].startswith(f"GitLab at {url} cannot be reached: ")
    r = await http.post("/api/v1/gitlab", json={"name": "fdo", "url": fake.url + "/not-gitlab", "token": ADMIN_TOKEN})
    assert r.status_code == 400 and "no GitLab API at" in r.json()["error"]
    assert (await http.get("/api/v1/gitlab")).json()["instances"] == {}
    assert await stored_instances(farm) == []
    assert ("GET", "/api/v4/runners") in fake.requests


async def test_an_edit_with_a_wrong_token_changes_nothing(farm, http, fake) -> None:
    await add_instance(http, fake)
    r = await http.patch("/api/v1/gitlab/fdo", json={"token": "glpat-wrong"})
    assert r.status_code == 400 and "refused the token: 401 Unauthorized" in r.json()["error"]
    (row,) = await stored_instances(farm)
    assert row.token == ADMIN_TOKEN and farm.gitlab.instances["fdo"].token == ADMIN_TOKEN
    # a change that does not touch the URL or tokens is not sent to GitLab first
    calls = len(fake.requests)
    r = await http.patch("/api/v1/gitlab/fdo", json={"farm_tags": ["farm:x"]})
    assert r.status_code == 200 and ("GET", "/api/v4/runners") not in fake.requests[calls:]


async def test_renew_gives_the_runner_a_new_verified_token(farm, http, fake: FakeGitlab) -> None:
    await add_instance(http, fake)
    await add_machine(http, 1)
    (old,) = await eventually(lambda: list(fake.runners.values()), "runner created")
    mac = mac_of(1)
    r = await http.post(f"/api/v1/gitlab/fdo/runners/{mac.upper()}/renew")
    assert r.status_code == 200, r.text
    new = r.json()
    assert new["mac_address"] == mac and new["runner_id"] != old["id"]
    assert new["verify"] == "renewed: asked by the operator" and new["verified_at"]
    assert old["id"] not in fake.runners
    row = farm.gitlab.runners[("fdo", mac)]
    assert fake.by_token(row.token)["id"] == new["runner_id"]  # GitLab knows (verifies) the new token
    assert row.token in farm.gitlab.config_path.read_text() and old["token"] not in farm.gitlab.config_path.read_text()
    r = await http.post(f"/api/v1/gitlab/fdo/runners/{mac_of(2)}/renew")
    assert r.status_code == 404 and "no runner" in r.json()["error"]
    r = await http.post("/api/v1/gitlab/nope/runners/gateway/renew")
    assert r.status_code == 404


async def test_listing_says_when_config_toml_was_written_and_the_filter(farm, http, fake) -> None:
    await add_instance(http, fake)
    await add_machine(http, 1)
    await eventually(lambda: farm.gitlab.config_runners == 1, "config.toml with the runner")
    listing = (await http.get("/api/v1/gitlab")).json()
    assert listing["config_path"] == str(farm.gitlab.config_path)
    assert listing["config_runners"] == 1 and listing["config_written_at"] > 0
    assert listing["allowed_users"] == ["marge-bot"] and listing["allowed_namespaces"] == ["mesa"]
    (runner,) = listing["runners"]
    assert runner["description"] == "test-virtio-1" and runner["error"] is None
