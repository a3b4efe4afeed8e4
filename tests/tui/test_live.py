"""Live updates: batching of events, a console at 115200 baud, refetch on dropped events."""

from __future__ import annotations

from valve_console.app import ConsoleApp
from valve_console.backend.farm import Farm
from valve_console.backend.registration import Registration
from valve_console.screens.consoles import ConsolesScreen, without_overlap
from valve_console.console_data import Changes, FarmModel, Snapshot
from valve_console.contract import Health, OutletOf, Pdu, ServiceHealth

from .fake_farm import event, health, machine, outlet_event, pdu
from .helpers import wait_for

SIZE = (140, 45)
MAC = "52:54:00:aa:00:01"


def test_changes_keep_the_latest_state_per_outlet_and_machine() -> None:
    changes = Changes()
    for state in ("ON", "OFF", "ON"):
        changes.add_event(event("outlet", outlet_event("p", "1", state)))
    for n in range(3):
        changes.add_event(event("machine", {"action": "updated", "mac": MAC,
                                            "machine": machine(MAC, f"dut-{n}", "10.42.1.1", "IDLE")}))
    changes.add_event(event("console", {"mac": MAC, "text": "a"}))
    changes.add_event(event("console", {"mac": MAC, "text": "b"}))
    assert changes.outlets == {("p", "1"): OutletOf.model_validate(outlet_event("p", "1", "ON"))}
    assert changes.machines[MAC].full_name == "dut-2"
    assert changes.console_text[MAC] == ["a", "b"]
    assert changes.add_event(event("dropped", {"count": 3})) is True


def test_model_applies_a_snapshot_then_newer_events() -> None:
    model = FarmModel()
    ports = {"1": {k: v for k, v in outlet_event("p", "1", "OFF", "x").items() if k not in ("pdu", "port_id")}}
    snapshot = Snapshot(Health.model_validate(health()), [], {}, {"p": Pdu.model_validate(pdu("p", ports))}, {}, [])
    changes = Changes(snapshot=snapshot)
    changes.add_event(event("outlet", outlet_event("p", "1", "ON", "x")))
    changes.add_event(event("health", {"service": "power", "state": "degraded", "reason": "r"}))
    model.apply(changes)
    outlet = model.outlet("p", "1")
    assert outlet is not None and outlet.state == "ON" and outlet.label == "x"
    assert model.health is not None
    assert model.health.services["power"] == ServiceHealth(state="degraded", reason="r")
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
