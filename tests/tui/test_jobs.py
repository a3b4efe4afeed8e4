"""Pilot tests of the Jobs screen against a real backend: a dummy PDU, a ready machine and a fake
DUT (tests/jobs) that connects to the netconsole and prints what its job's script says."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from textual.command import CommandPalette

from tests.conftest import api_url
from tests.jobs.conftest import TAGS, FakeDuts, job_yaml, mac_of
from valve_console.app import ConsoleApp
from valve_console.backend.farm import Farm
from valve_console.screens.dialogs import ConfirmScreen
from valve_console.screens.jobs import JobConsoleScreen, JobsScreen
from valve_console.console_data import Changes
from valve_console.contract import Event

from .helpers import screen_text, wait_for, wait_no_text, wait_text

SIZE = (160, 45)


@pytest.fixture
async def jobhttp(farm: Farm) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    """(http, mac): one ready machine on dummy PDU d1 outlet 0, played by a fake DUT."""
    await farm.power.add_pdu("d1", "dummy", {"ports": 1})
    mac = mac_of(0)
    async with httpx.AsyncClient(base_url=api_url(farm), timeout=10) as http:
        http.headers["Authorization"] = f"Bearer {farm.token}"
        r = await http.post("/api/v1/machine/", json={"base_name": "fake", "tags": TAGS, "mac_address": mac,
                                                      "ip_address": "10.0.0.10"})
        assert r.status_code == 200, r.text
        r = await http.patch(f"/api/v1/machine/{mac}/", json={"pdu": "d1", "pdu_port_id": "0",
                                                               "ready_for_service": True})
        assert r.status_code == 200, r.text
        duts = FakeDuts(farm)
        duts.start([mac])
        try:
            yield http, mac
        finally:
            await duts.stop()


async def submit(http: httpx.AsyncClient, script: str, mac: str) -> str:
    r = await http.post("/api/v1/jobs", json={"job": job_yaml(script, target=f"id: '{mac}'")})
    assert r.status_code == 200, r.text
    return r.json()["id"]


def cell(screen: JobsScreen, job_id: str, column: str) -> str:
    value = screen.table.get_cell(job_id, column)
    return getattr(value, "plain", str(value))


async def test_jobs_table_console_and_cancel(farm: Farm, jobhttp, app: ConsoleApp) -> None:
    http, mac = jobhttp
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.model.loaded and app.connected, 10, "the first fetch")
        await pilot.press("7")
        await wait_for(pilot, lambda: isinstance(app.screen, JobsScreen), 5, "the jobs screen")
        screen = app.screen
        assert isinstance(screen, JobsScreen)
        await wait_text(pilot, "0 jobs")
        # a job that hangs (runs until cancelled) and one queued behind it
        running = await submit(http, "hang", mac)
        await wait_for(pilot, lambda: running in screen.rows and cell(screen, running, "status") == "RUNNING",
                       10, "the first job RUNNING")
        queued = await submit(http, "pass", mac)
        await wait_for(pilot, lambda: queued in screen.rows and cell(screen, queued, "status") == "QUEUED",
                       10, "the second job QUEUED")
        assert cell(screen, queued, "position") == "1"
        assert cell(screen, running, "machine") == app.model.machine_name(mac)
        # newest first; the overview counts the running job
        assert screen.table.get_row_index(queued) == 0 and screen.table.get_row_index(running) == 1
        assert app.model.counts()["jobs"] == 1 and app.model.counts()["jobs_queued"] == 1
        # the DUT table shows the backend's machine state
        await pilot.press("4")
        await wait_text(pilot, "RUNNING")
        await pilot.press("7")
        await wait_for(pilot, lambda: app.screen is screen, 5, "back on the jobs screen")

        # the running job's console: fetched, then live from the machine's console events
        screen.select_job(running)
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, JobConsoleScreen), 5, "the job console")
        dialog = app.screen
        assert isinstance(dialog, JobConsoleScreen) and dialog.job_id == running
        await wait_for(pilot, lambda: any("Command line:" in line for line in dialog.view.plain_lines()), 10,
                       "the job's console text")
        assert "RUNNING" in screen_text(app)
        app.feed.pending.console_text[mac] = ["+ live line from the DUT\r\n"]
        await wait_for(pilot, lambda: "+ live line from the DUT" in dialog.view.plain_lines(), 5, "a live line")
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is screen, 5, "the console closed")

        # cancel the queued job: asks first, then the row changes in place
        screen.select_job(queued)
        await pilot.press("x")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), 5, "the confirmation")
        assert queued in screen_text(app)
        await pilot.press("y")
        await wait_for(pilot, lambda: cell(screen, queued, "status") == "INCOMPLETE", 10, "the job cancelled")
        assert cell(screen, queued, "state") == "cancelled"
        await wait_text(pilot, f"job {queued}: INCOMPLETE (cancelled)")
        assert screen.table.row_count == 2
        # the running one too, with the delete key
        screen.select_job(running)
        await pilot.press("delete")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), 5, "the confirmation")
        await pilot.press("y")
        await wait_for(pilot, lambda: cell(screen, running, "status") == "INCOMPLETE", 15, "the running job stopped")
        assert (await http.get(f"/api/v1/job/{running}")).json()["state"] == "cancelled"
        # cancelling a job that is over: the API's error is shown
        await pilot.press("x")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), 5, "the confirmation")
        await pilot.press("y")
        await wait_text(pilot, "is over")
        assert app.model.counts()["jobs"] == 0


async def test_palette_goes_to_jobs_and_a_refetch_brings_them_back(farm: Farm, jobhttp, app: ConsoleApp) -> None:
    http, mac = jobhttp
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.model.loaded and app.connected, 10, "the first fetch")
        # "go to jobs" in the palette
        await pilot.press("ctrl+p")
        await wait_for(pilot, lambda: isinstance(app.screen, CommandPalette), 5, "the palette")
        await pilot.press(*"go to jobs")
        await wait_text(pilot, "go to jobs")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, JobsScreen), 5, "the jobs screen")
        screen = app.screen
        assert isinstance(screen, JobsScreen) and app.current_mode == "jobs"
        job_id = await submit(http, "pass", mac)
        await wait_for(pilot, lambda: job_id in screen.rows and cell(screen, job_id, "status") == "PASS", 15,
                       "the job PASS")
        # a job the TUI never heard of (say, its events were dropped) shows after a refetch
        app.model.jobs.pop(job_id)
        app.feed.pending = Changes()
        screen.farm_reset(app.model)
        await wait_no_text(pilot, job_id)
        assert app.feed.pending.add_event(Event(type="dropped", seq=-1, ts=0.0, data={"count": 1}))
        app.feed.schedule_refetch()
        await wait_for(pilot, lambda: job_id in screen.rows, 10, "the job back after the refetch")
        assert cell(screen, job_id, "status") == "PASS"
