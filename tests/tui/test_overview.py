"""The Overview as the farm at a glance (issue 19): snapshots at tty2's 80x24 and at 160x50, on the Linux
console and in a 256-colour terminal, of a farm with a DUT in every state and every kind of attention
item; each item's key lands on its screen and machine; tiles move with the arrows and open the console
(enter) and the form (e); a PDU lost while the operator is elsewhere raises a notification and stays listed."""

from __future__ import annotations

from typing import Any

import pytest
from textual.pilot import Pilot

from valve_console.app import ConsoleApp, make_app
from valve_console.console_data.attention import KINDS
from valve_console.screens.consoles import ConsolesScreen
from valve_console.screens.duts import DutsScreen
from valve_console.screens.gitlab import GitlabScreen
from valve_console.screens.jobs import JobsScreen
from valve_console.screens.machine_form import MachineFormScreen
from valve_console.screens.overview import OverviewScreen
from valve_console.screens.pdus import PdusScreen
from valve_console.widgets.dut_tiles import DutTiles

from .fake_farm import GLANCE_MACS, JOURNAL_EVENTS, NOW, FakeFarmClient, farm_data, glance_farm_data, pdu
from .helpers import screen_text, wait_for

VIRTIO_2 = "52:54:00:11:22:05"


def glance_app(linux_console: bool = False, **client: Any) -> ConsoleApp:
    app = make_app(FakeFarmClient(glance_farm_data(), events=JOURNAL_EVENTS, **client), linux_console=linux_console)
    app.model.clock = lambda: NOW  # times in state, silences and job trends at the fixture's 09:30
    return app


async def loaded(pilot: Pilot[Any]) -> None:
    app = pilot.app
    await wait_for(pilot, lambda: app.model.loaded and app.connected and app.attention, 5, "the fake farm")
    await pilot.pause(0.3)


@pytest.mark.parametrize("linux_console", [True, False], ids=["TERM=linux", "xterm-256color"])
@pytest.mark.parametrize("size", [(80, 24), (160, 50)], ids=["80x24", "160x50"])
def test_overview_glance(snap_compare, size: tuple[int, int], linux_console: bool) -> None:
    assert snap_compare(glance_app(linux_console), terminal_size=size, run_before=loaded)


async def test_the_fixture_holds_every_attention_kind_and_state() -> None:
    app = glance_app()
    async with app.run_test(size=(160, 50)) as pilot:
        await loaded(pilot)
        assert {item.kind for item in app.attention} == set(KINDS)
        states = {m.state for m in app.model.machines.values()}
        assert states == {"IDLE", "RUNNING", "QUEUED", "TRAINING", "NOT_READY", "WAIT_FOR_CONFIG", "RETIRED"}
        text = screen_text(app)
        for words in ("train 7/20", "backoff #2", "last INCOMPLETE", "1 queued", "143 W", "-9a8b7c 143 W"):
            assert words in text, words  # the running job's id, cut at the front to fit
        # each machine in the attention list carries a mark on its tile; a machine without none
        tiles = app.screen.query_one(DutTiles)
        flagged = {t.mac for t in tiles.tiles if t.flagged}
        assert flagged == {item.mac for item in app.attention if item.mac}
        assert GLANCE_MACS["idle"] not in flagged and GLANCE_MACS["silent"] in flagged


def selection(app: ConsoleApp) -> object:
    """What the current screen has selected, in the terms of an attention target."""
    screen = app.screen
    if isinstance(screen, PdusScreen):
        return screen.selected_outlet()
    if isinstance(screen, DutsScreen):
        return screen.cursor_mac()
    if isinstance(screen, JobsScreen):
        return screen.cursor_job()
    if isinstance(screen, GitlabScreen):
        return screen.selected_runner()
    if isinstance(screen, ConsolesScreen):
        return screen.current_mac()
    return None


EXPECTED = {  # kind -> (mode, what is selected there)
    "pdu_unreachable": ("pdus", ("bench", "0")),
    "readback_mismatch": ("pdus", ("vpdu1", "11")),
    "disk_low": ("journal", None),
    "training_failing": ("duts", GLANCE_MACS["backoff"]),
    "unfit": ("duts", GLANCE_MACS["unfit"]),
    "job_infra": ("jobs", "job-20260314-092500-ee33ff"),
    "console_silent": ("consoles", GLANCE_MACS["silent"]),
    "power": ("duts", VIRTIO_2),
    "runner_refused": ("gitlab", ("fdo", GLANCE_MACS["runner"])),
}


async def test_each_attention_key_lands_on_its_screen_and_machine() -> None:
    app = glance_app()
    async with app.run_test(size=(160, 50)) as pilot:
        await loaded(pilot)
        assert [item.kind for item in app.attention] == list(EXPECTED)
        for letter, item in zip("ABCDEFGHI", list(app.attention), strict=True):
            await pilot.press("1")
            await wait_for(pilot, lambda: isinstance(app.screen, OverviewScreen), 5, "the Overview")
            assert f"{letter} " in screen_text(app)
            await pilot.press(letter)
            mode, selected = EXPECTED[item.kind]

            def landed(mode: str = mode, selected: object = selected) -> bool:
                return app.current_mode == mode and selection(app) == selected

            await wait_for(pilot, landed, 5, f"{item.kind}: {mode} with {selected} selected")


async def test_tiles_move_with_the_arrows_enter_opens_the_console_and_e_the_form() -> None:
    app = glance_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await loaded(pilot)
        tiles = app.screen.query_one(DutTiles)
        assert tiles.has_focus and tiles.describe()["columns"] == 3
        names = [t.name for t in tiles.tiles]
        assert names == sorted(names) and tiles.selected == tiles.tiles[0].mac
        await pilot.press("right", "down")  # one to the right, one row down: the fifth tile
        assert tiles.selected == tiles.tiles[4].mac
        await pilot.press("left", "up", "up", "left")  # stays in the grid
        assert tiles.selected == tiles.tiles[0].mac
        while tiles.selected != VIRTIO_2:
            await pilot.press("right")
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.current_mode == "consoles" and selection(app) == VIRTIO_2, 5,
                       "vivian-virtio-2's console")
        await pilot.press("1")
        await wait_for(pilot, lambda: isinstance(app.screen, OverviewScreen), 5, "the Overview")
        assert tiles.selected == VIRTIO_2  # the cursor stayed
        await pilot.press("e")
        await wait_for(pilot, lambda: isinstance(app.screen, MachineFormScreen) and app.form_target == VIRTIO_2, 5,
                       "vivian-virtio-2's form")


async def test_the_tiles_fill_the_width() -> None:
    app = glance_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await loaded(pilot)
        tiles = app.screen.query_one(DutTiles)
        compact = tiles.describe()
        await pilot.resize_terminal(200, 50)
        await wait_for(pilot, lambda: tiles.describe() != compact, 5, "a new layout")
        wide = tiles.describe()
        assert wide["tile_height"] == 4 and compact["tile_height"] == 3  # the detail line on wide screens
        assert wide["columns"] * wide["tile_width"] >= 200 - 66 - 2  # beside the side column, all the width
        assert compact["columns"] * compact["tile_width"] >= 80 - 2


async def test_a_lost_pdu_raises_a_notification_and_stays_in_the_list() -> None:
    lost = pdu("vpdu1", farm_data()["pdus"]["vpdu1"]["ports"], driver="vpdu")
    lost.update(state="unreachable", error="no answer in 3 s (timeout)")
    app = make_app(FakeFarmClient(farm_data(), events=JOURNAL_EVENTS,
                                  later_events=[{"type": "pdu", "seq": 50, "ts": 0.0,
                                                 "data": {"action": "updated", "name": "vpdu1", "pdu": lost}}]))
    async with app.run_test(size=(140, 45)) as pilot:
        await pilot.press("2")  # the operator is on the journal when it happens
        await wait_for(pilot, lambda: any(i.key == "pdu_unreachable:vpdu1" for i in app.attention), 5,
                       "vpdu1 in the attention list")
        toasts = [n.message for n in app._notifications]
        assert any("PDU vpdu1 unreachable" in m and "no answer in 3 s" in m for m in toasts), toasts
        # what was already wrong at connection (bench) is listed, not notified
        assert not any("PDU bench" in m for m in toasts)
        await pilot.press("1")
        await wait_for(pilot, lambda: "PDU vpdu1 unreachable" in screen_text(app), 5, "the item on the Overview")
        assert any("PDU vpdu1 unreachable" in f.text for f in app.model.recent)
