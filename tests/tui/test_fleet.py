"""The Fleet screen against real backends: three Vivian farms (Farm + vPDU each), one console.

Rows are live from each farm's own event stream; a farm stopped says why on its row while the others
keep updating; enter switches every screen to that farm and ``0`` comes back.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import AsyncIterator

import httpx
import pytest

from tests.conftest import api_url, eventually, make_settings, running_farm, running_vpdu
from tests.tui.helpers import screen_text, wait_for, wait_text
from tests.tui.test_screens import register
from valve_console.app import ConsoleApp, make_fleet_app
from valve_console.backend.farm import Farm
from valve_console.client import FarmClient
from valve_console.console_data.fleet import ROW_EVENTS, Fleet, FleetSpec, GatewaySpec
from valve_console.screens.duts import DutsScreen
from valve_console.screens.fleet import FleetScreen

SIZE = (180, 45)


@contextlib.asynccontextmanager
async def vivian_farms(tmp_path: Path, names: list[str]) -> AsyncIterator[list[tuple[Farm, object]]]:
    """Real farms named ``names``, each with its own data dir and a vPDU (16 outlets) as ``vpdu1``."""
    async with contextlib.AsyncExitStack() as stack:
        farms = []
        for name in names:
            farm = await stack.enter_async_context(running_farm(make_settings(tmp_path / name, farm_name=name)))
            vpdu = await stack.enter_async_context(running_vpdu(farm, tmp_path / f"{name}-vivian"))
            farms.append((farm, vpdu))
        yield farms


def fleet_of(farms: list[Farm], name: str = "lab") -> Fleet:
    return Fleet(FleetSpec(name, tuple(GatewaySpec(f"gw-{f.settings.farm_name}", api_url(f), f.token)
                                       for f in farms)))


def row(app: ConsoleApp, gateway: str):
    view = app.fleet_view
    return view.rows.get(gateway) if view is not None else None


def showing(app: ConsoleApp, gateway: str | None = None) -> bool:
    """The switch is over: the Overview of ``gateway`` (of the one shown when None)."""
    done = app.current_mode == "overview" and not app.switching
    return done and (gateway is None or app.gateway_name == gateway)


def outlets_on(app: ConsoleApp, gateway: str) -> int:
    model = app.fleet[gateway].model
    return sum(1 for p in model.pdus.values() for o in p.ports.values() if str(o.state).upper() == "ON")


@pytest.fixture
async def three(tmp_path: Path):
    async with vivian_farms(tmp_path, ["alpha", "bravo", "charlie"]) as farms:
        yield [f for f, _ in farms]


async def test_rows_live_one_farm_down_and_switch(three: list[Farm]) -> None:
    alpha, bravo, charlie = three
    fleet = fleet_of(three)
    app = make_fleet_app(fleet, linux_console=False)
    try:
        async with app.run_test(size=SIZE) as pilot:
            assert isinstance(app.screen, FleetScreen)
            await wait_for(pilot, lambda: all(row(app, g) and row(app, g).ok for g in fleet.gateways),
                           what="every row up")
            text = screen_text(app)
            for name in ("gw-alpha", "gw-bravo", "gw-charlie", "alpha", "bravo", "charlie"):
                assert name in text
            assert "fleet lab" in text and "3 of 3 gateways up" in text

            # live: an outlet switched on in bravo shows in bravo's row (its model, from its own stream)
            await bravo.power.set_outlet("vpdu1", "3", "on")
            await wait_for(pilot, lambda: outlets_on(app, "gw-bravo") == 1, what="bravo's outlet ON")

            # alpha stops: its row says why; the others keep updating
            await alpha.stop()
            # first "the event stream ended", then each reconnection's reason
            await wait_for(pilot, lambda: "unreachable" in row(app, "gw-alpha").status, what="alpha's row down")
            await wait_text(pilot, "unreachable: ")
            assert not row(app, "gw-alpha").ok
            await wait_text(pilot, "2 of 3 gateways up")
            await charlie.power.set_outlet("vpdu1", "5", "on")
            await wait_for(pilot, lambda: outlets_on(app, "gw-charlie") == 1, what="charlie's outlet ON")
            assert row(app, "gw-bravo").ok and row(app, "gw-charlie").ok

            # enter on bravo: every screen shows bravo, and the top bar says so
            view = app.fleet_view
            assert view is not None and view.select_gateway("gw-bravo")
            await pilot.press("enter")
            await wait_for(pilot, lambda: showing(app, "gw-bravo"),
                           what="bravo's overview")
            await wait_text(pilot, "gateway gw-bravo")
            assert "farm bravo" in screen_text(app)
            await pilot.press("3")
            await wait_text(pilot, "vpdu1")
            assert app.model is fleet["gw-bravo"].model and app.client is fleet["gw-bravo"].client
            # the shown gateway's stream carries every event; the others' only what their rows need
            assert fleet["gw-bravo"].feed.types is None
            assert fleet["gw-charlie"].feed.types == ROW_EVENTS
            await charlie.power.set_outlet("vpdu1", "6", "on")  # rows stay live on the filtered streams
            await wait_for(pilot, lambda: outlets_on(app, "gw-charlie") == 2, what="charlie's second outlet")
            # charlie's console events are not read (not shown): its consoles are fetched now and then
            # (CONSOLES_EVERY), so a silent console is still an alarm on its row
            consoles = await eventually(fleet["gw-charlie"].client.consoles, "a console on charlie (outlet 5's DUT)",
                                        timeout=20)
            fleet["gw-charlie"].model.consoles.clear()
            await app.fleet.refresh_consoles(app.gateway)
            await wait_for(pilot, lambda: set(consoles) <= set(fleet["gw-charlie"].model.consoles),
                           what="charlie's consoles fetched")
            # 0: back to the Fleet screen from any screen
            await pilot.press("0")
            await wait_for(pilot, lambda: isinstance(app.screen, FleetScreen), what="the Fleet screen")
            await wait_text(pilot, "screens 1-9 show gw-bravo")
    finally:
        await fleet.close()


async def test_switch_shows_the_new_gateways_machines(tmp_path: Path) -> None:
    """The DUT table of gateway A is not shown after switching to B: the screens are made anew on B."""
    async with vivian_farms(tmp_path, ["alpha", "bravo"]) as farms:
        (alpha, _), (bravo, bravo_vpdu) = farms
        alpha_mac = await register(alpha, 1, "onlyalpha")
        fleet = fleet_of([alpha, bravo])
        app = make_fleet_app(fleet, linux_console=False)
        try:
            async with app.run_test(size=SIZE) as pilot:
                await wait_for(pilot, lambda: all(row(app, g) and row(app, g).ok for g in fleet.gateways),
                               what="every row up")
                # the rows' contents: alpha's machine by state; bravo's PDU lost → PDUs down and an alarm
                assert row(app, "gw-alpha").duts.startswith("1: ") and row(app, "gw-bravo").duts == "none"
                assert row(app, "gw-alpha").jobs == "0 running, 0 queued"
                await bravo_vpdu.stop()
                await wait_for(pilot, lambda: row(app, "gw-bravo").pdus_unreachable == 1, what="bravo's PDU down")
                await wait_for(pilot, lambda: "PDU vpdu1 unreachable" in row(app, "gw-bravo").alarm_text,
                               what="bravo's alarm")
                assert row(app, "gw-bravo").alarms >= 1 and row(app, "gw-bravo").ok  # the gateway itself is up
                assert row(app, "gw-alpha").pdus_unreachable == 0
                app.fleet_view.select_gateway("gw-bravo")
                await wait_text(pilot, "first alarm: PDU vpdu1 unreachable")
                app.fleet_view.select_gateway("gw-alpha")
                await pilot.press("enter")
                await wait_for(pilot, lambda: showing(app, "gw-alpha"))
                await pilot.press("4")
                await wait_for(pilot, lambda: isinstance(app.screen, DutsScreen))
                first = app.screen
                await wait_for(pilot, lambda: first.table.row_count == 1, what="alpha's machine in the DUT table")
                assert alpha_mac in first.table.rows
                await pilot.press("0")
                await wait_for(pilot, lambda: isinstance(app.screen, FleetScreen))
                app.fleet_view.select_gateway("gw-bravo")
                await pilot.press("enter")
                await wait_for(pilot, lambda: showing(app, "gw-bravo"))
                await pilot.press("4")
                await wait_for(pilot, lambda: isinstance(app.screen, DutsScreen))
                assert app.screen is not first  # made anew, on bravo's model
                assert app.screen.model is fleet["gw-bravo"].model
                await pilot.pause(0.3)
                assert app.screen.table.row_count == 0 and "onlyalpha" not in screen_text(app)
                assert "farm bravo" in screen_text(app) and "gateway gw-bravo" in screen_text(app)
        finally:
            await fleet.close()


async def test_wrong_token_and_unreachable_said_on_their_rows(farm: Farm) -> None:
    """One gateway with a refused token, one nobody answers: each row says why; the good one is up."""
    from tests.e2e.helpers import free_port

    fleet = Fleet(FleetSpec("lab", (
        GatewaySpec("good", api_url(farm), farm.token),
        GatewaySpec("badtoken", api_url(farm), "not-the-token"),
        GatewaySpec("gone", f"http://127.0.0.1:{free_port()}", "x"),
    )))
    app = make_fleet_app(fleet, linux_console=False)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: row(app, "good") and row(app, "good").ok, what="good up")
            await wait_for(pilot, lambda: row(app, "badtoken").status == "token refused", what="token refused")
            await wait_for(pilot, lambda: row(app, "gone").status.startswith("unreachable: "), what="gone")
            text = screen_text(app)
            assert "token refused" in text and "unreachable: " in text and "1 of 3 gateways up" in text
            assert "Traceback" not in text
            # enter on the refused one: its screens say it is lost and why, they do not crash
            app.fleet_view.select_gateway("badtoken")
            await pilot.press("enter")
            await wait_for(pilot, lambda: showing(app, "badtoken"))
            await wait_text(pilot, "backend lost at")
    finally:
        await fleet.close()


class OlderGateway(httpx.AsyncHTTPTransport):
    """A gateway of an older version: no /api/v1/settings nor /api/v1/gitlab (404, as FastAPI answers)."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path in ("/api/v1/settings", "/api/v1/gitlab"):
            return httpx.Response(404, json={"detail": "Not Found"})
        if request.url.path == "/api/v1/events" and "types" in request.url.params:
            return httpx.Response(400, json={"error": "unknown event types: job"})  # an older list of types
        return await super().handle_async_request(request)


async def test_a_gateway_too_old_for_a_screen(farm: Farm) -> None:
    def make_client(gw: GatewaySpec) -> FarmClient:
        older = OlderGateway() if gw.name == "old" else None
        return FarmClient(gw.url, token=gw.token, tolerant=True, transport=older)

    fleet = Fleet(FleetSpec("lab", (GatewaySpec("new", api_url(farm), farm.token),
                                    GatewaySpec("old", api_url(farm), farm.token))), make_client=make_client)
    app = make_fleet_app(fleet, linux_console=False)
    try:
        async with app.run_test(size=SIZE) as pilot:
            # not shown, "old" is asked for the row's event types only; it refuses them: it gets them all
            await wait_for(pilot, lambda: row(app, "old") and row(app, "old").ok, what="old up")
            assert fleet["old"].feed.types is None and fleet["new"].feed.types is None
            app.fleet_view.select_gateway("old")
            await pilot.press("enter")
            await wait_for(pilot, lambda: showing(app, "old"))
            version = fleet["old"].version
            assert version
            await pilot.press("9")
            await wait_text(pilot, f"old (version {version}) is too old for the Settings screen")
            await pilot.press("8")
            await wait_text(pilot, f"old (version {version}) is too old for the GitLab screen")
            assert "Not Found" not in screen_text(app)
    finally:
        await fleet.close()
