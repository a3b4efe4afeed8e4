"""Pilot: the DUT table shows TRAINING n/N, the detail view shows per-loop results and failures, and
the operator skips a training from the keyboard. Real farm, real vPDUs and Vivian DUTs."""

from __future__ import annotations

from textual.command import CommandPalette

from tests.conftest import api_url
from tests.training.conftest import add_machine, add_vpdu, mac
from tests.tui.helpers import screen_text, wait_for, wait_text
from valve_console.app import make_app
from valve_console.client import FarmClient
from valve_console.screens.dialogs import ConfirmScreen
from valve_console.screens.machine_detail import MachineDetailScreen

SIZE = (150, 45)


async def test_training_in_the_dut_table_and_the_detail_view(tfarm, http, tmp_path):
    tfarm.training.base_delay = 60.0  # a failed training stays failed while we look at it
    tfarm.training.max_delay = 60.0
    # DUTs that ignore their boot config: they register, but never run the boot-loop check, so loop 1 lasts
    stuck = await add_vpdu(tfarm, tmp_path, "stuck", "--no-boot-config")
    flaky = await add_vpdu(tfarm, tmp_path, "flaky", "--flaky=2")
    client = FarmClient(api_url(tfarm), token=tfarm.token)
    app = make_app(client, linux_console=False)
    try:
        await add_machine(http, 1, pdu="stuck")
        await add_machine(http, 2, pdu="flaky")
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.model.loaded and app.connected, 10, "the first fetch")
            await pilot.press("4")
            table = app.screen.table
            await wait_for(pilot, lambda: table.row_count == 2, 5, "two rows")
            await wait_for(pilot, lambda: table.get_cell(mac(1), "training") == "1/2", 15, "training 1/2")
            assert table.get_cell(mac(1), "state").plain == "TRAINING"
            await wait_for(pilot, lambda: table.get_cell(mac(2), "training") == "failed 1/2", 15, "failed 1/2")
            assert table.get_cell(mac(2), "state").plain == "TRAINING"
            # the detail view of the flaky machine: its loops and its failure
            app.screen.select_mac(mac(2))
            await pilot.press("i")
            await wait_for(pilot, lambda: isinstance(app.screen, MachineDetailScreen), 5, "the detail view")
            await wait_text(pilot, "Failures (1):")
            text = screen_text(app)
            assert "cooldown 2/2 (1 passed, 2 needed)" in text and "loop 2: FAIL" in text
            assert "registration" in text and "train-bootloop-" in text
            await pilot.press("escape")
            # the stuck machine: looping 1/2, then skipped from the keyboard (after a confirmation)
            await wait_for(pilot, lambda: not isinstance(app.screen, MachineDetailScreen), 5, "the table again")
            app.screen.select_mac(mac(1))
            await pilot.press("i")
            await wait_text(pilot, "looping 1/2 (0 passed, 2 needed)")
            assert "No failures." in screen_text(app)
            await pilot.press("k")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), 5, "the confirmation")
            assert "Skip the training of test-virtio-1" in screen_text(app)
            await pilot.press("y")
            await wait_for(pilot, lambda: tfarm.machines.machines[mac(1)].ready_for_service, 10, "ready")
            await wait_text(pilot, "skipped 1/2")
            assert "state IDLE" in screen_text(app)
            await pilot.press("escape")
            await wait_for(pilot, lambda: table.get_cell(mac(1), "training") == "skipped", 5, "the skipped cell")
            assert table.get_cell(mac(1), "state").plain == "IDLE"
            assert any("training skipped" in n.message for n in app._notifications)
            # a refused action is reported in words: it is ready already
            await pilot.press("k", "y")
            await wait_for(pilot, lambda: any("already ready for service" in n.message for n in app._notifications),
                           5, "the API's refusal")
            # the command palette: "train <machine>" retrains it, "stop training <machine>" stops it
            for command, state in (("train test-virtio-1", "TRAINING"), ("stop training test-virtio-1", "NOT_READY")):
                await pilot.press("ctrl+p")
                await wait_for(pilot, lambda: isinstance(app.screen, CommandPalette), 5, "the palette")
                await pilot.press(*command)
                await wait_text(pilot, command)
                await pilot.pause(0.3)
                await pilot.press("enter")
                await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), 5, "the confirmation")
                await pilot.press("y")
                await wait_for(pilot, lambda s=state: table.get_cell(mac(1), "state").plain == s, 10, state)
            assert tfarm.training.rows[mac(1)].state == "stopped"
    finally:
        await client.close()
        await stuck.stop()
        await flaky.stop()


async def test_machine_form_sets_the_training_override(tfarm, http, vpdu):
    from textual.widgets import Input

    from valve_console.screens.machine_form import MachineFormScreen

    await add_machine(http, 3, ready_for_service=True)
    client = FarmClient(api_url(tfarm), token=tfarm.token)
    app = make_app(client, linux_console=False)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.model.loaded and app.connected, 10, "the first fetch")
            await pilot.press("4")
            await wait_for(pilot, lambda: mac(3) in app.screen.table.rows, 5, "the row")
            app.screen.select_mac(mac(3))
            await pilot.press("e")
            await wait_for(pilot, lambda: isinstance(app.screen, MachineFormScreen), 5, "the form")
            form = app.screen
            await pilot.pause(0.1)
            form.query_one("#form-loops", Input).value = "0"
            await pilot.press("ctrl+s")
            await wait_text(pilot, "a whole number from 1 to 1000")
            assert tfarm.machines.machines[mac(3)].training_loops is None  # nothing saved
            form.query_one("#form-loops", Input).value = "5"
            form.query_one("#form-qualify", Input).value = "6"
            await pilot.press("ctrl+s")
            await wait_text(pilot, "cannot be more than training_loops (5)")  # the API's answer, at its field
            form.query_one("#form-qualify", Input).value = "4"
            await pilot.press("ctrl+s")
            await wait_for(pilot, lambda: tfarm.machines.machines[mac(3)].training_loops == 5, 5, "the PATCH")
            assert tfarm.machines.machines[mac(3)].training_qualify == 4
            assert tfarm.machines.machines[mac(3)].ready_for_service  # untouched
    finally:
        await client.close()
