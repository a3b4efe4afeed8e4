"""Pilot: a registration held for the operator shows where the operator looks, and is decided by keys.

The DUT table marks the machine ``[held]`` and its status line counts the held registrations; the detail
view (``i``) shows where it came from, why it waits and each field now -> asked; ``r`` drops it and ``a``
applies it, each after a confirmation. Real farm, real API; the held registration is made by the registry
exactly as the API makes it for a DUT at another address.
"""

from __future__ import annotations

from tests.conftest import api_url
from tests.tui.helpers import screen_text, wait_for, wait_text
from valve_console.app import make_app
from valve_console.backend.registration import Registration
from valve_console.client import FarmClient
from valve_console.screens.dialogs import ConfirmScreen
from valve_console.screens.machine_detail import MachineDetailScreen

SIZE = (150, 45)
MAC = "52:54:00:ee:00:13"
OWN, OTHER = "10.214.0.13", "10.214.0.66"


def reg(**fields) -> Registration:
    return Registration(**{"base_name": "gfx9", "tags": ["gfx9"], "mac_address": MAC, "ip_address": OWN,
                           "local_tty_device": "ttyUSB0", **fields})


async def test_a_held_registration_is_shown_and_decided_from_the_keyboard(farm) -> None:
    await farm.machines.register(reg(), source=OWN)
    held = await farm.machines.register(reg(ip_address=OTHER, tags=["evil"]), source=OTHER)
    assert held.held and "not from its own address" in held.held
    client = FarmClient(api_url(farm), token=farm.token)
    app = make_app(client, linux_console=False)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.model.loaded and app.connected, 10, "the first fetch")
            await pilot.press("4")
            table = app.screen.table
            await wait_for(pilot, lambda: table.row_count == 1, 5, "the machine's row")
            assert table.get_cell(MAC, "name").plain == "test-gfx9-1 [held]"
            await wait_text(pilot, "1 registration held for you: i to review")

            await pilot.press("i")
            await wait_for(pilot, lambda: isinstance(app.screen, MachineDetailScreen), 5, "the detail view")
            await wait_text(pilot, f"Registration held for you: from {OTHER}")
            text = screen_text(app)
            assert f"why: it came from {OTHER}, not from its own address {OWN}" in text
            assert f"ip_address: {OWN} -> {OTHER}" in text and "tags: [gfx9] -> [evil]" in text

            await pilot.press("r")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), 5, "the confirmation")
            assert f"Drop the held registration of test-gfx9-1 from {OTHER}?" in screen_text(app)
            await pilot.press("y")
            await wait_for(pilot, lambda: not farm.machines.machines[MAC].pending_registration, 10, "dropped")
            assert farm.machines.machines[MAC].ip_address == OWN
            await wait_for(pilot, lambda: "Registration held" not in screen_text(app), 5, "the hold gone")

            # Its own address asks for new tags while ready: held again, and this time applied.
            await farm.machines.set_ready(MAC, True, "test")
            await farm.machines.register(reg(tags=["gfx9", "new"]), source=OWN)
            await wait_text(pilot, "tags: [gfx9] -> [gfx9, new]")
            await pilot.press("a")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), 5, "the confirmation")
            await pilot.press("y")
            await wait_for(pilot, lambda: farm.machines.machines[MAC].tags == ["gfx9", "new"], 10, "applied")
            await wait_text(pilot, "held registration applied")
            await pilot.press("escape")
            await wait_for(pilot, lambda: table.get_cell(MAC, "name") == "test-gfx9-1", 5, "the mark gone")
    finally:
        await client.close()
