"""Bad input gets a clear error in words, the backend stays up, and stored data is unchanged."""

from __future__ import annotations

import asyncio
import os

import httpx
import pytest

from tests.conftest import api_url

REG = {"base_name": "virtio", "tags": ["t"], "mac_address": "52:54:00:11:22:03", "ip_address": "10.42.0.13"}


@pytest.fixture
async def http(farm):
    async with httpx.AsyncClient(
        base_url=api_url(farm), headers={"Authorization": f"Bearer {farm.token}"}, timeout=30
    ) as c:
        assert (await c.post("/api/v1/machine/", json=REG)).status_code == 200
        assert (await c.post("/api/v1/pdu/", json={"name": "d1", "driver": "dummy"})).status_code == 201
        yield c


async def snapshot(http):
    machines = (await http.get("/api/v1/machines")).json()
    pdus = (await http.get("/api/v1/pdus")).json()
    for pdu in pdus["pdus"].values():  # outlet timestamps move with polling; compare what is stored
        pdu["ports"] = sorted(pdu["ports"])
    return machines, pdus


@pytest.mark.parametrize(
    "method, path, content, words",
    [
        ("POST", "/api/v1/machine/", b'{"base_name": "x", ', "malformed JSON"),
        ("POST", "/api/v1/machine/", b"[1, 2, 3]", "JSON object"),
        ("POST", "/api/v1/machine/", b"\x00\xff\xfe\x89PNG garbage \x1b[2J", "malformed JSON"),
        ("PUT", "/api/v1/machine/", b'{"mac_address": "52:54:00:11:22:03", "evil": true}', "The field evil"),
        ("PATCH", "/api/v1/machine/52:54:00:11:22:03/", b'{"pdu": "d1", "pdu_port_id": true}', "pdu_port_id"),
        (
            "PATCH",
            "/api/v1/machine/52:54:00:11:22:03/",
            b'{"mac_address": "00:00:00:00:00:01"}',
            "The field mac_address cannot be set/modified",
        ),
        ("POST", "/api/v1/pdu/", b'{"name": "p2", "driver": "dummy", "config": "no"}', "config"),
        ("POST", "/api/v1/pdu/d1/port/0/state", b'{"state": 1}', "state"),
        ("POST", "/api/v1/pdu/d1/port/0/state", b"", "missing request body"),
    ],
)
async def test_bad_bodies_are_400_in_words(http, method, path, content, words):
    before = await snapshot(http)
    r = await http.request(method, path, content=content, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert words in r.json()["error"]
    assert await snapshot(http) == before


async def test_a_10_mib_body_is_refused(http):
    before = await snapshot(http)
    big = b'{"base_name": "' + b"x" * (10 * 1024 * 1024) + b'"}'
    r = await http.post("/api/v1/machine/", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "too large" in r.json()["error"]

    async def chunks():
        for _ in range(160):
            yield b"x" * 65536

    r = await http.post("/api/v1/machine/", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert await snapshot(http) == before
    assert (await http.get("/api/v1/health")).json()["status"] == "ok"


async def test_garbage_on_the_netconsole_port_is_contained(farm, http):
    before = await snapshot(http)
    for payload in (os.urandom(256 * 1024), b"B" * (1024 * 1024), b"\x1b" * 100_000 + b"SALAD.machine_id=nonsense\n"):
        reader, writer = await asyncio.open_connection(*farm.netconsole_address)
        writer.write(payload)
        await writer.drain()
        writer.close()
        await writer.wait_closed()
    await asyncio.sleep(0.2)
    assert (await http.get("/api/v1/health")).json()["status"] == "ok"
    assert await snapshot(http) == before
    # Unbound streams keep a bounded amount of what they said; nothing was bound.
    assert farm.consoles.consoles == {}


async def test_vpdu_word_with_reserved_bits_is_refused_and_the_vpdu_stays_up(vivian, farm):
    reader, writer = await asyncio.open_connection("127.0.0.1", vivian.port)
    writer.write((0xFFFFC000 | (3 << 2) | 1).to_bytes(4, "big"))  # "turn outlet 3 on" with reserved bits
    await writer.drain()
    assert await reader.read(1) == b"\x00"
    writer.close()
    assert vivian.state(3) is False
    # The farm's driver still talks to it.
    assert (await farm.power.set_outlet("vpdu1", "3", "on")).value == "ON"
    assert (await farm.power.set_outlet("vpdu1", "3", "off")).value == "OFF"
