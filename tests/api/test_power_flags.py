"""Health from power, end to end (issue 18): a real farm samples a metered PDU; what its outlet draws
raises and clears the machine's ``power_flag`` in the machine JSON, as a ``machine`` event, and in the
training results when it happens while the machine trains."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.conftest import api_url, eventually, make_settings, running_farm
from valve_console.drivers.pdu.dummy import MeteredDummyPDU

MAC = "02:00:00:00:18:01"
FAST = dict(power_sample_interval=0.1, power_no_draw_seconds=0.3, power_silent_seconds=0.6,
            power_event_interval=0.1)


async def _machine_on_metered_outlet(farm: Any, c: httpx.AsyncClient) -> MeteredDummyPDU:
    r = await c.post("/api/v1/pdu/", json={"name": "d1", "driver": "dummy",
                                          "config": {"ports": 4, "meter": True, "initial_state": "OFF"}})
    assert r.status_code in (200, 201), r.text
    r = await c.post("/api/v1/machine/", json={"base_name": "gfx", "mac_address": MAC, "ip_address": "10.0.18.1"})
    assert r.status_code == 200, r.text
    r = await c.patch(f"/api/v1/machine/{MAC}/", json={"pdu": "d1", "pdu_port_id": "1"})
    assert r.status_code == 200, r.text
    driver = farm.power.pdus["d1"].driver
    assert isinstance(driver, MeteredDummyPDU)
    return driver


async def _flag(c: httpx.AsyncClient) -> Any:
    r = await c.get(f"/api/v1/machine/{MAC}/")
    assert r.status_code == 200, r.text
    return r.json().get("power_flag")


async def test_an_outlet_on_that_draws_nothing_flags_its_machine_until_it_draws(tmp_path: Path) -> None:
    async with running_farm(make_settings(tmp_path / "data", **FAST)) as farm:
        headers = {"Authorization": f"Bearer {farm.token}"}
        async with httpx.AsyncClient(base_url=api_url(farm), headers=headers) as c:
            driver = await _machine_on_metered_outlet(farm, c)
            sub = farm.bus.subscribe(["machine"])
            driver.set_power("1", 0.4)  # on, but (almost) nothing drawn
            r = await c.post("/api/v1/pdu/d1/port/1/state", json={"state": "on"})
            assert r.status_code == 200, r.text

            async def flagged() -> Any:
                flag = await _flag(c)
                return flag if flag and flag["kind"] == "no_draw" else None

            flag = await eventually(flagged, "the no_draw flag")
            assert flag["reason"] == "no power draw: check its plug or PSU"
            events = [e.data for e in sub.drain() if e.type == "machine" and e.data.get("mac") == MAC]
            assert any((e.get("machine") or {}).get("power_flag", {}) and
                       e["machine"]["power_flag"]["kind"] == "no_draw" for e in events), events

            driver.set_power("1", 85.0)  # it draws now: the flag goes, and says so in an event

            async def cleared() -> bool:
                return await _flag(c) is None

            await eventually(cleared, "the flag cleared")
            events = [e.data for e in sub.drain() if e.type == "machine" and e.data.get("mac") == MAC]
            assert events and events[-1]["machine"]["power_flag"] is None, events

            # an outlet switched off is no reason for a flag, however little it draws
            driver.set_power("1", 0.0)
            r = await c.post("/api/v1/pdu/d1/port/1/state", json={"state": "off"})
            assert r.status_code == 200, r.text
            assert await _flag(c) is None


async def test_steady_power_with_a_silent_console_is_powered_but_silent(tmp_path: Path) -> None:
    async with running_farm(make_settings(tmp_path / "data", **FAST)) as farm:
        headers = {"Authorization": f"Bearer {farm.token}"}
        async with httpx.AsyncClient(base_url=api_url(farm), headers=headers) as c:
            driver = await _machine_on_metered_outlet(farm, c)
            driver.set_power("1", 60.0)
            r = await c.post("/api/v1/pdu/d1/port/1/state", json={"state": "on"})
            assert r.status_code == 200, r.text

            async def silent() -> Any:
                flag = await _flag(c)
                return flag if flag and flag["kind"] == "silent" else None

            flag = await eventually(silent, "the silent flag")
            assert flag["reason"] == "powered but silent"


async def test_a_power_flag_during_training_goes_into_its_results(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", training=True, training_loops=1, training_qualify=1, **FAST)
    async with running_farm(settings) as farm:
        headers = {"Authorization": f"Bearer {farm.token}"}
        async with httpx.AsyncClient(base_url=api_url(farm), headers=headers) as c:
            driver = await _machine_on_metered_outlet(farm, c)  # an outlet: it trains, its job powers it on
            driver.set_power("1", 0.0)

            async def noted() -> Any:
                r = await c.get(f"/api/v1/machine/{MAC}/")
                training = r.json().get("training") or {}
                return [e for e in training.get("results", []) if e.get("status") == "POWER"]

            entries = await eventually(noted, "a POWER entry in the training results", timeout=20)
            assert entries[0]["power_flag"] == "no_draw" and "no power draw" in entries[0]["why"]
            training = (await c.get(f"/api/v1/machine/{MAC}/")).json()["training"]
            assert training["current_loop_count"] <= 1  # a note, not a loop
