"""The Settings view (key 9): every setting from a real backend, the form changing the run-time ones
(live, kept across a restart), refusals shown in the form; snapshots of the view on the fake farm
under TERM=linux."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textual.pilot import Pilot
from textual.widgets import Input, Static

from tests.conftest import api_url, make_settings, running_farm
from valve_console.app import ConsoleApp, make_app
from valve_console.backend.farm import Farm
from valve_console.client import FarmClient
from valve_console.config import Settings
from valve_console.screens.settings import SettingsFormScreen, SettingsScreen

from .fake_farm import JOURNAL_EVENTS, FakeFarmClient
from .helpers import screen_text, wait_for, wait_text

SIZE = (140, 45)


async def open_view(pilot: Pilot[Any]) -> SettingsScreen:
    app = pilot.app
    await wait_for(pilot, lambda: app.model.loaded and app.connected, 10, "the first fetch")
    await pilot.press("9")
    await wait_for(pilot, lambda: isinstance(app.screen, SettingsScreen) and app.screen.shown is not None,
                   10, "the settings")
    screen = app.screen
    assert isinstance(screen, SettingsScreen)
    return screen


async def open_form(pilot: Pilot[Any]) -> SettingsFormScreen:
    await pilot.press("e")
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, SettingsFormScreen), 5, "the settings form")
    form = pilot.app.screen
    assert isinstance(form, SettingsFormScreen)
    return form


def form_error(form: SettingsFormScreen) -> str:
    return str(form.query_one("#settings-error", Static).render())


def row_value(screen: SettingsScreen, name: str) -> str:
    return str(screen.table.get_row(name)[1])


async def test_the_view_lists_every_setting(farm: Farm, app: ConsoleApp) -> None:
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_view(pilot)
        assert screen.table.row_count == len(Settings.model_fields)
        assert row_value(screen, "training_loops") == "20"
        assert str(screen.table.get_row("listen")[3]) == "no: VALVE_CONSOLE_LISTEN"  # read-only: its variable
        assert str(screen.table.get_row("gitlab_timeout")[3]) == "yes"
        footer = screen_text(app).splitlines()[-1]
        # the key bar, like keys 1-8 (shortened to "1-9 Screens" when the screen keys do not all fit)
        assert ("9 Settings" in footer or "1-9 Screens" in footer) and "e Edit" in footer


async def test_key_9_and_the_command_palette_reach_the_view(farm: Farm, app: ConsoleApp) -> None:
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.model.loaded and app.connected, 10, "the first fetch")
        assert "9 Settings" in screen_text(app).splitlines()[-1]
        await pilot.press("ctrl+p")
        await pilot.press(*"go to settings")
        await wait_text(pilot, "go to settings")
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.current_mode == "settings", 5, "the settings mode")
        await pilot.press("ctrl+p")
        await pilot.press(*"edit settings")
        await wait_text(pilot, "edit settings")
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, SettingsFormScreen), 5, "the settings form")


async def test_a_change_in_the_form_takes_effect_and_survives_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with running_farm(make_settings(data)) as farm:
        client = FarmClient(api_url(farm), token=farm.token)
        app = make_app(client, linux_console=False)
        try:
            async with app.run_test(size=SIZE) as pilot:
                screen = await open_view(pilot)
                form = await open_form(pilot)
                form.query_one("#set-training_loops", Input).value = "7"
                form.query_one("#set-training_qualify", Input).value = "6"
                form.query_one("#set-default_pdu_off_delay", Input).value = "2.5"
                await pilot.press("ctrl+s")
                await wait_for(pilot, lambda: app.screen is screen, 5, "the form to close")
                await wait_for(pilot, lambda: row_value(screen, "training_loops") == "7", 5, "7 in the table")
                assert str(screen.table.get_row("training_loops")[2]).startswith("data dir file")
                assert row_value(screen, "default_pdu_off_delay") == "2.5"
                assert "settings changed" in (app.last_status or ("", ""))[0]
                assert farm.machines.training_defaults == (7, 6) and farm.power.default_off_delay == 2.5
                answer = await client.settings()
                assert answer.get("training_qualify").value == 6  # type: ignore[union-attr]
                # another console's change arrives as a settings event: no stale value
                async with FarmClient(api_url(farm), token=farm.token) as other:
                    await other.update_settings({"gitlab_retry_max": 123})
                await wait_for(pilot, lambda: row_value(screen, "gitlab_retry_max") == "123", 5, "the event")
        finally:
            await client.close()
    async with running_farm(make_settings(data)) as farm:
        assert farm.machines.training_defaults == (7, 6) and farm.power.default_off_delay == 2.5
        client = FarmClient(api_url(farm), token=farm.token)
        app = make_app(client, linux_console=False)
        try:
            async with app.run_test(size=SIZE) as pilot:
                screen = await open_view(pilot)
                assert row_value(screen, "training_loops") == "7"
                assert str(screen.table.get_row("gitlab_retry_max")[2]).startswith("data dir file")
        finally:
            await client.close()


async def test_bad_input_is_refused_in_the_form_and_nothing_changes(farm: Farm, app: ConsoleApp) -> None:
    path = farm.settings.data_dir / "settings.toml"
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_view(pilot)
        form = await open_form(pilot)
        for name, text, words in (
            ("training_loops", "-3", "greater than or equal to 1"),
            ("trusted_networks", "auto, not-a-network", "is not a network"),
        ):
            field = form.query_one(f"#set-{name}", Input)
            before = field.value
            field.value = text
            await pilot.press("ctrl+s")
            await wait_for(pilot, lambda w=words: w in form_error(form), 5, f"the refusal of {text!r}")
            assert words in str(form.query_one(f"#err-{name}", Static).render())  # next to its field
            assert "nothing changed" in form_error(form)
            field.value = before
        assert isinstance(app.screen, SettingsFormScreen)
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is screen, 5, "the form to close")
        assert row_value(screen, "training_loops") == "20"
    assert farm.settings.training_loops == 20 and farm.trust.networks == []
    assert not path.exists()


# ----------------------------------------------------------------------------------------- snapshots
def linux_app(monkeypatch: Any) -> ConsoleApp:
    monkeypatch.setenv("TERM", "linux")
    return make_app(FakeFarmClient(events=JOURNAL_EVENTS))


async def settle_view(pilot: Pilot[Any]) -> None:
    await open_view(pilot)
    await pilot.pause(0.2)


def test_settings_view_on_the_linux_console(snap_compare, monkeypatch) -> None:
    assert snap_compare(linux_app(monkeypatch), terminal_size=SIZE, run_before=settle_view)


def test_settings_form_on_the_linux_console(snap_compare, monkeypatch) -> None:
    async def run_before(pilot: Pilot[Any]) -> None:
        await open_view(pilot)
        form = await open_form(pilot)
        form.query_one("#set-training_qualify", Input).value = "30"
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: "cannot be more" in str(form.query_one("#settings-error", Static).render()),
                       5, "the refusal")
        for widget in form.query(Input):
            widget.cursor_blink = False
        await pilot.pause(0.2)

    assert snap_compare(linux_app(monkeypatch), terminal_size=SIZE, run_before=run_before)


