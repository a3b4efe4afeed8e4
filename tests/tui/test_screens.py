"""Pilot tests of every screen and action, against a real backend (and a Vivian farm where needed)."""

from __future__ import annotations

import logging

from textual.widgets import Select

from valve_console.app import ConsoleApp
from valve_console.backend.farm import Farm
from valve_console.backend.registration import MachineUpdate, Registration
from valve_console.screens.dialogs import ConfirmScreen
from valve_console.screens.journal import JournalScreen
from valve_console.screens.pdus import PdusScreen

from .helpers import screen_text, wait_for, wait_no_text, wait_text

SIZE = (140, 45)
MODES = {"1": "overview", "2": "journal", "3": "pdus", "4": "duts", "5": "consoles", "6": "machine"}


async def connected(pilot, app: ConsoleApp) -> None:
    await wait_for(pilot, lambda: app.model.loaded and app.connected, 10, "the first fetch")


async def test_number_keys_switch_screens_and_footer_lists_them(farm: Farm, app: ConsoleApp) -> None:
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot, app)
        assert app.current_mode == "overview"
        for key, mode in [*MODES.items(), ("1", "overview")]:
            await pilot.press(key)
            await wait_for(pilot, lambda mode=mode: app.current_mode == mode, 5, f"mode {mode}")
        text = screen_text(app)
        footer = text.splitlines()[-1]
        for key, title in zip(MODES, ("Overview", "Journal", "PDUs", "DUTs", "Consoles", "Machine"), strict=True):
            assert f"{key} {title}" in footer
        assert "q Quit" in footer


async def test_overview_shows_services_interfaces_and_counts(farm: Farm, app: ConsoleApp) -> None:
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot, app)
        await wait_text(pilot, "registration")
        text = screen_text(app)
        for service in ("storage", "power", "consoles", "api"):
            assert service in text
        assert "[   OK   ]" in text
        assert " lo " in text and "127.0.0.1" in text
        assert "farm        test" in text
        assert app.model.health["api"] in text
        assert "jobs" in text


async def test_journal_shows_backend_log_and_filters_by_priority(farm: Farm, app: ConsoleApp) -> None:
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot, app)
        await pilot.press("2")
        await wait_text(pilot, "farm test up")  # an info line of the backend's own log, fetched
        logging.getLogger("valve_console.tuitest").warning("disk almost full on the gateway")
        await wait_text(pilot, "disk almost full")  # a live 'log' event
        assert "info" in screen_text(app)
        screen = app.screen
        assert isinstance(screen, JournalScreen)
        screen.set_min_priority(4)
        await wait_no_text(pilot, "farm test up")
        text = screen_text(app)
        assert "disk almost full" in text and "warning" in text
        # back to everything with the key that cycles the priority filter
        for _ in range(5):
            await pilot.press("l")
        await wait_text(pilot, "farm test up")
        # search narrows to matching lines
        await pilot.press("slash", *"almost", "enter")
        await wait_no_text(pilot, "farm test up")
        assert "disk almost full" in screen_text(app)
        await pilot.press("escape")
        await wait_text(pilot, "farm test up")


async def test_pdu_grid_turn_outlet_on_and_a_dut_appears(farm: Farm, vivian, app: ConsoleApp) -> None:
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot, app)
        await pilot.press("3")
        await wait_for(pilot, lambda: screen_text(app).count("[off]") == 16, 10, "16 outlets off")
        screen = app.screen
        assert isinstance(screen, PdusScreen)
        await pilot.press("right", "right", "right")
        assert screen.selected_outlet() == ("vpdu1", "3")
        await pilot.press("o")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), 5, "the confirmation")
        assert "vpdu1/3" in screen_text(app)
        await pilot.press("y")
        grid = screen.sections["vpdu1"].grid
        await wait_for(pilot, lambda: "[ON ]" in grid.get_cell_at(grid.coordinate_of("3")).plain, 10, "outlet 3 ON")
        assert screen_text(app).count("[off]") == 15
        await wait_text(pilot, "vpdu1/3")  # the read-back result in the status line
        await pilot.press("4")
        await wait_text(pilot, "52:54:00:11:22:03", timeout=20)


async def test_add_pdu_validates_shows_api_error_and_adds(farm: Farm, vivian, app: ConsoleApp) -> None:
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot, app)
        await pilot.press("3", "a")
        await wait_for(pilot, lambda: app.screen.query_one("#pdu-driver", Select).is_mounted, 5, "the dialog")
        dialog = app.screen
        await wait_for(pilot, lambda: len(dialog.query_one("#pdu-driver", Select)._options) > 2, 5, "drivers")
        # pick the vpdu driver with the keyboard: open the list, type to search, enter
        await pilot.press("enter", *"vpdu", "enter")
        await wait_for(pilot, lambda: dialog.query_one("#pdu-driver", Select).value == "vpdu", 5, "driver vpdu")
        await pilot.press("tab", *"pdu2", "tab", *"nohost")
        await pilot.press("ctrl+s")
        await wait_text(pilot, "expected HOST:PORT")
        assert "pdu2" not in farm.power.pdus
        # a name the API refuses: its error is shown in the modal
        dialog.query_one("#pdu-name").value = "vpdu1"
        dialog.query_one("#pdu-hostname").value = "127.0.0.1:9"
        await pilot.press("ctrl+s")
        await wait_text(pilot, "already exists")
        assert app.screen is dialog
        # the dummy driver with 4 outlets is added
        dialog.query_one("#pdu-driver", Select).value = "dummy"
        await pilot.pause()
        dialog.query_one("#pdu-name").value = "dummy1"
        dialog.query_one("#pdu-ports").value = "4"
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: isinstance(app.screen, PdusScreen), 10, "the dialog to close")
        assert farm.power.pdus["dummy1"].driver_name == "dummy"
        await wait_for(pilot, lambda: "dummy1" in app.screen.sections, 5, "the dummy1 grid")
        await wait_text(pilot, "4 outlets")


async def test_remove_pdu_after_confirmation(farm: Farm, app: ConsoleApp) -> None:
    await farm.power.add_pdu("dummy1", "dummy", {"ports": 4})
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot, app)
        await pilot.press("3")
        await wait_text(pilot, "dummy1")
        await pilot.press("x")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), 5, "the confirmation")
        await pilot.press("n")  # cancelled: nothing happens
        await pilot.pause(0.2)
        assert "dummy1" in farm.power.pdus
        await pilot.press("delete", "y")
        await wait_for(pilot, lambda: "dummy1" not in farm.power.pdus, 5, "the PDU removed")
        await wait_text(pilot, "No PDU yet")
        await wait_text(pilot, "PDU dummy1 removed")
