"""Snapshot tests: each screen with a fixed farm (fake API over httpx.MockTransport, frozen times).

Regenerate the baselines with ``pytest tests/tui/test_snapshots.py --snapshot-update`` after
checking the new look; the SVGs are in ``__snapshots__/``.
"""

from __future__ import annotations

from typing import Any

from textual.pilot import Pilot
from textual.widgets import Input

from valve_console.app import ConsoleApp, make_app
from valve_console.screens.consoles import ConsolesScreen
from valve_console.screens.jobs import JobConsoleScreen, JobsScreen
from valve_console.screens.journal import JournalScreen
from valve_console.screens.machine_form import MachineFormScreen

from .fake_farm import JOURNAL_EVENTS, NOW, FakeFarmClient
from .helpers import wait_for

SIZE = (140, 45)


def fake_app(linux_console: bool = False) -> ConsoleApp:
    app = make_app(FakeFarmClient(events=JOURNAL_EVENTS), linux_console=linux_console)
    app.model.clock = lambda: NOW  # the Overview's times in state and silences at the fixture's 09:30
    return app


async def settle(pilot: Pilot[Any]) -> None:
    """Wait for the first fetch, stop cursors blinking, let everything render."""
    app = pilot.app
    await wait_for(pilot, lambda: app.model.loaded and app.connected, 5, "the fake farm")
    await pilot.pause(0.2)
    for widget in app.screen.query(Input):
        widget.cursor_blink = False
    await pilot.pause(0.1)


async def goto(pilot: Pilot[Any], key: str) -> None:
    await wait_for(pilot, lambda: pilot.app.model.loaded, 5, "the fake farm")
    await pilot.press(key)
    await settle(pilot)


def test_overview(snap_compare) -> None:
    assert snap_compare(fake_app(), terminal_size=SIZE, run_before=settle)


def test_journal(snap_compare) -> None:
    async def run_before(pilot: Pilot[Any]) -> None:
        await goto(pilot, "2")
        screen = pilot.app.screen
        assert isinstance(screen, JournalScreen)
        await wait_for(pilot, lambda: len(screen.view.entries) == 7, 5, "7 journal lines")
        await pilot.pause(0.1)

    assert snap_compare(fake_app(), terminal_size=SIZE, run_before=run_before)


def test_pdus(snap_compare) -> None:
    async def run_before(pilot: Pilot[Any]) -> None:
        await goto(pilot, "3")
        await pilot.press("right", "right", "right")
        await pilot.pause(0.1)

    assert snap_compare(fake_app(), terminal_size=SIZE, run_before=run_before)


def test_duts(snap_compare) -> None:
    async def run_before(pilot: Pilot[Any]) -> None:
        await goto(pilot, "4")

    assert snap_compare(fake_app(), terminal_size=SIZE, run_before=run_before)


def test_consoles(snap_compare) -> None:
    mac = "52:54:00:11:22:03"

    async def run_before(pilot: Pilot[Any]) -> None:
        app = pilot.app
        await settle(pilot)
        app.open_console(mac)
        await wait_for(pilot, lambda: isinstance(app.screen, ConsolesScreen) and app.screen.current_mac() == mac,
                       5, "the console tab")
        view = app.screen.views[mac]
        await wait_for(pilot, lambda: "MaRS: Registration complete" in view.plain_lines(), 5, "the boot log")
        view.flush()
        await pilot.pause(0.2)

    assert snap_compare(fake_app(), terminal_size=SIZE, run_before=run_before)


def test_machine_form(snap_compare) -> None:
    async def run_before(pilot: Pilot[Any]) -> None:
        app = pilot.app
        await goto(pilot, "6")
        await wait_for(pilot, lambda: isinstance(app.screen, MachineFormScreen) and app.screen.mac is not None,
                       5, "the form")
        await settle(pilot)

    assert snap_compare(fake_app(), terminal_size=SIZE, run_before=run_before)


def test_pdus_on_the_linux_console(snap_compare) -> None:
    async def run_before(pilot: Pilot[Any]) -> None:
        await goto(pilot, "3")

    assert snap_compare(fake_app(linux_console=True), terminal_size=SIZE, run_before=run_before)


def test_machine_form_on_the_linux_console(snap_compare) -> None:
    async def run_before(pilot: Pilot[Any]) -> None:
        app = pilot.app
        await goto(pilot, "6")
        await wait_for(pilot, lambda: isinstance(app.screen, MachineFormScreen) and app.screen.mac is not None,
                       5, "the form")
        await settle(pilot)

    assert snap_compare(fake_app(linux_console=True), terminal_size=SIZE, run_before=run_before)


def test_lost_backend_banner(snap_compare) -> None:
    async def run_before(pilot: Pilot[Any]) -> None:
        app = pilot.app
        await wait_for(pilot, lambda: "reconnecting" in app.backend_problem, 5, "the banner")
        await pilot.press("3")
        await pilot.pause(0.2)

    app = make_app(FakeFarmClient(down=True), linux_console=False)
    assert snap_compare(app, terminal_size=(100, 20), run_before=run_before)


def test_jobs(snap_compare, monkeypatch) -> None:
    monkeypatch.setattr("valve_console.screens.jobs.now", lambda: NOW)

    async def run_before(pilot: Pilot[Any]) -> None:
        app = pilot.app
        await goto(pilot, "7")
        await wait_for(pilot, lambda: isinstance(app.screen, JobsScreen) and app.screen.table.row_count == 5,
                       5, "5 jobs")
        await pilot.press("down")
        await pilot.pause(0.1)

    assert snap_compare(fake_app(), terminal_size=SIZE, run_before=run_before)


def test_job_console(snap_compare, monkeypatch) -> None:
    monkeypatch.setattr("valve_console.screens.jobs.now", lambda: NOW)
    job_id = "job-20260314-090500-0f1e2d"

    async def run_before(pilot: Pilot[Any]) -> None:
        app = pilot.app
        await goto(pilot, "7")
        await wait_for(pilot, lambda: isinstance(app.screen, JobsScreen) and app.screen.table.row_count == 5,
                       5, "5 jobs")
        app.screen.select_job(job_id)
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, JobConsoleScreen), 5, "the job console")
        view = app.screen.view
        await wait_for(pilot, lambda: "+ job output 1" in view.plain_lines(), 5, "the job's console")
        view.flush()
        await pilot.pause(0.2)

    assert snap_compare(fake_app(), terminal_size=SIZE, run_before=run_before)
