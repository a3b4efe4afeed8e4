"""Outlet discovery: power a free outlet, the next machine without an outlet gets it."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.conftest import api_url
from valve_console.drivers.pdu import PortState


@pytest.fixture
async def http(farm):
    """Our own client's view (the header asks for our JSON answers); test_valve_infra_answers checks the rest."""
    headers = {"Authorization": f"Bearer {farm.token}", "X-Valve-Console-Client": "1"}
    async with httpx.AsyncClient(base_url=api_url(farm), headers=headers, timeout=30) as c:
        yield c


async def poll(fn, timeout=10.0):
    for _ in range(int(timeout / 0.05)):
        value = await fn()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError("not reached in time")


def reg(mac, ip=None):
    """A registration; each MAC its own IP (one IP is pinned to one machine)."""
    ip = ip or "10.0.{}.{}".format(*(int(part, 16) for part in mac.split(":")[-2:]))
    return {"base_name": "b", "mac_address": mac, "ip_address": ip}


async def test_discovery_boots_the_outlet_and_the_dut_takes_it(http, vivian):
    r = await http.post("/api/v1/machine/discover", json={"pdu": "vpdu1", "port_id": 5})
    assert r.status_code == 200, r.text
    assert r.json()["message"].startswith("Booting machine behind port 5 from PDU vpdu1.")
    assert vivian.state(5) is True

    async def found():
        m = (await http.get("/api/v1/machines")).json()["machines"].get("52:54:00:11:22:05")
        return m and m["pdu"]["name"] and m

    machine = await poll(found)
    assert machine["pdu"] == {"name": "vpdu1", "port_id": "5"}
    assert (await http.get("/api/v1/machine/discover")).json()["current"] is None
    await http.post("/api/v1/pdu/vpdu1/port/5/state", json={"state": "off"})


async def test_discovery_refusals(farm, http):
    await http.post("/api/v1/pdu/", json={"name": "d1", "driver": "dummy",
                                          "config": {"ports": 4, "initial_state": "OFF"}, "reserved_ports": [3]})
    await poll(lambda: _state(farm, "d1", "0", PortState.OFF))
    await http.post("/api/v1/machine/", json=reg("02:00:00:00:00:01"))
    await http.patch("/api/v1/machine/02:00:00:00:00:01/", json={"pdu": "d1", "pdu_port_id": "1"})
    await http.post("/api/v1/pdu/d1/port/2/state", json={"state": "on"})

    async def refused(body, status, words):
        r = await http.post("/api/v1/machine/discover", json=body)
        assert r.status_code == status, r.text
        assert words in r.json()["error"]

    await refused({"pdu": "d1", "port_id": "1"}, 409, "already used by")
    await refused({"pdu": "d1", "port_id": "2"}, 409, "already on use")
    await refused({"pdu": "d1", "port_id": "3"}, 409, "reserved")
    await refused({"pdu": "nope", "port_id": "1"}, 404, "unknown PDU")
    await refused({"pdu": "d1", "port_id": "9"}, 404, "no outlet")
    await refused({"pdu": "d1", "port_id": "0", "extra": 1}, 400, "The field extra")
    r = await http.post("/api/v1/machine/discover", json={"pdu": "d1", "port_id": "0", "timeout": 30})
    assert r.status_code == 200
    await refused({"pdu": "d1", "port_id": "0"}, 409, "already running")
    # A machine that already has an outlet re-registers: it does not take the one under discovery.
    await http.post("/api/v1/machine/", json=reg("02:00:00:00:00:01"))
    assert (await http.get("/api/v1/machine/discover")).json()["current"]["port_id"] == "0"
    # Cancel switches the outlet off again.
    r = await http.delete("/api/v1/machine/discover")
    assert r.json()["current"] is None
    assert farm.power.outlet_state("d1", "0") == PortState.OFF


async def _state(farm, pdu, port, state):
    return farm.power.outlet_state(pdu, port) == state


async def test_outlet_is_switched_off_when_nothing_registers(farm, http):
    await http.post("/api/v1/pdu/", json={"name": "d1", "driver": "dummy",
                                          "config": {"ports": 2, "initial_state": "OFF"}})
    await poll(lambda: _state(farm, "d1", "0", PortState.OFF))
    sub = farm.bus.subscribe(["discovery"])
    r = await http.post("/api/v1/machine/discover", json={"pdu": "d1", "port_id": "0", "timeout": 1})
    assert r.status_code == 200
    assert farm.power.outlet_state("d1", "0") == PortState.ON
    await poll(lambda: _state(farm, "d1", "0", PortState.OFF), timeout=5)
    states: list[str] = []

    async def timed_out():
        states.extend(e.data["state"] for e in sub.drain())
        return "timeout" in states

    await poll(timed_out, timeout=5)  # published right after the outlet is off again
    assert states == ["started", "timeout"]
    sub.close()


async def test_find_outlets_walks_every_free_outlet(farm, http):
    await http.post("/api/v1/pdu/", json={"name": "d1", "driver": "dummy",
                                          "config": {"ports": 4, "initial_state": "OFF"}, "reserved_ports": [2]})
    await poll(lambda: _state(farm, "d1", "3", PortState.OFF))
    r = await http.post("/api/v1/pdu/d1/discover", json={"timeout": 20})
    assert r.status_code == 200, r.text
    assert [q["port_id"] for q in r.json()["queue"]] == ["0", "1", "3"]
    for i, port in enumerate(["0", "1", "3"]):
        current = await poll(lambda: _current(http))
        assert current["port_id"] == port
        await http.post("/api/v1/machine/", json=reg(f"02:00:00:00:01:0{i}"))
    await poll(lambda: _idle(http))
    machines = (await http.get("/api/v1/machines")).json()["machines"]
    assert {m["pdu"]["port_id"] for m in machines.values()} == {"0", "1", "3"}


async def _current(http):
    """The outlet under discovery once it is on and waiting for a registration."""
    current = (await http.get("/api/v1/machine/discover")).json()["current"]
    return current if current and current["waiting"] else None


async def _idle(http):
    status = (await http.get("/api/v1/machine/discover")).json()
    return status["current"] is None and not status["queue"]


async def test_locked_outlets_are_switched_only_by_their_owner(farm, http):
    await http.post("/api/v1/pdu/", json={"name": "d1", "driver": "dummy", "config": {"ports": 2}})
    farm.power.lock("d1", "1", "job-42")
    r = await http.post("/api/v1/pdu/d1/port/1/state", json={"state": "off"})
    assert r.status_code == 409 and "locked by job-42" in r.json()["error"]
    assert (await http.get("/api/v1/pdu/d1")).json()["ports"]["1"]["locked_by"] == "job-42"
    assert await farm.power.set_outlet("d1", "1", "off", owner="job-42") == PortState.OFF
    farm.power.unlock("d1", "1", "job-42")
    r = await http.post("/api/v1/pdu/d1/port/1/state", json={"state": "on"})
    assert r.status_code == 200


async def test_client_discovery_calls(farm, client):
    await client.add_pdu("d1", "dummy", {"ports": 2, "initial_state": "OFF"})
    await poll(lambda: _state(farm, "d1", "0", PortState.OFF))
    answer = await client.discover("d1", "0", timeout=30)
    assert answer.discovery.port_id == "0"
    current = (await client.discovery()).current
    assert current is not None and current.pdu == "d1"
    assert (await client.cancel_discovery()).current is None
    found = await client.find_outlets("d1", timeout=30)
    assert [q.port_id for q in found.queue] == ["0", "1"]
    await client.cancel_discovery()


async def test_valve_infra_answers(farm):
    """What valve-infra's dashboard and Makefile get: text for a started discovery, its discover_data on GET
    ({} when none runs), {} after DELETE."""
    async with httpx.AsyncClient(base_url=api_url(farm), headers={"Authorization": f"Bearer {farm.token}"},
                                 timeout=30) as http:
        await http.post("/api/v1/pdu/", json={"name": "d1", "driver": "dummy",
                                              "config": {"ports": 2, "initial_state": "OFF"}})
        await poll(lambda: _state(farm, "d1", "0", PortState.OFF))
        assert (await http.get("/api/v1/machine/discover")).json() == {}
        r = await http.post("/api/v1/machine/discover", json={"pdu": "d1", "port_id": "0", "timeout": 30})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        assert r.text == "Booting machine behind port 0 from PDU d1. Discovery will time out after 30 seconds.\n"
        data = (await http.get("/api/v1/machine/discover")).json()
        assert (data["pdu"], data["port_id"], data["timeout"]) == ("d1", "0", 30)
        assert data["date"].endswith(" GMT") and isinstance(data["started_at"], float)
        r = await http.delete("/api/v1/machine/discover")
        assert r.status_code == 200 and r.json() == {}
        assert (await http.get("/api/v1/machine/discover")).json() == {}
