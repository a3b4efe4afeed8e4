"""The SSE event stream, health, the backend log and OpenAPI."""

from __future__ import annotations

import asyncio
import json

import httpx

from tests.conftest import api_url
from valve_console.client import FarmClient
from valve_console.contract import Event


async def test_event_stream_carries_typed_events(farm, client: FarmClient):
    received: list[Event] = []

    async def listen():
        async for event in client.events(types=["machine", "pdu"]):
            received.append(event)
            if event.type == "machine":
                return

    task = asyncio.create_task(listen())
    await asyncio.sleep(0.2)
    await client.add_pdu("d1", "dummy", {"ports": 2})
    async with httpx.AsyncClient(base_url=api_url(farm)) as anon:
        await anon.post(
            "/api/v1/machine/", json={"base_name": "b", "mac_address": "02:00:00:00:00:01", "ip_address": "10.0.0.1"}
        )
    await asyncio.wait_for(task, 5)
    types = [e.type for e in received]
    assert "pdu" in types and types[-1] == "machine"
    assert received[-1].parsed().machine.mac_address == "02:00:00:00:00:01"
    assert all(isinstance(e.seq, int) for e in received)


async def test_unknown_event_type_is_refused(farm):
    async with httpx.AsyncClient(base_url=api_url(farm), headers={"Authorization": f"Bearer {farm.token}"}) as c:
        r = await c.get("/api/v1/events", params={"types": "machine,bogus"})
        assert r.status_code == 400 and "bogus" in r.json()["error"]


async def test_the_event_stream_needs_the_operator(farm):
    async with httpx.AsyncClient(base_url=api_url(farm)) as anonymous:
        r = await anonymous.get("/api/v1/events")
        assert r.status_code == 401 and "token" in r.json()["error"]


async def test_slow_subscriber_gets_a_dropped_marker(farm):
    sub = farm.bus.subscribe(maxlen=10)
    for i in range(25):
        farm.bus.publish("log", {"message": str(i)})
    batch = sub.drain()
    assert batch[0].type == "dropped" and batch[0].data == {"count": 15}
    assert [e.data["message"] for e in batch[1:]] == [str(i) for i in range(15, 25)]
    sub.close()


async def test_health_lists_each_service(client: FarmClient):
    health = await client.health()
    assert health.status == "ok"
    for service in ("storage", "registration", "power", "consoles", "api", "journal"):
        assert service in health.services, service
    assert health.api is not None and health.api.startswith("http://127.0.0.1:")


async def test_backend_log_and_gateway(client: FarmClient):
    await client.add_pdu("d1", "dummy", {"ports": 2})
    entries = await client.backend_log()
    assert any("PDU d1 added" in e.message for e in entries)
    nics = (await client.gateway()).interfaces
    assert any(n.name == "lo" and "127.0.0.1" in n.addresses for n in nics)


async def test_openapi_is_published(farm):
    async with httpx.AsyncClient(base_url=api_url(farm)) as c:
        spec = (await c.get("/openapi.json")).json()
    for path in (
        "/api/v1/machine/",
        "/api/v1/machines",
        "/api/v1/pdu/",
        "/api/v1/pdus",
        "/api/v1/pdu/{name}/port/{port_id}/state",
        "/api/v1/events",
        "/api/v1/health",
    ):
        assert path in spec["paths"], path


async def test_metrics(farm):
    async with httpx.AsyncClient(base_url=api_url(farm)) as c:
        text = (await c.get("/metrics")).text
    assert "valve_console_events_published_total" in text


async def test_journal_follower_parses_journalctl_json(farm, tmp_path):
    from valve_console.backend.journal import JournalFollower

    lines = [
        {
            "__REALTIME_TIMESTAMP": "1700000000000000",
            "PRIORITY": "3",
            "_SYSTEMD_UNIT": "dnsmasq.service",
            "MESSAGE": "DHCP failed",
            "_HOSTNAME": "gw",
        },
        {
            "__REALTIME_TIMESTAMP": "1700000001000000",
            "PRIORITY": "6",
            "SYSLOG_IDENTIFIER": "kernel",
            "MESSAGE": [104, 105],
        },
    ]
    script = tmp_path / "fake-journalctl.sh"
    script.write_text("#!/bin/sh\n" + "".join(f"echo '{json.dumps(x)}'\n" for x in lines) + "sleep 30\n")
    script.chmod(0o755)
    sub = farm.bus.subscribe(["journal"])
    follower = JournalFollower(farm.bus, command=[str(script)])
    await follower.start()
    got = []
    for _ in range(50):
        got += await sub.get_batch(timeout=0.1)
        if len(got) >= 2:
            break
    state_while_following = follower.state
    await follower.stop()
    sub.close()
    assert got[0].data == {
        "ts": 1700000000.0,
        "priority": 3,
        "unit": "dnsmasq.service",
        "message": "DHCP failed",
        "hostname": "gw",
    }
    assert got[1].data["message"] == "hi" and got[1].data["unit"] == "kernel"
    assert state_while_following == "ok"


async def test_event_queue_is_bounded_in_bytes_and_read_in_pieces(farm):
    sub = farm.bus.subscribe(["console"], maxbytes=600_000)
    for i in range(5):
        farm.bus.publish("console", {"mac": "02:00:00:00:00:01", "text": str(i) * 250_000})
    assert sub.queued_bytes <= 600_000
    stream = b""
    while sub.pending:
        piece = sub.take(64 * 1024)
        assert 0 < len(piece) <= 64 * 1024
        stream += bytes(piece)
    messages = [json.loads(m.split(b"data: ", 1)[1]) for m in stream.split(b"\n\n") if m]
    assert messages[0]["type"] == "dropped" and messages[0]["data"]["count"] == 3
    assert [m["data"]["text"][0] for m in messages[1:]] == ["3", "4"]
    sub.close()


async def test_the_client_skips_an_oversized_event_with_a_dropped_marker(monkeypatch):
    from valve_console import client as client_module

    monkeypatch.setattr(client_module, "MAX_EVENT_CHARS", 1000)
    log = {"type": "log", "seq": 1, "ts": 0.0,
           "data": {"ts": 0.0, "level": "INFO", "priority": 6, "logger": "x", "message": "m"}}
    health = {"type": "health", "seq": 3, "ts": 0.0, "data": {"service": "power", "state": "ok", "reason": None}}
    lines = ("retry: 2000", "", "id: 1", "event: log", f"data: {json.dumps(log)}", "",
             "event: console", *(["data: " + "x" * 300] * 5), "", f"data: {json.dumps(health)}", "")
    body = "".join(line + "\n" for line in lines).encode()
    transport = httpx.MockTransport(
        lambda request: httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body))
    async with FarmClient("http://farm", transport=transport) as client:
        events = [e async for e in client.events()]
    assert [e.type for e in events] == ["log", "dropped", "health"]
