"""GET/PATCH /api/v1/settings on a real backend: every setting with its source, secrets masked, run-time
changes applied live, kept in <data>/settings.toml across restarts, all or nothing, operator only."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from tests.conftest import api_url, make_settings, running_farm
from valve_console.backend.registration import Registration
from valve_console.backend.settings_store import EDITABLE

MAC = "52:54:00:5e:77:01"
SECRET = "s3cr3t-registry-pw"


def by_name(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in body["settings"]}


def operator(farm: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=api_url(farm), headers={"Authorization": f"Bearer {farm.token}"})


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


async def test_get_lists_every_setting_with_its_source_and_masks_secrets(data: Path, monkeypatch) -> None:
    monkeypatch.setenv("VALVE_CONSOLE_JOB_VARIABLES", '{"registry_password": "%s", "mirror": "m.test"}' % SECRET)
    monkeypatch.setenv("VALVE_CONSOLE_GITLAB_TIMEOUT", "7")
    async with running_farm(make_settings(data)) as farm, operator(farm) as http:
        r = await http.get("/api/v1/settings")
        assert r.status_code == 200, r.text
        assert SECRET not in r.text
        body = r.json()
        rows = by_name(body)
        assert set(body["editable"]) == set(EDITABLE)
        assert body["file"] == str(data / "settings.toml")
        from valve_console.config import Settings

        assert set(rows) == set(Settings.model_fields)
        jv = rows["job_variables"]
        assert jv["value"] == {"registry_password": "********", "mirror": "m.test"} and jv["secret"] is True
        assert jv["source"] == "environment" and jv["variable"] == "VALVE_CONSOLE_JOB_VARIABLES"
        assert rows["gitlab_timeout"] == {"name": "gitlab_timeout", "value": 7.0, "source": "environment",
                                          "variable": "VALVE_CONSOLE_GITLAB_TIMEOUT", "editable": True,
                                          "secret": False}
        assert rows["training_retry_max"]["source"] == "default"
        assert rows["training_retry_max"]["editable"] is False
        assert rows["farm_name"]["source"] == "start-up"  # given by the program that started the farm (the test)
        assert rows["data_dir"]["value"] == str(data)


def test_database_url_password_is_masked() -> None:
    from valve_console.backend.settings_store import mask

    assert mask("database_url", "postgresql://farm:hunter2@db.test/farm") == (
        "postgresql://farm:********@db.test/farm", True)
    assert mask("operator_token", "abc") == ("********", True)
    assert mask("farm_name", "valve") == ("valve", False)


async def test_patch_takes_effect_live_and_survives_a_restart(data: Path, monkeypatch) -> None:
    monkeypatch.setenv("VALVE_CONSOLE_GITLAB_SYNC_INTERVAL", "300")
    changes = {"training_loops": 6, "training_qualify": 5, "default_pdu_off_delay": 1.5,
               "gitlab_sync_interval": 42, "gitlab_verify_interval": 600, "trusted_networks": "192.0.2.0/24"}
    async with running_farm(make_settings(data)) as farm, operator(farm) as http:
        await farm.machines.register(Registration(base_name="virtio", mac_address=MAC, ip_address="10.42.9.1"))
        r = await http.patch("/api/v1/settings", json=changes)
        assert r.status_code == 200, r.text
        rows = by_name(r.json())
        assert rows["training_loops"]["value"] == 6 and rows["training_loops"]["source"] == "data dir file"
        assert rows["trusted_networks"]["value"] == ["192.0.2.0/24"]
        assert "VALVE_CONSOLE_GITLAB_SYNC_INTERVAL=300" in rows["gitlab_sync_interval"]["overrides"]
        # live: the machine's JSON, the next training's counts, GitLab's intervals, the trusted networks
        machine = (await http.get(f"/api/v1/machine/{MAC}")).json()
        assert machine["pdu_off_delay"] == 1.5 and machine["pdu_off_delay_is_default"] is True
        assert farm.power.default_off_delay == 1.5
        assert farm.machines.training_counts(farm.machines.machines[MAC]) == (6, 5)
        assert farm.gitlab.settings.gitlab_sync_interval == 42
        instance = SimpleNamespace(name="gl", url="https://gitlab.test", token="t")
        assert farm.gitlab._api(instance).gl.timeout == 10.0  # type: ignore[arg-type]
        assert (await http.patch("/api/v1/settings", json={"gitlab_timeout": 4})).status_code == 200
        assert farm.gitlab._api(instance).gl.timeout == 4.0  # type: ignore[arg-type]  # the next call's client
        assert farm.trust.is_trusted("192.0.2.7") and not farm.trust.is_trusted("198.51.100.1")
        path = data / "settings.toml"
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert "training_loops = 6" in path.read_text()
    async with running_farm(make_settings(data)) as farm, operator(farm) as http:
        rows = by_name((await http.get("/api/v1/settings")).json())
        assert rows["training_loops"]["value"] == 6 and rows["training_loops"]["source"] == "data dir file"
        assert rows["gitlab_sync_interval"]["value"] == 42.0
        assert farm.power.default_off_delay == 1.5 and farm.view.default_off_delay == 1.5
        assert farm.machines.training_counts(farm.machines.machines[MAC]) == (6, 5)
        assert farm.trust.is_trusted("192.0.2.7")
        # null: back to the start-up value (the environment's), and out of the file
        r = await http.patch("/api/v1/settings", json={"gitlab_sync_interval": None})
        assert r.status_code == 200, r.text
        row = by_name(r.json())["gitlab_sync_interval"]
        assert row["value"] == 300.0 and row["source"] == "environment" and "overrides" not in row
        assert "gitlab_sync_interval" not in (data / "settings.toml").read_text()


@pytest.mark.parametrize("changes, words", [
    ({"training_loops": -1}, "training_loops: Input should be greater than or equal to 1"),
    ({"training_loops": 5, "training_qualify": 6}, "training_qualify (6) cannot be more than training_loops (5)"),
    ({"training_qualify": 50}, "cannot be more than training_loops"),
    ({"trusted_networks": "auto,not-a-net"}, "'not-a-net' is not a network"),
    ({"default_pdu_off_delay": -2}, "default_pdu_off_delay: Input should be greater than or equal to 0"),
    ({"gitlab_timeout": 0}, "gitlab_timeout: Input should be greater than 0"),
    ({"training_loops": "many"}, "training_loops: Input should be a valid integer"),
    ({"training_loops": True}, "is not a number"),
    ({"training_loops": 4, "listen": "0.0.0.0:80"}, "listen cannot change while the farm runs: it is set by "
                                                     "VALVE_CONSOLE_LISTEN"),
    ({"no_such_thing": 1}, "'no_such_thing' is not a setting (a setting would be set by VALVE_CONSOLE_NO_SUCH_THING)"),
    ({}, "nothing to change"),
])
async def test_bad_changes_are_refused_and_nothing_changes(data: Path, changes: dict[str, Any], words: str) -> None:
    async with running_farm(make_settings(data)) as farm, operator(farm) as http:
        assert (await http.patch("/api/v1/settings", json={"gitlab_retry_max": 99})).status_code == 200
        path = data / "settings.toml"
        before_file = path.read_bytes()
        before = (await http.get("/api/v1/settings")).json()
        r = await http.patch("/api/v1/settings", json=changes)
        assert r.status_code == 400, r.text
        assert words in r.json()["error"]
        assert (await http.get("/api/v1/settings")).json() == before
        assert path.read_bytes() == before_file
        assert farm.machines.training_defaults == (20, 19)
        assert farm.settings.training_loops == 20


async def test_a_body_that_is_no_object_is_refused(farm) -> None:
    async with operator(farm) as http:
        r = await http.patch("/api/v1/settings", json=[1, 2])
        assert r.status_code in (400, 422), r.text
        assert "error" in r.json()


async def test_only_the_operator_reads_and_changes_settings(farm) -> None:
    async with httpx.AsyncClient(base_url=api_url(farm)) as anonymous:
        r = await anonymous.patch("/api/v1/settings", json={"training_loops": 3})
        assert r.status_code == 401 and "token" in r.json()["error"]
        assert (await anonymous.get("/api/v1/settings")).status_code == 401
    assert farm.settings.training_loops == 20
    assert not (farm.settings.data_dir / "settings.toml").exists()


async def test_a_change_is_published_for_open_consoles(farm) -> None:
    from valve_console.client import FarmClient
    from valve_console.contract import FarmSettings
    import asyncio

    client = FarmClient(api_url(farm), token=farm.token)
    try:
        async def first() -> Any:
            async for event in client.events(["settings"]):
                return event

        reader = asyncio.create_task(first())
        await asyncio.sleep(0.3)
        answer = await client.update_settings({"gitlab_retry_max": 77})
        assert isinstance(answer, FarmSettings)
        event = await asyncio.wait_for(reader, 5)
        data = event.parsed()
        assert isinstance(data, FarmSettings)
        setting = data.get("gitlab_retry_max")
        assert setting is not None and setting.value == 77.0
        assert (await client.settings()).get("gitlab_retry_max") == setting
    finally:
        await client.close()


async def test_a_broken_settings_file_stops_the_start_in_words(data: Path) -> None:
    from valve_console.backend.farm import Farm, FarmStartError

    data.mkdir(parents=True)
    (data / "settings.toml").write_text("training_loops = -4\n")
    farm = Farm(make_settings(data))
    try:
        with pytest.raises(FarmStartError, match="settings.toml: training_loops: Input should be greater"):
            await farm.start()
    finally:
        await farm.stop()
