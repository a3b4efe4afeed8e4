"""Power in the console (issue 18) against the fixed fake farm (tests/tui/fake_farm.py, its power section):
watts and sparklines on the PDU grid, the PDU's total, the farm's load, job energy, power flags and the
machine details' plot of the last hour with its boot and job marks. Pilot tests read the screen as text;
the snapshots (``--snapshot-update`` after checking the look) are taken on the Linux console (CP437 font:
ASCII sparklines, half-block plot, flags in words) and once with the block characters.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from textual.pilot import Pilot

from valve_console.app import ConsoleApp, make_app
from valve_console.screens.duts import DutsScreen
from valve_console.screens.jobs import JobConsoleScreen, JobsScreen
from valve_console.screens.machine_detail import MachineDetailScreen
from valve_console.screens.pdus import PdusScreen

from .fake_farm import JOURNAL_EVENTS, NOW, FakeFarmClient, power_events
from .helpers import screen_text, wait_for, wait_text
from .test_snapshots import SIZE, goto, settle

VIRTIO_1 = "52:54:00:11:22:03"  # outlet vpdu1/3, 143 W, two jobs in the last hour
VIRTIO_2 = "52:54:00:11:22:05"  # outlet vpdu1/5, ON drawing 0 W: a "no_draw" flag


@pytest.fixture(autouse=True)
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("valve_console.screens.machine_detail.now", lambda: NOW)
    monkeypatch.setattr("valve_console.screens.jobs.now", lambda: NOW)


def power_app(linux_console: bool = False) -> ConsoleApp:
    """The fake farm, with vpdu1/3's readings arriving after the first fetch (its sparkline)."""
    return make_app(FakeFarmClient(events=JOURNAL_EVENTS, later_events=power_events()), linux_console=linux_console)


async def sparkline_filled(pilot: Pilot[Any]) -> None:
    app = pilot.app
    await wait_for(pilot, lambda: len(app.model.power.recent_watts("vpdu1", "3")) == 13, 5, "13 readings of vpdu1/3")
    await pilot.pause(0.2)


async def open_grid(pilot: Pilot[Any]) -> PdusScreen:
    await goto(pilot, "3")
    await sparkline_filled(pilot)
    screen = pilot.app.screen
    assert isinstance(screen, PdusScreen)
    return screen


async def open_details(pilot: Pilot[Any], mac: str) -> MachineDetailScreen:
    app = pilot.app
    await goto(pilot, "4")
    screen = app.screen
    assert isinstance(screen, DutsScreen)
    screen.select_mac(mac)
    await pilot.press("i")
    await wait_for(pilot, lambda: isinstance(app.screen, MachineDetailScreen), 5, "the details")
    detail = app.screen
    assert isinstance(detail, MachineDetailScreen)
    return detail


def cell(screen: PdusScreen, port: str) -> str:
    return screen.sections["vpdu1"].grid._cells[port].plain


# ------------------------------------------------------------------------------------ Pilot
async def test_the_grid_shows_watts_sparklines_and_the_pdu_total() -> None:
    app = power_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_grid(pilot)
        text = screen_text(app)
        assert "vpdu1 — 152 W" in text  # the PDU's own total (151.5 W)
        busy = cell(screen, "3").splitlines()
        assert busy[3].endswith("143 W")
        spark = busy[3][:7]
        assert len(set(spark) - {" "}) > 2 and set(spark) <= set("▁▂▃▄▅▆▇█"), spark  # a line with its ups and downs
        assert cell(screen, "5").splitlines()[3].endswith("0 W")  # metered, nothing drawn: 0 W
        assert cell(screen, "7").split("\n")[3] == ""  # unmetered: nothing, not "0 W"
        assert "W" not in "".join(screen.sections["bench"].grid._cells[p].plain for p in "0123")  # bench: no meter
        assert screen.sections["bench"].border_title == " bench "


async def test_the_grid_on_the_linux_console_uses_ascii_levels() -> None:
    app = power_app(linux_console=True)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_grid(pilot)
        assert "vpdu1 - 152 W" in screen_text(app)
        spark = cell(screen, "3").splitlines()[3][:7]
        assert set(spark) <= set("_.-=# ") and "#" in spark
        assert not set(screen_text(app)) & set("▁▂▃▅▆▇⚡")


async def test_the_overview_shows_the_farm_load() -> None:
    app = power_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await wait_for(pilot, lambda: re.search(r"power +152 W  vpdu1 152 W", screen_text(app)), 5, "the load")


async def test_the_details_plot_the_last_hour_with_boot_and_job_marks() -> None:
    app = power_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        detail = await open_details(pilot, VIRTIO_1)
        await wait_for(pilot, lambda: bool(detail.plot.points), 5, "the power series")
        await pilot.pause(0.2)
        text = screen_text(app)
        assert "Power: 143 W now on vpdu1/3" in text
        lines = text.splitlines()
        marks = next(line for line in lines if "^" in line and "[" in line)
        # the boot at 09:00 (outlet ON), the job 09:05-09:08:48, the running job from 09:20 to the end
        assert marks.index("^") < marks.index("[") < marks.index("]") < marks.rindex("[")
        assert "170 W│" in text and "0 W│" in text and "08:30" in text and "09:30" in text
        assert "^ boot (outlet ON)" in text
        assert len(detail.plot.points) == 121  # every 30 s of the hour, both ends


async def test_a_power_flag_shows_in_the_table_and_in_words_in_the_details() -> None:
    app = power_app()
    async with app.run_test(size=SIZE) as pilot:
        await goto(pilot, "4")
        await wait_text(pilot, "vivian-virtio-2 ⚡ no draw")
        detail = await open_details(pilot, VIRTIO_2)
        await wait_text(pilot, "Power warning: no power draw since")
        assert "check its plug or PSU" in screen_text(app)
        assert "Power: 0 W now on vpdu1/5" in screen_text(app)
        assert detail.plot.display


async def test_flags_on_the_linux_console_are_words_only() -> None:
    app = power_app(linux_console=True)
    async with app.run_test(size=SIZE) as pilot:
        await goto(pilot, "4")
        await wait_text(pilot, "vivian-virtio-2 [no draw]")
        assert "⚡" not in screen_text(app)


async def test_jobs_show_their_energy() -> None:
    app = power_app()
    async with app.run_test(size=SIZE) as pilot:
        await goto(pilot, "7")
        screen = app.screen
        assert isinstance(screen, JobsScreen)
        await wait_for(pilot, lambda: screen.table.row_count == 5, 5, "5 jobs")
        text = screen_text(app)
        assert "Energy" in text and "12.3 kJ" in text and "1.48 kJ" in text and "534 kJ" in text
        screen.select_job("job-20260314-090500-0f1e2d")
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, JobConsoleScreen), 5, "the job's details")
        await wait_text(pilot, "energy drawn: 1.48 kJ (0.41 Wh)")


# ------------------------------------------------------------------------------------ snapshots
def test_power_grid_on_the_linux_console(snap_compare) -> None:
    async def run_before(pilot: Pilot[Any]) -> None:
        await open_grid(pilot)
        await pilot.press("right", "right", "right")
        await pilot.pause(0.1)

    assert snap_compare(power_app(linux_console=True), terminal_size=SIZE, run_before=run_before)


def test_power_grid(snap_compare) -> None:
    async def run_before(pilot: Pilot[Any]) -> None:
        await open_grid(pilot)

    assert snap_compare(power_app(), terminal_size=SIZE, run_before=run_before)


def test_power_plot_on_the_linux_console(snap_compare) -> None:
    async def run_before(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        detail = await open_details(pilot, VIRTIO_1)
        await wait_for(pilot, lambda: bool(detail.plot.points), 5, "the power series")
        await pilot.pause(0.2)

    assert snap_compare(power_app(linux_console=True), terminal_size=SIZE, run_before=run_before)


# ------------------------------------------------------------------------------ a real backend
async def test_a_real_farm_s_readings_reach_the_grid_and_the_details_plot(tmp_path) -> None:
    """Not the fake: a farm sampling a metered PDU; its readings arrive in outlet events, fill the cell and
    the sparkline, and the details' plot reads the real series endpoint."""
    from tests.conftest import api_url, make_settings, running_farm
    from valve_console.backend.registration import MachineUpdate, Registration
    from valve_console.client import FarmClient
    from valve_console.drivers.pdu.base import PortState

    mac = "02:00:00:00:18:02"
    settings = make_settings(tmp_path / "data", power_sample_interval=0.1, power_event_interval=0.1)
    async with running_farm(settings) as farm:
        await farm.power.add_pdu("vpdu1", "dummy", {"ports": 4, "meter": True, "initial_state": "OFF"})
        await farm.machines.register(Registration(base_name="virtio", mac_address=mac, ip_address="10.42.18.2"))
        await farm.machines.update(mac, MachineUpdate(pdu="vpdu1", pdu_port_id="2"))
        driver = farm.power.pdus["vpdu1"].driver
        driver.set_power("2", 87.0)
        await farm.power.set_outlet("vpdu1", "2", PortState.ON)
        client = FarmClient(api_url(farm), token=farm.token)
        try:
            app = make_app(client, linux_console=False)
            async with app.run_test(size=SIZE) as pilot:
                await wait_for(pilot, lambda: app.model.loaded and app.connected, 10, "the first fetch")
                await goto(pilot, "3")
                screen = app.screen
                assert isinstance(screen, PdusScreen)
                cells = screen.sections["vpdu1"].grid._cells
                await wait_for(pilot, lambda: re.search(r"\b87(\.0)? W", cells["2"].plain), 10, "87 W in vpdu1/2")
                await wait_for(pilot, lambda: len(app.model.power.recent_watts("vpdu1", "2")) >= 3, 10,
                               "readings for the sparkline")
                assert re.search(r"\b0 W", cells["1"].plain)  # off: metered, 0 W
                assert "87" in screen_text(app).splitlines()[1]  # the PDU's total in its title
                detail = await open_details(pilot, mac)
                await wait_text(pilot, "87", 10)
                assert detail is app.screen
        finally:
            await client.close()
