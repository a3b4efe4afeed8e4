"""Power metering through the API (issue 18): outlet and PDU JSON, the series endpoint (recent from memory,
older from the store, also after a restart), its errors, and /metrics, on the metered dummy PDU."""

from __future__ import annotations

import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import api_url, eventually, make_settings, running_farm


@pytest.fixture
def settings(tmp_path):
    return make_settings(tmp_path / "data", power_sample_interval=0.05, power_event_interval=0.5)


def client(farm) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=api_url(farm), headers={"Authorization": f"Bearer {farm.token}"}, timeout=10)


async def add_metered(farm) -> object:
    await farm.power.add_pdu("m1", "dummy", {"ports": 3, "meter": True})
    drv = farm.power.pdus["m1"].driver
    drv.set_power("0", 75.0, energy_wh=1.0)
    drv.set_power("2", None, metered=False)  # outlet 2 has no meter
    return drv


async def test_series_errors_metrics_and_history_across_a_restart(settings):
    async with running_farm(settings) as farm:
        await add_metered(farm)
        async with client(farm) as http:
            await eventually(
                lambda: (farm.power.pdu_json("m1")["ports"]["0"]["power"] or {}).get("watts") == 75.0, "a reading")
            r = await http.get("/api/v1/pdu/m1/port/0")
            assert r.status_code == 200 and r.json()["metered"] is True and r.json()["power"]["watts"] == 75.0
            pdu = (await http.get("/api/v1/pdu/m1")).json()
            assert pdu["metered"] is True and pdu["total_watts"] == 75.0 + 42.0 and pdu["power_at"] > 0
            assert pdu["ports"]["2"]["metered"] is False and pdu["ports"]["2"]["power"] is None
            await eventually(lambda: len(farm.meter.outlets[("m1", "0")].series) >= 5, "a few readings")
            r = await http.get("/api/v1/pdu/m1/port/0/power", params={"since": time.time() - 60})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["pdu"] == "m1" and body["port_id"] == "0" and body["interval"] == 0.05
            assert len(body["points"]) >= 5 and {w for _, w in body["points"]} == {75.0}
            assert [t for t, _ in body["points"]] == sorted(t for t, _ in body["points"])
            # the boots the plot marks: every time the outlet went ON since `since`, from the outlet log
            for state in ("off", "on", "off", "on"):
                r = await http.post("/api/v1/pdu/m1/port/1/state", json={"state": state})
                assert r.status_code == 200, r.text
            since = time.time() - 60
            boots = (await http.get("/api/v1/pdu/m1/port/1/power", params={"since": since})).json()["boots"]
            assert len(boots) >= 2 and boots == sorted(boots) and all(since <= t <= time.time() for t in boots)
            late = (await http.get("/api/v1/pdu/m1/port/1/power", params={"since": boots[-1] + 0.001})).json()
            assert late["boots"] == []
            # errors: unknown PDU or outlet 404, a bad since 400, an outlet without a meter 409
            assert (await http.get("/api/v1/pdu/nope/port/0/power")).status_code == 404
            assert (await http.get("/api/v1/pdu/m1/port/9/power")).status_code == 404
            for bad in ("yesterday", "-5", "nan", "inf", ""):
                r = await http.get("/api/v1/pdu/m1/port/0/power", params={"since": bad})
                assert r.status_code == 400 and "since" in r.json()["error"], bad
            r = await http.get("/api/v1/pdu/m1/port/0/power", params={"since": "1e30"})  # the future: no points yet
            assert r.status_code == 200 and r.json()["points"] == [], r.text
            r = await http.get("/api/v1/pdu/m1/port/2/power")
            assert r.status_code == 409 and "not metered" in r.json()["error"]
            # /metrics, through prometheus-client's parser
            r = await http.get("/metrics")
            samples = {}
            for family in text_string_to_metric_families(r.text):
                for s in family.samples:
                    samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
            labels = (("machine", ""), ("pdu", "m1"), ("port", "0"))
            assert samples[("valve_console_outlet_power_watts", labels)] == 75.0
            assert samples[("valve_console_outlet_energy_joules_total", labels)] >= 0
            assert samples[("valve_console_pdu_power_watts", (("pdu", "m1"),))] == 117.0
            assert ("valve_console_outlet_power_watts", (("machine", ""), ("pdu", "m1"), ("port", "2"))) not in samples
            first = body["points"][0][0]
    # A restart: the minutes written at stop are the series until new readings come
    async with running_farm(settings) as farm:
        async with client(farm) as http:
            r = await http.get("/api/v1/pdu/m1/port/0/power", params={"since": first - 120})
            assert r.status_code == 200, r.text
            stored = r.json()["points"]
            # the stored minute (its start, its average), then the new driver's readings (42 W, its default)
            assert stored[0][1] == 75.0 and stored[0][0] <= first and stored[0][0] % 60 == 0
            assert {w for _, w in stored[1:]} <= {42.0}


async def test_outlet_events_carry_power_and_are_rate_limited(settings):
    async with running_farm(settings) as farm:
        sub = farm.bus.subscribe(["outlet"])
        await add_metered(farm)
        await eventually(lambda: farm.meter.pdus.get("m1") and farm.meter.pdus["m1"].reads >= 30, "30 reads",
                         timeout=20)
        events = [e for e in await sub.get_batch(timeout=0.5) if e.data.get("port_id") == "0" and e.data["power"]]
        sub.close()
        reads = farm.meter.pdus["m1"].reads
        assert 1 <= len(events) <= reads // 5  # 0.05 s sampling, one event per 0.5 s at most
