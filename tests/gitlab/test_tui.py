"""Pilot: the runner in the DUT table, the "Exposed on GitLab" toggle, the instance on the overview."""

from __future__ import annotations

from typing import AsyncIterator

import pytest
from textual.widgets import Checkbox

from tests.conftest import api_url
from tests.conftest import eventually
from tests.gitlab.conftest import add_instance, add_machine, mac_of
from tests.tui.helpers import screen_text, wait_for, wait_text
from valve_console.app import ConsoleApp, make_app
from valve_console.client import FarmClient
from valve_console.screens.machine_form import MachineFormScreen

SIZE = (160, 45)


@pytest.fixture
async def app(farm) -> AsyncIterator[ConsoleApp]:
    client = FarmClient(api_url(farm), token=farm.token)
    try:
        yield make_app(client, linux_console=False)
    finally:
        await client.close()


async def test_runner_column_and_exposed_toggle(farm, http, fake, app: ConsoleApp) -> None:
    await add_instance(http, fake)
    await add_machine(http, 1)
    (runner,) = await eventually(lambda: list(fake.runners.values()), "runner created")
    mac = mac_of(1)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.model.loaded and app.connected, 10, "the first fetch")
        await wait_text(pilot, "fdo ok (1 runners")  # the overview's service list names each instance
        await pilot.press("4")
        table = app.screen.table
        await wait_for(pilot, lambda: mac in table.rows, 5, "the machine's row")
        await wait_for(pilot, lambda: table.get_cell(mac, "runner").plain == f"#{runner['id']}", 5, "runner cell")
        app.screen.select_mac(mac)
        await pilot.press("e")
        await wait_for(pilot, lambda: isinstance(app.screen, MachineFormScreen) and app.screen.mac == mac, 5, "form")
        form = app.screen
        box = form.query_one("#form-gitlab", Checkbox)
        assert box.value is True and "Exposed on GitLab: yes" in str(box.label)
        box.focus()
        await pilot.press("space")
        assert box.value is False and "Exposed on GitLab: no" in str(box.label)
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: farm.machines.machines[mac].gitlab_exposed is False, 5, "the PATCH")
        await wait_for(pilot, lambda: app.current_mode == "duts", 5, "back to the DUT table")
        await eventually(lambda: not fake.runners, "runner deleted on GitLab")
        table = app.screen.table
        await wait_for(pilot, lambda: table.get_cell(mac, "runner").plain == "off", 5, "runner cell off")
        assert "Runner" in screen_text(app)


async def test_overview_names_the_gitlab_and_a_vivian_stand_in(farm, http, fake, app: ConsoleApp) -> None:
    """The Farm box's GitLab line comes from the instance's own answer (GET /version through the backend's
    sync): 'none configured', then the stand-in named as such, then a GitLab that is not Vivian's."""
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.model.loaded and app.connected, 10, "the first fetch")
        await wait_text(pilot, "none configured")
        await add_instance(http, fake)
        await wait_text(pilot, "fdo is a Vivian stand-in (GitLab 17.0.0-vivian)")
        assert fake.url in screen_text(app)
    # the same answer without the marker: a GitLab like any other, no stand-in said
    fake.version = "16.9.0-ee"
    assert (await http.post("/api/v1/gitlab/fdo/sync")).json()["version"] == "16.9.0-ee"
    client = FarmClient(api_url(farm), token=farm.token)
    try:
        again = make_app(client, linux_console=False)
        async with again.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: again.model.loaded and again.connected, 10, "the first fetch")
            await wait_text(pilot, "fdo GitLab 16.9.0-ee")
            assert "stand-in" not in screen_text(again)
    finally:
        await client.close()
