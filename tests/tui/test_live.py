"""Live updates: batching of events, a console at 115200 baud, refetch on dropped events."""

from __future__ import annotations

from valve_console.app import ConsoleApp
from valve_console.backend.farm import Farm
from valve_console.backend.registration import Registration
from valve_console.screens.consoles import ConsolesScreen, without_overlap
from valve_console.console_data import Changes, FarmModel, Snapshot

from .helpers import wait_for

SIZE = (140, 45)
MAC = "52:54:00:aa:00:01"


def test_changes_keep_the_latest_state_per_outlet_and_machine() -> None:
    changes = Changes()
    for state in ("ON", "OFF", "ON"):
        changes.add_event({"type": "outlet", "data": {"pdu": "p", "port_id": "1", "state": state}})
    for n in range(3):
        changes.add_event({"type": "machine", "data": {"mac": MAC, "machine": {"mac_address": MAC, "n": n}}})
    changes.add_event({"type": "console", "data": {"mac": MAC, "text": "a"}})
    changes.add_event({"type": "console", "data": {"mac": MAC, "text": "b"}})
    assert changes.outlets == {("p", "1"): {"pdu": "p", "port_id": "1", "state": "ON"}}
    assert changes.machines[MAC]["n"] == 2
    assert changes.console_text[MAC] == ["a", "b"]
    assert changes.add_event({"type": "dropped", "data": {"count": 3}}) is True


def test_model_applies_a_snapshot_then_newer_events() -> None:
    model = FarmModel()
    pdu = {"name": "p", "ports": {"1": {"state": "OFF", "label": "x"}}}
    changes = Changes(snapshot=Snapshot({"services": {}}, [], {}, {"p": pdu}, {}, []))
    changes.add_event({"type": "outlet", "data": {"pdu": "p", "port_id": "1", "state": "ON", "label": "x"}})
    changes.add_event({"type": "health", "data": {"service": "power", "state": "degraded", "reason": "r"}})
    model.apply(changes)
    assert model.outlet("p", "1")["state"] == "ON"
    assert model.health["services"]["power"] == {"state": "degraded", "reason": "r"}
    assert model.free_ports("p") == ["1"]


def test_without_overlap_drops_what_the_log_already_holds() -> None:
    log = "line 1\nline 2\nline 3\npartial"
    assert without_overlap(log, "line 3\npartial and more\nline 4\n") == " and more\nline 4\n"
    assert without_overlap(log, "brand new\n") == "brand new\n"
    assert without_overlap("", "x") == "x"


async def test_console_keeps_up_with_115200_baud(farm: Farm, app: ConsoleApp) -> None:
    """11.5 kB/s of console text, published the way the backend does (20 batches a second):
    every line arrives, in order, in the visible console."""
    await farm.machines.register(Registration(base_name="virtio", mac_address=MAC, ip_address="10.42.1.1"))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.model.loaded and app.connected, 10, "the first fetch")
        app.open_console(MAC)
        await wait_for(pilot, lambda: isinstance(app.screen, ConsolesScreen) and app.screen.current_mac() == MAC,
                       5, "the console tab")
        view = app.screen.views[MAC]
        line = "[{:12.6f}] vivian: periodic status {:6d}: eth0 rx 1514 tx 66 irq 3\r\n"
        n = 0
        for _batch in range(60):  # 3 s of output at 115200 baud, in 50 ms batches of ~576 bytes
            text = ""
            while len(text) < 576:
                text += line.format(n / 100, n)
                n += 1
            farm.bus.publish("console", {"mac": MAC, "text": text})
            await pilot.pause(0.05)
        await wait_for(pilot, lambda: view.line_count >= n, 10, f"{n} lines")
        lines = view.plain_lines()
        numbers = [int(x.split("status")[1].split(":")[0]) for x in lines if "periodic status" in x]
        assert numbers == list(range(n))
