"""Registration and operator edits through the HTTP API of a real backend."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import api_url

REG = {
    "base_name": "virtio",
    "tags": ["virtio:pciid:0x1af4:0x1050", "virtio:family:VIRTIO"],
    "mac_address": "52:54:00:11:22:03",
    "ip_address": "10.42.0.13",
    "local_tty_device": "ttyS1",
}


@pytest.fixture
async def http(farm):
    async with httpx.AsyncClient(base_url=api_url(farm)) as c:
        c.headers["Authorization"] = f"Bearer {farm.token}"
        yield c


async def test_register_creates_then_updates_the_same_machine(http):
    r = await http.post("/api/v1/machine/", json=REG)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["mac_address"] == "52:54:00:11:22:03"
    assert body["full_name"] == "test-virtio-1"
    assert body["local_tty_device"] == "ttyS1"
    assert body["ready_for_service"] is False
    assert body["state"] == "WAIT_FOR_CONFIG"
    # Again, with PUT, a different IP and the MAC in another spelling: the same machine is updated.
    r = await http.put("/api/v1/machine/", json={**REG, "mac_address": "52-54-00-11-22-03", "ip_address": "10.42.0.99"})
    assert r.status_code == 200
    machines = (await http.get("/api/v1/machines")).json()["machines"]
    assert list(machines) == ["52:54:00:11:22:03"]
    assert machines["52:54:00:11:22:03"]["ip_address"] == "10.42.0.99"


async def test_registration_is_open_without_token(farm):
    async with httpx.AsyncClient(base_url=api_url(farm)) as anonymous:
        r = await anonymous.post("/api/v1/machine/", json=REG)
        assert r.status_code == 200
        r = await anonymous.patch("/api/v1/machine/52:54:00:11:22:03/", json={"comment": "x"})
        assert r.status_code == 401
        assert "token" in r.json()["error"]


@pytest.mark.parametrize(
    "change, words",
    [
        ({"gpu": "x"}, "The field gpu cannot be set/modified"),
        ({"full_name": "x"}, "The field full_name cannot be set/modified"),
        ({"mac_address": "52:54:00:11:22"}, "mac_address"),
        ({"mac_address": "zz:54:00:11:22:03"}, "not a MAC address"),
        ({"ip_address": "10.42.0.300"}, "ip_address"),
        ({"ip_address": "hello"}, "not an IPv4 address"),
        ({"tags": "notalist"}, "tags"),
        ({"base_name": "has space"}, "base_name"),
    ],
)
async def test_registration_rejects_bad_fields_in_words(http, change, words):
    r = await http.post("/api/v1/machine/", json={**REG, **change})
    assert r.status_code == 400
    assert words in r.json()["error"]
    assert (await http.get("/api/v1/machines")).json()["machines"] == {}


async def test_unknown_machine_is_404_in_words(http):
    r = await http.get("/api/v1/machine/52:54:00:00:00:01/")
    assert r.status_code == 404
    assert r.json() == {"error": "Unknown machine ID '52:54:00:00:00:01'"}
    r = await http.get("/api/v1/machine/not-a-mac/")
    assert r.status_code == 400


async def add_dummy(http, name="d1", ports=4):
    r = await http.post("/api/v1/pdu/", json={"name": name, "driver": "dummy", "config": {"ports": ports}})
    assert r.status_code == 201, r.text
    return r.json()


async def test_patch_validates_operator_fields(http):
    await http.post("/api/v1/machine/", json=REG)
    other = {**REG, "mac_address": "52:54:00:11:22:04", "ip_address": "10.42.0.14"}
    await http.post("/api/v1/machine/", json=other)
    await add_dummy(http)
    url = "/api/v1/machine/52:54:00:11:22:03/"

    async def refused(patch, words):
        before = (await http.get(url)).json()
        r = await http.patch(url, json=patch)
        assert r.status_code == 400, r.text
        assert words in r.json()["error"]
        assert (await http.get(url)).json() == before  # nothing stored changed

    await refused({"pdu": "nope", "pdu_port_id": "1"}, "unknown PDU 'nope'")
    await refused({"pdu": "d1", "pdu_port_id": "9"}, "out of range")
    await refused({"pdu_port_id": "1"}, "needs a pdu")
    await refused({"ready_for_service": "yes"}, "ready_for_service")
    await refused({"pdu_off_delay": -1}, "pdu_off_delay")
    await refused({"tags": ["x"]}, "The field tags cannot be set/modified")
    await refused({"manual_tags": [""]}, "invalid tag")

    # Port ids are strings in the API; integers are accepted.
    r = await http.patch(
        url,
        json={
            "pdu": "d1",
            "pdu_port_id": 2,
            "ready_for_service": True,
            "manual_tags": ["big"],
            "pdu_off_delay": 12.5,
            "comment": "rack 3",
            "local_tty_device": "/dev/ttyUSB0",
        },
    )
    assert r.status_code == 200, r.text
    m = r.json()
    assert m["pdu"] == {"name": "d1", "port_id": "2"}
    assert m["ready_for_service"] is True and m["state"] == "IDLE"
    assert m["local_tty_device"] == "ttyUSB0"
    # "tags" are exactly what the DUT registered (machine_registration check compares them); manual tags
    # are their own field, and all_tags (what job matching uses) holds both
    assert m["tags"] == ["virtio:pciid:0x1af4:0x1050", "virtio:family:VIRTIO"] and m["manual_tags"] == ["big"]
    assert m["all_tags"] == [*m["tags"], "big"]
    assert m["pdu_off_delay"] == 12.5 and m["pdu_off_delay_is_default"] is False
    r = await http.patch(url, json={"pdu_off_delay": None})
    assert r.json()["pdu_off_delay"] == 0.2 and r.json()["pdu_off_delay_is_default"] is True  # the farm default
    await http.patch(url, json={"pdu_off_delay": 12.5})

    # The same outlet for another machine is refused with the reason.
    r = await http.patch("/api/v1/machine/52:54:00:11:22:04/", json={"pdu": "d1", "pdu_port_id": "2"})
    assert r.status_code == 400
    assert "already used by test-virtio-1 (52:54:00:11:22:03)" in r.json()["error"]
    # The port's min_off_time follows the machine's pdu_off_delay.
    pdu = (await http.get("/api/v1/pdu/d1")).json()
    assert pdu["ports"]["2"]["min_off_time"] == 12.5

    # Moved to outlet 3, the machine takes its off delay along and frees outlet 2 for another.
    assert (await http.patch(url, json={"pdu_port_id": "3"})).status_code == 200
    ports = (await http.get("/api/v1/pdu/d1")).json()["ports"]
    assert (ports["2"]["min_off_time"], ports["3"]["min_off_time"]) == (0.2, 12.5)
    r = await http.patch("/api/v1/machine/52:54:00:11:22:04/", json={"pdu": "d1", "pdu_port_id": "2"})
    assert r.status_code == 200, r.text
    # Removed, it holds no outlet any more.
    assert (await http.delete(url)).status_code == 200
    ports = (await http.get("/api/v1/pdu/d1")).json()["ports"]
    assert ports["3"]["min_off_time"] == 0.2
    r = await http.patch("/api/v1/machine/52:54:00:11:22:04/", json={"pdu_port_id": "3"})
    assert r.status_code == 200, r.text


async def test_retire_and_activate(http):
    await http.post("/api/v1/machine/", json=REG)
    url = "/api/v1/machine/52:54:00:11:22:03"
    r = await http.post(url + "/retire")
    assert r.status_code == 200 and r.text.startswith("Retired machine 10.42.0.13")
    assert (await http.get(url + "/")).json()["state"] == "RETIRED"
    r = await http.post(url + "/retire")
    assert r.status_code == 400 and "already retired" in r.json()["error"]
    r = await http.post(url + "/activate")
    assert r.status_code == 200 and r.text.startswith("Activated machine")
    assert (await http.get(url + "/")).json()["is_retired"] is False


async def test_full_names_number_machines_of_a_base_name(http):
    # Each its own IP: one IP is pinned to one machine (a second machine with it is refused, 409).
    for i in range(3):
        r = await http.post("/api/v1/machine/", json={**REG, "mac_address": f"52:54:00:11:22:1{i}",
                                                       "ip_address": f"10.42.0.{20 + i}"})
        assert r.status_code == 200, r.text
    names = {m["full_name"] for m in (await http.get("/api/v1/machines")).json()["machines"].values()}
    assert names == {"test-virtio-1", "test-virtio-2", "test-virtio-3"}
    # A name never changes: removing virtio-1 leaves virtio-2 and -3 as they are, and the next new
    # virtio machine takes the number set free.
    assert (await http.delete("/api/v1/machine/52:54:00:11:22:10/")).status_code == 200
    machines = (await http.get("/api/v1/machines")).json()["machines"]
    assert {mac: m["full_name"] for mac, m in machines.items()} == {
        "52:54:00:11:22:11": "test-virtio-2", "52:54:00:11:22:12": "test-virtio-3"}
    r = await http.post("/api/v1/machine/", json={**REG, "mac_address": "52:54:00:11:22:19",
                                                   "ip_address": "10.42.0.29"})
    assert r.json()["full_name"] == "test-virtio-1"
    # Re-registering with another base name keeps the name it was given.
    r = await http.post("/api/v1/machine/", json={**REG, "mac_address": "52:54:00:11:22:11", "ip_address": "10.42.0.21",
                                                   "base_name": "gfx9"})
    assert (r.json()["base_name"], r.json()["full_name"]) == ("gfx9", "test-virtio-2")
