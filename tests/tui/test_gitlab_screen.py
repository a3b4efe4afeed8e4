"""The GitLab screen (key 8): Pilot against a real farm and the fake GitLab HTTP API; snapshots against the
fixed fake farm (its GitLab section), also under TERM=linux."""

from __future__ import annotations

from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Input, Static

from tests.gitlab.conftest import add_instance, add_machine, fake, farm, http, mac_of  # noqa: F401 - fixtures
from tests.gitlab.fake_gitlab import ADMIN_TOKEN, FakeGitlab
from valve_console.app import ConsoleApp, make_app
from valve_console.screens.dialogs import ConfirmScreen
from valve_console.screens.gitlab import GitlabFormScreen, GitlabScreen

from .fake_farm import JOURNAL_EVENTS, FakeFarmClient
from .helpers import screen_text, wait_for, wait_text

SIZE = (160, 45)


@pytest.fixture
def farm_overrides() -> dict[str, Any]:
    """tests/gitlab's farm (imported with its fake GitLab and http fixtures), with a pre-build filter to show."""
    return {"gitlab_allowed_users": ["marge-bot"]}


async def open_gitlab(pilot: Pilot[Any], app: ConsoleApp) -> GitlabScreen:
    await wait_for(pilot, lambda: app.model.loaded and app.connected, 10, "the first fetch")
    await pilot.press("8")
    await wait_for(pilot, lambda: isinstance(app.screen, GitlabScreen) and app.screen.gitlab is not None, 5,
                   "the GitLab screen")
    assert isinstance(app.screen, GitlabScreen)
    return app.screen


async def confirm(pilot: Pilot[Any], app: ConsoleApp) -> None:
    await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), 5, "the confirmation")
    await pilot.press("y")


def form_error(app: ConsoleApp) -> str:
    return str(app.screen.query_one("#gitlab-form-error", Static).content)


def fill(form: GitlabFormScreen, **values: str) -> None:
    for field, value in values.items():
        form.query_one(f"#gl-{field.replace('_', '-')}", Input).value = value


async def test_form_refuses_bad_input_and_a_wrong_token_then_adds_a_good_one(farm, fake, app) -> None:  # noqa: F811 - the fixtures imported above
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_gitlab(pilot, app)
        await wait_text(pilot, "none yet: press a to add one")
        await wait_text(pilot, "pre-build filter: users marge-bot")
        await pilot.press("a")
        await wait_for(pilot, lambda: isinstance(app.screen, GitlabFormScreen), 5, "the form")
        form = app.screen
        assert isinstance(form, GitlabFormScreen)
        assert form.query_one("#gl-token", Input).password  # typed masked
        # bad input: said in the form, nothing sent
        calls = len(fake.requests)
        await pilot.press(*"fdo")
        fill(form, url="gitlab.example")
        await pilot.press("ctrl+s")
        await wait_text(pilot, "expected an http(s):// URL")
        assert "a token is needed" in screen_text(app) and form_error(app) == "not saved: fix the fields above"
        assert len(fake.requests) == calls and not farm.gitlab.instances
        # a wrong token: GitLab's answer in words, nothing stored
        fill(form, url=fake.url)
        form.query_one("#gl-token", Input).focus()
        await pilot.press(*"glpat-wrong")
        await pilot.press("ctrl+s")
        refused = f"not saved: GitLab at {fake.url} refused the token: 401 Unauthorized"
        await wait_for(pilot, lambda: form_error(app) == refused, 10, "GitLab's refusal in the form")
        assert "glpat-wrong" not in screen_text(app)
        assert isinstance(app.screen, GitlabFormScreen) and not farm.gitlab.instances
        # the right one: stored, listed
        fill(form, token=ADMIN_TOKEN, tags="farm:test, gpu")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: app.screen is screen, 5, "back on the GitLab screen")
        await wait_text(pilot, "GitLab instance fdo added")
        await wait_for(pilot, lambda: "fdo" in screen.instance_table.rows, 5, "the instance's row")
        assert farm.gitlab.instances["fdo"].token == ADMIN_TOKEN
        assert farm.gitlab.instances["fdo"].farm_tags == ["farm:test", "gpu"]
        assert ADMIN_TOKEN not in screen_text(app)
        # edit: a wrong token is refused and the stored one kept; esc leaves the form
        await pilot.press("e")
        await wait_for(pilot, lambda: isinstance(app.screen, GitlabFormScreen), 5, "the edit form")
        form = app.screen
        assert form.query_one("#gl-token", Input).value == ""  # never shown back
        fill(form, token="glpat-wrong")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: form_error(app) == refused, 10, "GitLab's refusal in the edit form")
        assert farm.gitlab.instances["fdo"].token == ADMIN_TOKEN
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is screen, 5, "the form closed")
        # remove (asks first)
        screen.select_instance("fdo")
        await pilot.press("x")
        await confirm(pilot, app)
        await wait_for(pilot, lambda: not farm.gitlab.instances, 5, "the instance removed")
        await wait_text(pilot, "GitLab instance fdo removed")


async def test_runners_renew_sync_and_expose(farm, fake, http, app) -> None:  # noqa: F811 - the fixtures imported above
    await add_instance(http, fake)
    await add_machine(http, 1)
    mac = mac_of(1)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_gitlab(pilot, app)
        key = f"fdo|{mac}"
        await wait_for(pilot, lambda: key in screen.runner_table.rows, 10, "the runner's row")
        (old,) = list(fake.runners.values())
        await wait_for(pilot, lambda: str(screen.runner_table.get_cell(key, "runner")) == f"#{old['id']}", 5, "its id")
        assert "valid (new)" in str(screen.runner_table.get_cell(key, "token"))
        assert "config.toml" in screen_text(app) and "1 runners" in screen_text(app)
        # renew its token: a new runner, its new token verified
        assert screen.select_runner("fdo", mac)
        await pilot.press("n")
        await confirm(pilot, app)
        await wait_text(pilot, "renewed: asked by the operator")
        (new,) = await _one_runner(pilot, fake, not_id=old["id"])
        await wait_for(pilot, lambda: str(screen.runner_table.get_cell(key, "runner")) == f"#{new['id']}", 5, "new id")
        assert fake.by_token(farm.gitlab.runners[("fdo", mac)].token)["id"] == new["id"]
        # sync now
        screen.select_instance("fdo")
        await pilot.press("s")
        await confirm(pilot, app)
        await wait_text(pilot, "GitLab fdo synced: ok, 1 runners")
        # un-expose: the runner goes; expose: it comes back
        assert screen.select_runner("fdo", mac)
        await pilot.press("t")
        await confirm(pilot, app)
        await wait_for(pilot, lambda: not fake.runners, 10, "the runner deleted on GitLab")
        assert farm.machines.machines[mac].gitlab_exposed is False
        await wait_for(pilot, lambda: f"|{mac}" in screen.runner_table.rows, 10, "the machine without a runner")
        assert str(screen.runner_table.get_cell(f"|{mac}", "runner")) == "not exposed"
        assert screen.select_runner("", mac)
        await pilot.press("t")
        await confirm(pilot, app)
        await wait_for(pilot, lambda: key in screen.runner_table.rows, 10, "the runner back")
        assert farm.machines.machines[mac].gitlab_exposed is True and len(fake.runners) == 1


async def _one_runner(pilot: Pilot[Any], fake: FakeGitlab, not_id: int) -> list[dict[str, Any]]:  # noqa: F811 - the fixtures imported above
    await wait_for(pilot, lambda: [r["id"] for r in fake.runners.values()] not in ([], [not_id]), 5, "a new runner")
    return list(fake.runners.values())


# ---------------------------------------------------------------- snapshots (the fake farm's GitLab section)
SNAP_SIZE = (140, 45)


def snap_app(linux_console: bool = False) -> ConsoleApp:
    return make_app(FakeFarmClient(events=JOURNAL_EVENTS), linux_console=linux_console)


async def show_gitlab(pilot: Pilot[Any]) -> None:
    app = pilot.app
    await wait_for(pilot, lambda: app.model.loaded and app.connected, 5, "the fake farm")
    await pilot.press("8")
    await wait_for(pilot, lambda: isinstance(app.screen, GitlabScreen) and app.screen.gitlab is not None, 5,
                   "the GitLab screen")
    await pilot.pause(0.2)


def test_gitlab(snap_compare) -> None:
    assert snap_compare(snap_app(), terminal_size=SNAP_SIZE, run_before=show_gitlab)


def test_gitlab_on_the_linux_console(snap_compare) -> None:
    assert snap_compare(snap_app(linux_console=True), terminal_size=SNAP_SIZE, run_before=show_gitlab)


def test_gitlab_form(snap_compare) -> None:
    async def run_before(pilot: Pilot[Any]) -> None:
        await show_gitlab(pilot)
        await pilot.press("e")
        await wait_for(pilot, lambda: isinstance(pilot.app.screen, GitlabFormScreen), 5, "the form")
        for widget in pilot.app.screen.query(Input):
            widget.cursor_blink = False
        await pilot.pause(0.2)

    assert snap_compare(snap_app(), terminal_size=SNAP_SIZE, run_before=run_before)
