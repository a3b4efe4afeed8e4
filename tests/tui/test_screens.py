"""Pilot tests of every screen and action, against a real backend (and a Vivian farm where needed)."""

from __future__ import annotations

import logging

from textual.command import CommandPalette
from textual.widgets import Checkbox, Input, Select, Static

from valve_console.app import ConsoleApp
from valve_console.backend.farm import Farm
from valve_console.backend.registration import MachineUpdate, Registration
from valve_console.screens.consoles import ConsolesScreen
from valve_console.screens.dialogs import ConfirmScreen
from valve_console.screens.journal import JournalScreen
from valve_console.screens.machine_form import MachineFormScreen
from valve_console.screens.pdus import PdusScreen

from .helpers import screen_text, wait_for, wait_no_text, wait_text

def outlets_of(app: ConsoleApp, pdu: str) -> int:
    """How many outlets the console knows of ``pdu`` (0 before it knows the PDU)."""
    found = app.model.pdus.get(pdu)
    return len(found.ports) if found else 0


SIZE = (140, 45)
MODES = {"1": "overview", "2": "journal", "3": "pdus", "4": "duts", "5": "consoles", "6": "machine",
         "7": "jobs"}


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
        titles = ("Overview", "Journal", "PDUs", "DUTs", "Consoles", "Machine", "Jobs")
        for key, title in zip(MODES, titles, strict=True):
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
        assert app.model.health is not None and app.model.health.api in text
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
        # back to everything with the key that cycles the priority filter (warning, err, crit, all)
        await pilot.press("l", "l", "l")
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


async def register(farm: Farm, last: int, base_name: str = "virtio") -> str:
    mac = f"52:54:00:aa:00:{last:02x}"
    await farm.machines.register(Registration(base_name=base_name, mac_address=mac, ip_address=f"10.42.1.{last}",
                                              tags=["virtio:family:VIRTIO"], local_tty_device="ttyS1"))
    return mac


async def test_dut_table_updates_in_place_sorts_and_filters(farm: Farm, app: ConsoleApp) -> None:
    macs = [await register(farm, n, base) for n, base in ((3, "zeta"), (1, "alpha"), (2, "mid"))]
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot, app)
        await pilot.press("4")
        screen = app.screen
        table = screen.table
        await wait_for(pilot, lambda: table.row_count == 3, 5, "three rows")
        # sorted by name: alpha, mid, zeta
        assert [table.get_row_at(i)[0] for i in range(3)] == ["test-alpha-1", "test-mid-1", "test-zeta-1"]
        await pilot.press("down")
        assert screen.cursor_mac() == macs[2]
        calls: list[str] = []
        for name in ("add_row", "clear", "remove_row", "add_rows"):
            original = getattr(table, name)
            setattr(table, name, lambda *a, _n=name, _o=original, **k: (calls.append(_n), _o(*a, **k))[1])
        await farm.machines.update(macs[2], MachineUpdate(local_tty_device="ttyUSB7", comment="moved"))
        await wait_for(pilot, lambda: table.get_cell(macs[2], "tty") == "ttyUSB7", 5, "the tty cell")
        assert calls == []  # updated in place: no row added, removed or rebuilt
        assert table.row_count == 3
        assert screen.cursor_mac() == macs[2] and table.cursor_row == 1
        # 's' cycles the sort column: MAC next
        await pilot.press("s")
        assert [table.get_row_at(i)[1] for i in range(3)] == sorted(macs)
        assert screen.cursor_mac() == macs[2]  # the cursor follows its machine
        await wait_text(pilot, "sorted by MAC")
        # '/' filters on any column
        await pilot.press("slash", *"ttyusb")
        await wait_for(pilot, lambda: table.row_count == 1, 5, "one row")
        assert table.get_row_at(0)[1] == macs[2]
        await wait_text(pilot, "filter 'ttyusb': 1 shown")
        # a machine that starts matching while filtered appears
        await farm.machines.update(macs[0], MachineUpdate(local_tty_device="ttyUSB0"))
        await wait_for(pilot, lambda: table.row_count == 2, 5, "two rows")
        await pilot.press("escape")
        await wait_for(pilot, lambda: table.row_count == 3, 5, "all rows back")


async def test_retire_and_activate_with_confirmation(farm: Farm, app: ConsoleApp) -> None:
    mac = await register(farm, 1)
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot, app)
        await pilot.press("4")
        table = app.screen.table
        await wait_for(pilot, lambda: table.row_count == 1, 5, "the row")
        await pilot.press("R")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), 5, "the confirmation")
        assert "Retire test-virtio-1" in screen_text(app)
        await pilot.press("y")
        await wait_for(pilot, lambda: farm.machines.machines[mac].is_retired, 5, "retired")
        await wait_for(pilot, lambda: table.get_cell(mac, "retired").plain == "yes", 5, "the retired cell")
        assert table.get_cell(mac, "state").plain == "RETIRED"
        await wait_text(pilot, "Retired machine")  # the API's answer, in words
        await pilot.press("R")
        await wait_text(pilot, "Activate test-virtio-1")
        await pilot.press("y")
        await wait_for(pilot, lambda: not farm.machines.machines[mac].is_retired, 5, "active again")
        await wait_for(pilot, lambda: table.get_cell(mac, "retired").plain == "no", 5, "the retired cell")


async def test_remove_a_machine_with_confirmation(farm: Farm, app: ConsoleApp) -> None:
    mac = await register(farm, 1)
    other = await register(farm, 2)
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot, app)
        await pilot.press("4")
        table = app.screen.table
        await wait_for(pilot, lambda: table.row_count == 2, 5, "the rows")
        table.move_cursor(row=table.get_row_index(mac))
        await pilot.press("delete")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), 5, "the confirmation")
        assert "Remove test-virtio-1" in screen_text(app)
        await pilot.press("y")
        await wait_for(pilot, lambda: mac not in farm.machines.machines, 5, "removed")
        await wait_for(pilot, lambda: table.row_count == 1, 5, "the row gone")
        assert other in table.rows
        await wait_text(pilot, "test-virtio-1 removed")


async def test_power_cycle_needs_a_pdu_then_reboots_the_outlet(farm: Farm, vivian, app: ConsoleApp) -> None:
    mac = await register(farm, 1)
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot, app)
        await pilot.press("4")
        table = app.screen.table
        await wait_for(pilot, lambda: table.row_count == 1, 5, "the row")
        await pilot.press("c")
        await wait_text(pilot, "has no PDU outlet")
        assert not isinstance(app.screen, ConfirmScreen)
        await wait_for(pilot, lambda: "vpdu1" in app.model.pdus and app.model.pdus["vpdu1"].ports, 5, "vpdu1")
        await farm.machines.update(mac, MachineUpdate(pdu="vpdu1", pdu_port_id="5"))
        await wait_for(pilot, lambda: table.get_cell(mac, "pdu") == "vpdu1/5", 5, "the PDU cell")
        await pilot.press("c")
        await wait_text(pilot, "Power cycle test-virtio-1 (outlet vpdu1/5)?")
        await pilot.press("y")
        await wait_text(pilot, "vpdu1/5 (test-virtio-1) is ON", timeout=10)
        assert farm.power.outlet_state("vpdu1", "5").value == "ON"


async def open_form(pilot, app: ConsoleApp, mac: str) -> MachineFormScreen:
    await pilot.press("4")
    table = app.screen.table
    await wait_for(pilot, lambda: mac in table.rows, 5, "the machine's row")
    app.screen.select_mac(mac)
    await pilot.press("e")
    await wait_for(pilot, lambda: isinstance(app.screen, MachineFormScreen) and app.screen.mac == mac, 5, "the form")
    await pilot.pause(0.1)
    return app.screen


async def test_machine_form_sets_pdu_port_ready_and_saves(farm: Farm, vivian, app: ConsoleApp) -> None:
    mac = await register(farm, 1)
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot, app)
        await wait_for(pilot, lambda: outlets_of(app, "vpdu1") == 16, 5, "outlets")
        sent: list[dict] = []
        update = app.client.update_machine

        async def spy(mac: str, **fields):
            sent.append(fields)
            return await update(mac, **fields)

        app.client.update_machine = spy
        form = await open_form(pilot, app, mac)
        assert form.focused is form.query_one("#form-pdu")
        # all by keyboard: PDU (type to search), port, then tab to "ready for service" and space
        await pilot.press("enter", *"vpdu1", "enter")
        await wait_for(pilot, lambda: form.query_one("#form-pdu", Select).value == "vpdu1", 5, "PDU vpdu1")
        await pilot.press("tab", "enter", "3", "enter")
        await wait_for(pilot, lambda: form.query_one("#form-port", Select).value == "3", 5, "port 3")
        await pilot.press("tab", "tab", "tab", "tab", "tab", "space")
        assert form.query_one("#form-ready", Checkbox).value is True
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: farm.machines.machines[mac].pdu == "vpdu1", 5, "the PATCH")
        machine = farm.machines.machines[mac]
        assert (machine.pdu, machine.pdu_port_id, machine.ready_for_service) == ("vpdu1", "3", True)
        assert sent == [{"pdu": "vpdu1", "pdu_port_id": "3", "ready_for_service": True}]  # one PATCH, changes only
        await wait_for(pilot, lambda: app.current_mode == "duts", 5, "back to the DUT table")
        table = app.screen.table
        await wait_for(pilot, lambda: table.get_cell(mac, "pdu") == "vpdu1/3", 5, "the PDU cell")
        assert table.get_cell(mac, "ready").plain == "yes"
        assert any("saved test-virtio-1" in n.message for n in app._notifications)
        # the PDU grid names the machine on outlet 3
        await pilot.press("3")
        await wait_text(pilot, "test-virtio-1")


async def test_machine_form_invalid_off_delay_is_shown_and_nothing_saved(farm: Farm, app: ConsoleApp) -> None:
    mac = await register(farm, 1)
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot, app)
        form = await open_form(pilot, app, mac)
        form.query_one("#form-comment", Input).value = "should not be saved"
        form.query_one("#form-delay", Input).focus()
        await pilot.press("ctrl+a", "ctrl+k", *"soon")
        await pilot.press("ctrl+s")
        await wait_text(pilot, "'soon' is not a number of seconds")
        assert form.query_one("#err-delay", Static).has_class("-error")
        await pilot.press("ctrl+a", "ctrl+k", "minus", "5", "ctrl+s")
        await wait_text(pilot, "from 0 to 3600")
        await pilot.pause(0.2)
        assert farm.machines.machines[mac].comment != "should not be saved"
        assert app.current_mode == "machine"
        await pilot.press("escape")  # cancel
        await wait_for(pilot, lambda: app.current_mode == "duts", 5, "back to the DUT table")


async def test_machine_form_shows_the_api_error_next_to_the_port(farm: Farm, vivian, app: ConsoleApp) -> None:
    mac_a = await register(farm, 1)
    mac_b = await register(farm, 2)
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot, app)
        await wait_for(pilot, lambda: outlets_of(app, "vpdu1") == 16, 5, "outlets")
        form = await open_form(pilot, app, mac_a)
        form.query_one("#form-pdu", Select).value = "vpdu1"
        await pilot.pause(0.1)
        form.query_one("#form-port", Select).value = "5"
        # meanwhile someone else puts machine B on that outlet
        await farm.machines.update(mac_b, MachineUpdate(pdu="vpdu1", pdu_port_id="5"))
        await pilot.press("ctrl+s")
        await wait_text(pilot, "already used by test-virtio-2")
        assert "already used" in str(form.query_one("#err-port", Static).render())
        assert "the API refused" in screen_text(app)
        assert farm.machines.machines[mac_a].pdu is None
        assert app.current_mode == "machine"


async def test_consoles_tab_shows_boot_log_and_type_mode_talks_to_the_dut(farm: Farm, vivian, app: ConsoleApp) -> None:
    mac = "52:54:00:11:22:03"
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot, app)
        await farm.power.set_outlet("vpdu1", "3", "on")
        await wait_for(pilot, lambda: mac in app.model.machines, 20, "the DUT to register")
        await pilot.press("4")
        await wait_for(pilot, lambda: mac in app.screen.table.rows, 5, "the DUT row")
        app.screen.select_mac(mac)
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.current_mode == "consoles", 5, "the consoles screen")
        screen = app.screen
        assert isinstance(screen, ConsolesScreen)
        await wait_for(pilot, lambda: screen.current_mac() == mac, 5, "its tab")
        view = screen.views[mac]
        await wait_for(pilot, lambda: f"SALAD.machine_id={mac}" in view.plain_lines(), 10, "the boot log")
        await wait_text(pilot, "SALAD.machine_id=")
        await wait_for(pilot, lambda: "MaRS: Registration complete" in view.plain_lines(), 10, "registration")
        assert screen.focused is view
        await pilot.press("t", *"echo hello", "enter")
        await wait_for(pilot, lambda: "hello" in view.plain_lines(), 10, "the DUT's answer")
        assert any(line.endswith("echo hello") for line in view.plain_lines())
        # in type mode the app's own keys (q quits, 1-6 switch screens) go to the DUT too
        await pilot.press(*"echo q1", "enter")
        await wait_for(pilot, lambda: "q1" in view.plain_lines(), 10, "the DUT's second answer")
        assert app.current_mode == "consoles" and app.is_running
        await pilot.press("ctrl+right_square_bracket")
        assert not view.typing
        await pilot.press("1")
        await wait_for(pilot, lambda: app.current_mode == "overview", 5, "keys act on the app again")


async def test_typing_into_a_disconnected_console_shows_the_error(farm: Farm, app: ConsoleApp) -> None:
    mac = await register(farm, 1)
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot, app)
        await pilot.press("5")
        screen = app.screen
        await wait_for(pilot, lambda: screen.current_mac() == mac, 5, "its tab")
        await pilot.press("t", "x")
        await wait_for(pilot, lambda: app.last_status and app.last_status[1] == "error", 5, "the error")
        assert "typing into test-virtio-1 failed" in app.last_status[0]
        await pilot.press("ctrl+right_square_bracket")


async def test_command_palette_goes_to_screens_and_powers_with_confirmation(farm: Farm, vivian,
                                                                          app: ConsoleApp) -> None:
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot, app)
        await wait_for(pilot, lambda: outlets_of(app, "vpdu1") == 16, 5, "outlets")
        await pilot.press("ctrl+p")
        await wait_for(pilot, lambda: isinstance(app.screen, CommandPalette), 5, "the palette")
        await pilot.press(*"go to pdus")
        await wait_text(pilot, "go to pdus")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.current_mode == "pdus" and not isinstance(app.screen, CommandPalette),
                       5, "the PDU screen")
        await pilot.press("colon")
        await wait_for(pilot, lambda: isinstance(app.screen, CommandPalette), 5, "the palette")
        await pilot.press(*"power on vpdu1/5")
        await wait_text(pilot, "power on vpdu1/5")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), 5, "the confirmation")
        assert farm.power.outlet_state("vpdu1", "5").value == "OFF"
        await pilot.press("y")
        await wait_for(pilot, lambda: farm.power.outlet_state("vpdu1", "5").value == "ON", 10, "outlet 5 on")
        await wait_text(pilot, "vpdu1/5 is ON")


async def test_lost_backend_shows_a_banner_and_recovers(tmp_path) -> None:
    import socket

    from tests.conftest import make_settings
    from valve_console.app import make_app
    from valve_console.client import FarmClient

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    client = FarmClient(url)
    app = make_app(client, linux_console=False)
    farm = None
    try:
        async with app.run_test(size=SIZE) as pilot:
            await wait_text(pilot, f"backend lost at {url}")
            assert "reconnecting" in screen_text(app)
            await pilot.press("3")  # still usable while lost
            await wait_text(pilot, "backend lost at")
            # the client has no token: the gateway trusts its own addresses, as by default (the event
            # stream needs the operator)
            farm = Farm(make_settings(tmp_path / "data", listen=f"127.0.0.1:{port}", trusted_networks=["auto"]))
            await farm.start()
            await wait_no_text(pilot, "backend lost at", timeout=15)
            await pilot.press("1")
            await wait_text(pilot, "farm        test")
            await farm.stop()  # lost again...
            farm = None
            await wait_text(pilot, "backend lost at", timeout=10)
            await wait_for(pilot, lambda: not app.connected, 5, "disconnected")
    finally:
        if farm is not None:
            await farm.stop()
        await client.close()
