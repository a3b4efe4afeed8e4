"""The Consoles screen against a real backend: unbound streams are shown, bound by hand (u), dropped (d),
and a console is removed (x), each confirmed where it takes something away."""

from __future__ import annotations

import asyncio

from tests.conftest import api_url, eventually, make_settings
from tests.tui.helpers import screen_text, wait_for, wait_text
from valve_console.app import make_app
from valve_console.backend.farm import Farm
from valve_console.backend.registration import Registration
from valve_console.client import FarmClient
from valve_console.screens.consoles import ConsolesScreen, UnboundStreamsScreen
from valve_console.screens.dialogs import ConfirmScreen

MAC = "52:54:00:11:22:03"
SIZE = (140, 45)


def notified(app, text: str) -> bool:
    return any(text in n.message for n in app._notifications)


async def test_the_operator_binds_an_unbound_stream_and_removes_a_console(tmp_path):
    farm = Farm(make_settings(tmp_path / "data", console_local_sources=[]))  # loopback plays the DUT network
    await farm.start()
    client = FarmClient(api_url(farm), token=farm.token)
    writers = []
    try:
        await farm.machines.register(Registration(base_name="virtio", mac_address=MAC, ip_address="10.42.0.13"))
        # Its console comes through a NAT (another address than its registered one): it waits.
        reader, writer = await asyncio.open_connection(*farm.netconsole_address, local_addr=("127.0.0.5", 0))
        writers.append(writer)
        writer.write(f"SALAD.machine_id={MAC}\n\x1b]0;evil title\x07hello \x1b[2Joperator\n".encode())
        # and a stranger that announces nothing
        _, stranger = await asyncio.open_connection(*farm.netconsole_address, local_addr=("127.0.0.6", 0))
        writers.append(stranger)
        stranger.write(b"who am I\n")
        await writer.drain()
        await eventually(lambda: len(farm.consoles.unbound_json()) == 2, "two unbound streams")

        app = make_app(client, linux_console=False)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.model.loaded and app.connected, 10, "the first fetch")
            app.open_console(MAC)
            await wait_for(pilot, lambda: isinstance(app.screen, ConsolesScreen) and app.screen.current_mac() == MAC,
                           5, "the console tab")
            await wait_text(pilot, "2 console streams bound to no machine")
            await pilot.press("u")
            await wait_for(pilot, lambda: isinstance(app.screen, UnboundStreamsScreen), 5, "the list")
            text = screen_text(app)
            assert "127.0.0.5" in text and f"announced {MAC}" in text and "hello operator" in text
            assert "who am I" in text and "no machine announced" in text
            assert "evil title" not in text  # the DUT's escape sequences are not the TUI's
            # The oldest is highlighted: the stream announcing MAC. Drop the stranger first (down, d).
            await pilot.press("down", "d")
            await wait_for(pilot, lambda: notified(app, "dropped"), 5, "dropped")
            await eventually(lambda: len(farm.consoles.unbound_json()) == 1, "one left")
            await pilot.press("u")
            await wait_for(pilot, lambda: isinstance(app.screen, UnboundStreamsScreen), 5, "the list again")
            await pilot.press("enter")
            await wait_for(pilot, lambda: notified(app, "console now"), 5, "bound")
            console = farm.consoles.consoles[MAC]
            assert console.stream is not None and console.stream.host == "127.0.0.5"
            await wait_for(pilot, lambda: "bound to no machine" not in screen_text(app), 10, "the count gone")

            # x asks first; n keeps it, y removes it.
            await pilot.press("x")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), 5, "the question")
            assert "Remove" in screen_text(app)
            await pilot.press("n")
            await pilot.pause(0.2)
            assert MAC in farm.consoles.consoles
            await pilot.press("x")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), 5, "the question")
            await pilot.press("y")
            await wait_for(pilot, lambda: notified(app, "console removed"), 5, "removed")
            assert MAC not in farm.consoles.consoles
            assert await asyncio.wait_for(reader.read(), 5) == b""  # its connection was dropped
            # The registered machine keeps its tab, empty until its console comes back.
            await wait_for(pilot, lambda: app.screen.current_mac() == MAC, 5, "the tab")
            await wait_text(pilot, "no console yet")
    finally:
        for w in writers:
            w.close()
        await client.close()
        await farm.stop()
