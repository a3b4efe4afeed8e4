"""Pilot tests of console sharing (one writer, takeover, TCP port, console device/remote) and of
outlet discovery (discover, find outlets, cancel), against a real backend (and Vivian where needed)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from textual.command import CommandPalette
from textual.widgets import Input, Select, Static

from tests.conftest import api_url, make_settings
from valve_console.app import ConsoleApp, make_app, make_writer_id
from valve_console.backend.farm import Farm
from valve_console.backend.registration import Registration
from valve_console.client import FarmClient
from valve_console.screens.consoles import ConsolesScreen, writer_conflict
from valve_console.screens.dialogs import ConfirmScreen
from valve_console.console_data import Changes, FarmModel
from valve_console.contract import DiscoveryOutlet, DiscoveryStatus, SerialDevice
from valve_console.screens.pdus import PdusScreen

from .fake_farm import event
from .helpers import screen_text, until, wait_for, wait_no_text, wait_text
from .test_screens import SIZE, connected, open_form, register

DUT3 = "52:54:00:11:22:03"
DUT5 = "52:54:00:11:22:05"


def notified(app: ConsoleApp, text: str) -> bool:
    return any(text in n.message for n in app._notifications) or text in (app.last_status or ("",))[0]


# ------------------------------------------------------------------ plain units
def test_writer_id_and_conflict_message() -> None:
    writer = make_writer_id()
    assert writer.startswith("tui-") and len(writer) <= 64 and all("!" <= c <= "~" for c in writer)
    message = "52:54:00:11:22:03 already has a writer (api:alice); send takeover=true to take over"
    assert writer_conflict(message) == "api:alice"
    assert writer_conflict("the console of x is not connected: nothing to type into") is None


def test_model_follows_discovery_events() -> None:
    model = FarmModel()
    model.set_discovery(DiscoveryStatus.model_validate(
        {"current": None, "queue": [{"pdu": "d1", "port_id": "0"}, {"pdu": "d1", "port_id": "1"}]}))
    changes = Changes()
    changes.add_event(event("discovery", {"state": "started", "pdu": "d1", "port_id": "0", "timeout": 9}))
    model.apply(changes)
    assert model.discovery.current is not None and model.discovery.current.port_id == "0"
    assert model.discovery.queue == [DiscoveryOutlet(pdu="d1", port_id="1")]
    assert 8 <= model.discovery_remaining() <= 9
    changes = Changes()
    changes.add_event(event("discovery", {"state": "cancelled", "pdu": "d1", "port_id": "0"}))
    model.apply(changes)
    assert model.discovery == DiscoveryStatus(current=None, queue=[])
    assert model.discovery_remaining() is None


# ------------------------------------------------------------------ console sharing
async def open_console_of(pilot, app: ConsoleApp, mac: str) -> ConsolesScreen:
    app.open_console(mac)
    await wait_for(pilot, lambda: isinstance(app.screen, ConsolesScreen) and app.screen.current_mac() == mac,
                   5, "the console tab")
    return app.screen


async def test_writer_conflict_is_shown_and_takeover_types_into_the_dut(farm: Farm, vivian, app: ConsoleApp) -> None:
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot, app)
        await farm.power.set_outlet("vpdu1", "3", "on")
        await wait_for(pilot, lambda: DUT3 in app.model.machines, 20, "the DUT to register")
        screen = await open_console_of(pilot, app, DUT3)
        view = screen.views[DUT3]
        await wait_for(pilot, lambda: "MaRS: Registration complete" in view.plain_lines(), 15, "the boot log")
        # someone else (another API client) holds write access
        farm.consoles.input(DUT3, b"", "alice")
        await wait_text(pilot, "writer: api:alice")
        await pilot.press("t", *"echo one", "enter")
        await wait_text(pilot, "api:alice is typing in this console — press ctrl+t to take over")
        assert view.blocked_by == "api:alice"
        assert farm.consoles.consoles[DUT3].current_writer().who == "api:alice"
        assert "one" not in view.plain_lines()
        # ctrl+t takes over and resends what was refused; the DUT answers
        await pilot.press("ctrl+t")
        await wait_for(pilot, lambda: "one" in view.plain_lines(), 10, "the DUT's answer")
        assert farm.consoles.consoles[DUT3].current_writer().who == f"api:{app.writer_id}"
        await wait_no_text(pilot, "is typing in this console")
        await wait_text(pilot, "writer: you")
        await pilot.press(*"echo two", "enter")
        await wait_for(pilot, lambda: "two" in view.plain_lines(), 10, "the second answer")
        # leaving type mode gives write access back
        await pilot.press("ctrl+right_square_bracket")
        await until(lambda: farm.consoles.consoles[DUT3].current_writer() is None, 5, "the writer released")
        await wait_text(pilot, "writer: nobody")
        # alice takes it back; when she lets go, typing goes through again without a takeover
        farm.consoles.input(DUT3, b"", "alice", takeover=True)
        await wait_text(pilot, "writer: api:alice")
        await pilot.press("t", "x")
        await wait_text(pilot, "api:alice is typing in this console")
        farm.consoles.release_writer(DUT3, "alice")
        await wait_no_text(pilot, "is typing in this console")
        await wait_for(pilot, lambda: notified(app, "api:alice stopped typing"), 5, "the report")
        await pilot.press(*"echo three", "enter")
        await wait_for(pilot, lambda: "three" in view.plain_lines(), 10, "the third answer")
        assert not any(line.endswith("xecho three") for line in view.plain_lines())
        # quitting gives write access back too (valve_console.app._run calls this on the way out)
        assert app.held_writers == {DUT3}
        await app.release_writers()
        assert farm.consoles.consoles[DUT3].current_writer() is None
        await pilot.press("ctrl+right_square_bracket")


@contextlib.asynccontextmanager
async def farm_and_app(tmp_path: Path, **settings: Any) -> AsyncIterator[tuple[Farm, ConsoleApp, FarmClient]]:
    """A farm of its own (console TCP settings chosen by the test) and the app on it."""
    farm = Farm(make_settings(tmp_path / "data", console_discovery="off", **settings))
    await farm.start()
    client = FarmClient(api_url(farm), token=farm.token)
    try:
        yield farm, make_app(client, linux_console=False), client
    finally:
        await client.close()
        await farm.stop()


async def console_speaks(farm: Farm, mac: str) -> asyncio.StreamWriter:
    """The machine's netconsole speaks: its console exists from now on."""
    _reader, dut = await asyncio.open_connection(*farm.netconsole_address)
    dut.write(f"hello\r\nSALAD.machine_id={mac}\r\n".encode())
    await dut.drain()
    await until(lambda: farm.consoles.consoles.get(mac) is not None, 5, "the console")
    return dut


async def test_console_header_shows_the_tcp_port_and_viewers(tmp_path: Path) -> None:
    async with farm_and_app(tmp_path, console_tcp_base=0) as (farm, app, client):
        mac = await register(farm, 1)
        dut = await console_speaks(farm, mac)
        viewer = None
        try:
            async with app.run_test(size=SIZE) as pilot:
                await connected(pilot, app)
                await open_console_of(pilot, app, mac)
                await wait_for(pilot, lambda: (c := app.model.consoles.get(mac)) is not None and c.tcp_port, 10,
                               "the TCP port")
                console = (await client.consoles())[mac]
                await wait_text(pilot, "via netconsole@127.0.0.1:")
                await wait_text(pilot, f"shared: nc {console.tcp_host} {console.tcp_port}")
                await wait_text(pilot, "writer: nobody  0 viewers")
                # someone runs nc on that port: one viewer more
                _vr, viewer = await asyncio.open_connection(console.tcp_host, console.tcp_port)
                await wait_text(pilot, "1 viewer")
        finally:
            dut.close()
            if viewer is not None:
                viewer.close()


async def test_console_header_shows_why_the_tcp_port_is_missing(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        base = busy.getsockname()[1]  # the first machine's port (index 0) is taken
        async with farm_and_app(tmp_path, console_tcp_base=base) as (farm, app, _client):
            mac = await register(farm, 1)
            dut = await console_speaks(farm, mac)
            try:
                async with app.run_test(size=SIZE) as pilot:
                    await connected(pilot, app)
                    await open_console_of(pilot, app, mac)
                    await wait_text(pilot, f"cannot listen on 127.0.0.1:{base}")
                    assert "shared: nc" not in screen_text(app)
            finally:
                dut.close()


async def test_machine_form_sets_console_device_and_remote_source(farm: Farm, app: ConsoleApp,
                                                                   client: FarmClient) -> None:
    mac = await register(farm, 1)
    ident = "usb-FTDI_FT232R_A10K3B2C-if00"
    device = {"identity": ident, "devnode": "/dev/ttyUSB3", "serial": "A10K3B2C", "machine": None, "open": False,
              "error": None}
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot, app)

        async def devices() -> dict[str, SerialDevice]:
            return {ident: SerialDevice.model_validate(device)}  # a USB adapter plugged into the gateway

        app.client.console_devices = devices
        form = await open_form(pilot, app, mac)
        select = form.query_one("#form-condev", Select)
        await wait_for(pilot, lambda: any(v == ident for _, v in select._options), 5, "the device option")
        # a bad URL: the API's error is shown next to the field, nothing is stored
        form.query_one("#form-remote", Input).value = "ftp://console-server:7001"
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: form.query_one("#err-remote", Static).has_class("-error"), 5, "the error")
        assert "is not a console URL" in str(form.query_one("#err-remote", Static).render())
        assert app.current_mode == "machine"
        assert (await client.consoles())[mac].remote is None
        # a good one, and the device: both stored (separate calls from the machine PATCH)
        sent: list[dict] = []
        update = app.client.update_machine

        async def spy(mac: str, **fields):
            sent.append(fields)
            return await update(mac, **fields)

        app.client.update_machine = spy
        select.value = ident
        form.query_one("#form-remote", Input).value = "tcp://127.0.0.1:7001"
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: app.current_mode == "duts", 5, "back to the DUT table")
        console = (await client.consoles())[mac]
        assert console.remote == "tcp://127.0.0.1:7001"
        assert console.device == ident
        assert sent == []  # no machine field changed: no PATCH
        # unsetting both, from the form again
        form = await open_form(pilot, app, mac)
        await wait_for(pilot, lambda: form.query_one("#form-condev", Select).value == ident, 5, "the device shown")
        assert form.query_one("#form-remote", Input).value == "tcp://127.0.0.1:7001"
        form.query_one("#form-condev", Select).value = Select.NULL
        form.query_one("#form-remote", Input).value = ""
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: app.current_mode == "duts", 5, "back to the DUT table")
        console = (await client.consoles())[mac]
        assert console.remote is None and console.device is None


# ------------------------------------------------------------------ outlet discovery
async def pdu_screen(pilot, app: ConsoleApp, pdu: str) -> PdusScreen:
    await pilot.press("3")
    await wait_for(pilot, lambda: isinstance(app.screen, PdusScreen) and pdu in app.screen.sections
                   and (p := app.model.pdus.get(pdu)) is not None and p.ports, 10, f"the {pdu} grid")
    return app.screen


async def confirm(pilot, app: ConsoleApp, question: str) -> None:
    await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), 5, "the confirmation")
    assert question in screen_text(app)
    await pilot.press("y")


async def test_discover_outlet_5_boots_the_dut_and_gives_it_the_outlet(farm: Farm, vivian, app: ConsoleApp) -> None:
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot, app)
        screen = await pdu_screen(pilot, app, "vpdu1")
        await wait_for(pilot, lambda: screen_text(app).count("[off]") == 16, 10, "16 outlets off")
        assert screen.select_outlet("vpdu1", "5")
        await pilot.press("d")
        await confirm(pilot, app, "Power vpdu1/5 on and give it to the next machine that registers?")
        await wait_text(pilot, "discovering vpdu1/5 — ")
        assert " s left" in screen_text(app)
        await wait_for(pilot, lambda: notified(app, f"{DUT5} is behind vpdu1/5"), 30, "the DUT found")
        await wait_no_text(pilot, "discovering vpdu1/5")
        await pilot.press("4")
        table = app.screen.table
        await wait_for(pilot, lambda: DUT5 in table.rows and table.get_cell(DUT5, "pdu") == "vpdu1/5", 10,
                       "the DUT with its outlet")
        assert farm.power.outlet_state("vpdu1", "5").value == "ON"


async def test_discover_refusal_is_shown_in_words(farm: Farm, app: ConsoleApp) -> None:
    await farm.power.add_pdu("d1", "dummy", {"ports": 2, "initial_state": "ON"})
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot, app)
        screen = await pdu_screen(pilot, app, "d1")
        assert screen.select_outlet("d1", "1")
        await pilot.press("d")
        await confirm(pilot, app, "Power d1/1 on")
        await wait_for(pilot, lambda: notified(app, "discovering d1/1 failed: The port 1 of PDU d1 is already on use"),
                       5, "the refusal")


async def test_find_outlets_walks_the_queue(farm: Farm, app: ConsoleApp) -> None:
    await farm.power.add_pdu("d1", "dummy", {"ports": 2, "initial_state": "OFF"})
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot, app)
        await pdu_screen(pilot, app, "d1")
        await pilot.press("D")
        await confirm(pilot, app, "Find outlets on d1")
        await wait_text(pilot, "discovering d1/0 — ")
        await wait_text(pilot, "1 more queued")
        macs = []
        for n, port in ((1, "0"), (2, "1")):
            mac = f"52:54:00:aa:00:{n:02x}"
            await wait_for(pilot, lambda port=port: (c := farm.discovery.current) is not None and c.armed
                           and c.port_id == port, 10, f"d1/{port} on and waiting")
            await farm.machines.register(Registration(base_name="virtio", mac_address=mac, ip_address=f"10.42.1.{n}"))
            await wait_for(pilot, lambda mac=mac, port=port: notified(app, f"{mac} is behind d1/{port}"), 10,
                           f"{mac} found")
            macs.append(mac)
            if port == "0":
                await wait_text(pilot, "discovering d1/1 — ")
                assert "more queued" not in screen_text(app)
        await wait_no_text(pilot, "discovering d1/")
        assert [(farm.machines.machines[m].pdu, farm.machines.machines[m].pdu_port_id) for m in macs] == [
            ("d1", "0"), ("d1", "1")]
        assert app.model.discovery == DiscoveryStatus(current=None, queue=[])


async def test_cancel_discovery_switches_the_outlet_off(farm: Farm, app: ConsoleApp) -> None:
    await farm.power.add_pdu("d1", "dummy", {"ports": 2, "initial_state": "OFF"})
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot, app)
        await pdu_screen(pilot, app, "d1")
        # from the command palette this time
        await pilot.press("colon")
        await wait_for(pilot, lambda: isinstance(app.screen, CommandPalette), 5, "the palette")
        await pilot.press(*"discover d1/1")
        await wait_text(pilot, "discover d1/1")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await confirm(pilot, app, "Power d1/1 on and give it to the next machine that registers?")
        await until(lambda: farm.power.outlet_state("d1", "1").value == "ON", 5, "outlet 1 on")
        await wait_text(pilot, "discovering d1/1 — ")
        await wait_text(pilot, "C Cancel discovery")
        await pilot.press("C")
        await confirm(pilot, app, "Cancel the discovery of d1/1?")
        await until(lambda: farm.power.outlet_state("d1", "1").value == "OFF", 5, "outlet 1 off again")
        await wait_for(pilot, lambda: notified(app, "discovery of d1/1 cancelled"), 5, "the report")
        await wait_no_text(pilot, "discovering d1/1")
        assert farm.discovery.current is None
        # esc cancels too (after asking)
        await pilot.press("d")
        await confirm(pilot, app, "Power d1/0 on")
        await wait_text(pilot, "discovering d1/0 — ")
        await pilot.press("escape")
        await confirm(pilot, app, "Cancel the discovery of d1/0?")
        await until(lambda: farm.power.outlet_state("d1", "0").value == "OFF", 5, "outlet 0 off again")
        await wait_no_text(pilot, "discovering d1/0")
