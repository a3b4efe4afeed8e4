"""PDUs and outlet control through the API, against the real vPDU and the dummy driver."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.conftest import api_url
from valve_console.backend.events import Event
from valve_console.drivers.pdu import PortState


@pytest.fixture
async def http(farm):
    async with httpx.AsyncClient(base_url=api_url(farm), headers={"Authorization": f"Bearer {farm.token}"}) as c:
        yield c


async def test_vpdu_has_16_outlets_all_off(http, vivian):
    pdus = (await http.get("/api/v1/pdus")).json()["pdus"]
    assert list(pdus) == ["vpdu1"]
    ports = pdus["vpdu1"]["ports"]
    assert list(ports) == [str(i) for i in range(16)]
    # States arrive from the first poll.
    for _ in range(50):
        ports = (await http.get("/api/v1/pdu/vpdu1")).json()["ports"]
        if all(p["state"] == "OFF" for p in ports.values()):
            break
        await asyncio.sleep(0.05)
    assert {p["state"] for p in ports.values()} == {"OFF"}


async def test_outlet_set_answers_the_read_back_state(http, vivian):
    r = await http.post("/api/v1/pdu/vpdu1/port/5/state", json={"state": "on"})
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "ON"
    assert vivian.state(5) is True
    r = await http.post("/api/v1/pdu/vpdu1/port/5/state", json={"state": "OFF"})
    assert r.json()["state"] == "OFF" and vivian.state(5) is False
    r = await http.post("/api/v1/pdu/vpdu1/port/99/state", json={"state": "on"})
    assert r.status_code == 404 and "no outlet '99'" in r.json()["error"]
    r = await http.post("/api/v1/pdu/vpdu1/port/5/state", json={"state": "sideways"})
    assert r.status_code == 400 and "state" in r.json()["error"]
    r = await http.post("/api/v1/pdu/nope/port/5/state", json={"state": "on"})
    assert r.status_code == 404 and "unknown PDU 'nope'" in r.json()["error"]


async def test_outlet_changes_are_published(farm, http, vivian):
    sub = farm.bus.subscribe(["outlet"])
    await http.post("/api/v1/pdu/vpdu1/port/2/state", json={"state": "on"})
    events: list[Event] = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not any(
        e.data.get("port_id") == "2" and e.data["state"] == "ON" for e in events
    ):
        events += await sub.get_batch(timeout=0.5)
    sub.close()
    assert any(e.data["pdu"] == "vpdu1" and e.data["port_id"] == "2" and e.data["state"] == "ON" for e in events)
    await http.post("/api/v1/pdu/vpdu1/port/2/state", json={"state": "off"})


async def test_power_changes_made_outside_are_seen_by_polling(farm, vivian):
    await vivian.set_outlet(7, True)  # somebody pressed the PDU's button
    for _ in range(60):
        if farm.power.outlet_state("vpdu1", "7") == PortState.ON:
            break
        await asyncio.sleep(0.05)
    assert farm.power.outlet_state("vpdu1", "7") == PortState.ON
    await vivian.set_outlet(7, False)


async def test_min_off_time_is_enforced(farm, http):
    await http.post("/api/v1/pdu/", json={"name": "d1", "driver": "dummy", "config": {"ports": 2}})
    farm.power.default_off_delay = 0.6
    await http.post("/api/v1/pdu/d1/port/0/state", json={"state": "off"})
    t0 = time.monotonic()
    r = await http.post("/api/v1/pdu/d1/port/0/state", json={"state": "on"})
    assert r.json()["state"] == "ON"
    assert time.monotonic() - t0 >= 0.5
    t0 = time.monotonic()
    r = await http.post("/api/v1/pdu/d1/port/1/state", json={"state": "reboot"})
    assert r.json()["state"] == "ON"
    assert time.monotonic() - t0 >= 0.5  # reboot is off, wait, on


async def test_pdu_create_rules(http):
    r = await http.post("/api/v1/pdu/", json={"name": "p1", "pdu_model": "vpdu", "config": {"hostname": "nohost"}})
    assert r.status_code == 400 and "hostname" in r.json()["error"]
    r = await http.post("/api/v1/pdu/", json={"name": "p1", "driver": "apc9000", "config": {}})
    assert r.status_code == 400 and "unknown PDU driver 'apc9000'" in r.json()["error"]
    r = await http.post("/api/v1/pdu/", json={"name": "p1", "driver": "dummy", "config": {"bogus": 1}})
    assert r.status_code == 400 and "unknown key 'bogus'" in r.json()["error"]
    r = await http.post("/api/v1/pdu/", json={"name": "bad name", "driver": "dummy"})
    assert r.status_code == 400
    r = await http.post("/api/v1/pdu/", json={"name": "p1", "driver": "dummy", "reserved_ports": [1]})
    assert r.status_code == 201
    r = await http.post("/api/v1/pdu/", json={"name": "p1", "driver": "dummy"})
    assert r.status_code == 409 and "already exists" in r.json()["error"]
    r = await http.post("/api/v1/pdu/p1/port/1/state", json={"state": "off"})
    assert r.status_code == 409 and "reserved" in r.json()["error"]
    assert (await http.get("/api/v1/pdus")).json()["pdus"]["p1"]["reserved_ports"] == ["1"]


async def test_pdu_delete_refuses_while_a_machine_uses_it(http):
    await http.post("/api/v1/pdu/", json={"name": "d1", "driver": "dummy", "config": {"ports": 4}})
    await http.post(
        "/api/v1/machine/", json={"base_name": "b", "mac_address": "02:00:00:00:00:01", "ip_address": "10.0.0.1"}
    )
    await http.patch("/api/v1/machine/02:00:00:00:00:01/", json={"pdu": "d1", "pdu_port_id": "1"})
    r = await http.delete("/api/v1/pdu/d1")
    assert r.status_code == 409 and "02:00:00:00:00:01" in r.json()["error"]
    await http.patch("/api/v1/machine/02:00:00:00:00:01/", json={"pdu": None})
    r = await http.delete("/api/v1/pdu/d1")
    assert r.status_code == 200
    assert (await http.get("/api/v1/pdu/d1")).status_code == 404


async def test_unreachable_pdu_is_marked_and_the_farm_keeps_working(farm, http):
    # Nothing listens on this port: the vPDU is "unplugged".
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    r = await http.post(
        "/api/v1/pdu/",
        json={"name": "gone", "driver": "vpdu", "config": {"hostname": f"127.0.0.1:{port}", "timeout": 0.5}},
    )
    assert r.status_code == 201
    for _ in range(60):
        pdu = (await http.get("/api/v1/pdu/gone")).json()
        if pdu["state"] == "unreachable":
            break
        await asyncio.sleep(0.05)
    assert pdu["state"] == "unreachable" and "unreachable" in pdu["error"]
    health = (await http.get("/api/v1/health")).json()
    assert health["services"]["power"]["state"] == "degraded"
    assert "gone" in health["services"]["power"]["reason"]
    r = await http.post("/api/v1/pdu/gone/port/0/state", json={"state": "on"})
    assert r.status_code == 409 and "unreachable" in r.json()["error"]
    # Another PDU still works.
    await http.post("/api/v1/pdu/", json={"name": "d1", "driver": "dummy", "config": {"ports": 2}})
    r = await http.post("/api/v1/pdu/d1/port/0/state", json={"state": "off"})
    assert r.status_code == 200


async def test_operator_endpoints_need_the_token(farm):
    async with httpx.AsyncClient(base_url=api_url(farm)) as anon:
        for method, path, body in [
            ("POST", "/api/v1/pdu/", {"name": "x", "driver": "dummy"}),
            ("DELETE", "/api/v1/pdu/x", None),
            ("POST", "/api/v1/pdu/x/port/1/state", {"state": "on"}),
            ("POST", "/api/v1/machine/02:00:00:00:00:01/retire", None),
            ("POST", "/api/v1/machine/02:00:00:00:00:01/activate", None),
            ("PATCH", "/api/v1/machine/02:00:00:00:00:01/", {}),
            ("POST", "/api/v1/console/02:00:00:00:00:01/input", {"data": "x"}),
        ]:
            r = await anon.request(method, path, json=body)
            assert r.status_code == 401, (method, path)
            assert "token" in r.json()["error"]
        r = await anon.request(
            "POST", "/api/v1/pdu/", json={"name": "x", "driver": "dummy"}, headers={"Authorization": "Bearer wrong"}
        )
        assert r.status_code == 401
    assert (farm.settings.token_path.stat().st_mode & 0o777) == 0o600


async def test_unix_socket_is_trusted(farm):
    transport = httpx.AsyncHTTPTransport(uds=str(farm.settings.socket_path))
    async with httpx.AsyncClient(transport=transport, base_url="http://local") as c:
        r = await c.post("/api/v1/pdu/", json={"name": "viaunix", "driver": "dummy"})
        assert r.status_code == 201, r.text
    assert (farm.settings.socket_path.stat().st_mode & 0o777) == 0o600


async def test_a_stored_pdu_whose_driver_cannot_load_stays_listed_as_unreachable(tmp_path):
    from sqlmodel import Session

    from tests.conftest import make_settings
    from valve_console.backend.farm import Farm
    from valve_console.backend.models import Pdu
    from valve_console.backend.store import Store

    data = tmp_path / "data"
    data.mkdir()
    store = Store.for_path(data / "valve-console.db")
    await store.open()

    def add(session: Session) -> None:
        session.add(Pdu(name="old", driver="gone_driver", config={}))

    await store.run(add)
    await store.close()
    farm = Farm(make_settings(data))
    await farm.start()
    try:
        for _ in range(100):
            pdu = farm.power.pdu_json("old")
            if pdu["state"] == "unreachable":
                break
            await asyncio.sleep(0.02)
        assert pdu["state"] == "unreachable" and "gone_driver" in pdu["error"]
    finally:
        await farm.stop()


async def test_pdu_secrets_are_not_shown(http):
    r = await http.post("/api/v1/pdu/", json={"name": "apc", "driver": "apc_masterswitch",
                                              "config": {"hostname": "127.0.0.1:1", "community": "s3cret",
                                                         "timeout": 0.2, "retries": 0}})
    assert r.status_code == 201, r.text
    assert r.json()["config"]["community"] == "********"
    assert "s3cret" not in (await http.get("/api/v1/pdus")).text


async def test_a_burst_through_the_api_switches_all_but_the_reserved_outlet(farm, http, vivian):
    r = await http.post("/api/v1/pdu/", json={"name": "rack", "driver": "vpdu", "reserved_ports": [3],
                                              "config": {"hostname": f"127.0.0.1:{vivian.port}"}})
    assert r.status_code == 201, r.text
    sub = farm.bus.subscribe(["outlet"])
    replies = await asyncio.gather(*(http.post(f"/api/v1/pdu/rack/port/{i}/state", json={"state": "on"})
                                     for i in range(6)))
    by_port = dict(enumerate(replies))
    assert by_port[3].status_code == 409 and "reserved" in by_port[3].json()["error"]
    for i in (0, 1, 2, 4, 5):
        assert by_port[i].status_code == 200 and by_port[i].json()["state"] == "ON", by_port[i].text
        assert vivian.state(i) is True
    assert vivian.state(3) is False
    events = []
    while batch := await sub.get_batch(timeout=0.3):
        events += batch
    sub.close()
    assert {e.data["port_id"] for e in events if e.data["pdu"] == "rack" and e.data["state"] == "ON"} == {
        "0", "1", "2", "4", "5"}
    await asyncio.gather(*(http.post(f"/api/v1/pdu/rack/port/{i}/state", json={"state": "off"})
                           for i in (0, 1, 2, 4, 5)))
