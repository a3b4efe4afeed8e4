"""The pre-build filter (valve-infra's pre-build ACL, here the ``gitlab_allowed_users``/``_namespaces``
settings): it reaches the prepare stage through the config.toml the farm renders, and prepare refuses
the jobs of other users and namespaces with the build-failure exit code."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import eventually
from tests.gitlab.conftest import add_instance, add_machine, mac_of
from tests.gitlab.test_executor import BUILD_FAILURE, Stage
from valve_console.gitlab_executor import admitted


@pytest.fixture
def farm_overrides() -> dict[str, Any]:
    """This module's farm admits jobs of marge-bot, or of mesa and gfx-ci/drivers."""
    return {"gitlab_allowed_users": ["marge-bot"], "gitlab_allowed_namespaces": ["mesa", "gfx-ci/drivers/"]}


def test_the_filter_rule():
    assert admitted("anyone", "anywhere", [], [])  # no lists: everyone, as before
    assert admitted("", "", [], [])
    users, spaces = ["marge-bot"], ["mesa", "gfx-ci/drivers"]
    assert admitted("marge-bot", "someone/fork", users, spaces)
    assert admitted("Marge-Bot", "", users, spaces)  # GitLab paths are unique whatever the case
    assert admitted("eve", "mesa", users, spaces) and admitted("eve", "mesa/ci/deep", users, spaces)
    assert admitted("eve", "gfx-ci/drivers/radv", users, spaces)
    assert not admitted("eve", "mesa-fork", users, spaces)  # a prefix is not a parent
    assert not admitted("eve", "gfx-ci", users, spaces)  # nor is a parent a child
    assert not admitted("eve", "eve", users, spaces) and not admitted("", "", users, spaces)
    assert not admitted("eve", "mesa", users, [])  # users only: the namespace does not help


async def test_prepare_admits_listed_users_and_namespaces_only(farm, http, fake):
    await add_instance(http, fake)
    await add_machine(http, 1)
    path = farm.gitlab.config_path

    def runner():
        config = tomllib.loads(path.read_text()) if path.exists() else {}
        return (config.get("runners") or [None])[0]

    custom = (await eventually(runner, "config.toml with the runner"))["custom"]
    args = custom["prepare_args"]
    assert args[-1] == "prepare" and args[args.index("--machine") + 1] == mac_of(1)
    assert args[args.index("--allow-user") + 1] == "marge-bot"
    assert [args[i + 1] for i, a in enumerate(args) if a == "--allow-namespace"] == ["mesa", "gfx-ci/drivers"]
    for other in ("config", "run", "cleanup"):
        assert "--allow-user" not in custom[f"{other}_args"]
    prepare = Stage(custom["prepare_exec"], args)
    build_dir = Path(runner()["builds_dir"]) / "4242"

    async def as_(user: str, namespace: str) -> tuple[int, str, str]:
        prepare.env.update({"CUSTOM_ENV_GITLAB_USER_LOGIN": user, "CUSTOM_ENV_CI_PROJECT_NAMESPACE": namespace})
        return await prepare()

    rc, out, err = await as_("eve", "eve")
    assert rc == BUILD_FAILURE, (out, err)
    assert "Access denied: user eve in namespace eve may not run jobs on this farm" in err
    assert not build_dir.exists()  # refused before anything was prepared
    rc, _, err = await as_("eve", "mesa-fork")
    assert rc == BUILD_FAILURE and "namespace mesa-fork may not run" in err

    for user, namespace in (("marge-bot", "someone"), ("eve", "mesa"), ("eve", "gfx-ci/drivers/radv")):
        rc, out, err = await as_(user, namespace)
        assert rc == 0, (user, namespace, err)
        assert "test-virtio-1" in out and build_dir.is_dir()
