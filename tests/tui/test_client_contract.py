"""The contract on the client's side: against a real farm every FarmClient call gives its contract model
(and every event its model), strictly (tests/conftest.py sets VALVE_CONSOLE_STRICT_CONTRACT=1), and an
answer whose key was renamed fails to parse with an error that names the key."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.conftest import netconsole_address
from tests.jobs.conftest import job_yaml
from valve_console import contract
from valve_console.backend.farm import Farm
from valve_console.client import FarmClient, FarmClientError
from valve_console.contract import (
    Console,
    DiscoveryStarted,
    DiscoveryStatus,
    Event,
    Gateway,
    Health,
    Job,
    LogEntry,
    Machine,
    NetworkInterface,
    Outlet,
    OutletsDiscovery,
    Pdu,
    SerialDevice,
    UnboundStream,
)

from .fake_farm import machine

MAC = "02:00:00:00:07:01"


async def collect(client: FarmClient, into: list[Event]) -> None:
    async for event in client.events():
        into.append(event)


def test_the_suite_runs_the_strict_contract() -> None:
    assert contract.STRICT  # tests/conftest.py sets it before valve_console is imported


async def test_every_client_call_gives_its_contract_model(farm: Farm, vivian, client: FarmClient) -> None:
    events: list[Event] = []
    listener = asyncio.create_task(collect(client, events))
    await asyncio.sleep(0.2)
    try:
        async with httpx.AsyncClient(base_url=client.base_url) as anon:
            r = await anon.post("/api/v1/machine/", json={"base_name": "virtio", "mac_address": MAC,
                                                          "ip_address": "10.42.7.1", "tags": ["gpu:fake"]})
            assert r.status_code == 200, r.text

        health = await client.health()
        assert isinstance(health, Health) and health.services
        gateway = await client.gateway()
        assert isinstance(gateway, Gateway) and all(isinstance(i, NetworkInterface) for i in gateway.interfaces)

        machines = await client.machines()
        assert isinstance(machines[MAC], Machine) and machines[MAC].mac_address == MAC
        updated = await client.update_machine(MAC, pdu="vpdu1", pdu_port_id="3", comment="on the bench")
        assert isinstance(updated, Machine) and updated.pdu.name == "vpdu1" and updated.pdu.port_id == "3"
        assert updated.comment == "on the bench"
        trained = await client.training(MAC, "skip")
        assert isinstance(trained, Machine) and trained.ready_for_service

        pdus = await client.pdus()
        assert isinstance(pdus["vpdu1"], Pdu) and all(isinstance(o, Outlet) for o in pdus["vpdu1"].ports.values())
        added = await client.add_pdu("d1", "dummy", {"ports": 2, "initial_state": "OFF"})
        assert isinstance(added, Pdu) and added.name == "d1"

        # a console stream nobody announced: unbound, until the operator binds it
        _reader, writer = await asyncio.open_connection(*netconsole_address(farm).rsplit(":", 1))
        writer.write(b"hello from nowhere\n")
        await writer.drain()
        unbound: dict[str, UnboundStream] = {}
        for _ in range(100):
            unbound = await client.unbound_streams()
            if unbound:
                break
            await asyncio.sleep(0.05)
        assert unbound and all(isinstance(s, UnboundStream) for s in unbound.values())
        writer.close()

        console = await client.set_console_source(MAC, "tcp://127.0.0.1:9")
        assert isinstance(console, Console) and console.remote == "tcp://127.0.0.1:9"
        console = await client.set_console_source(MAC, None)
        assert isinstance(console, Console) and console.remote is None
        consoles = await client.consoles()
        assert all(isinstance(c, Console) for c in consoles.values())
        devices = await client.console_devices()
        assert all(isinstance(d, SerialDevice) for d in devices.values())

        status = await client.discovery()
        assert isinstance(status, DiscoveryStatus) and status.current is None
        started = await client.discover("d1", "0", timeout=30)
        assert isinstance(started, DiscoveryStarted) and started.discovery.port_id == "0"
        assert (await client.cancel_discovery()) == DiscoveryStatus()
        found = await client.find_outlets("d1", timeout=30)
        assert isinstance(found, OutletsDiscovery) and found.message
        assert isinstance(await client.cancel_discovery(), DiscoveryStatus)

        async with httpx.AsyncClient(base_url=client.base_url, headers={"Authorization": f"Bearer {farm.token}"}) as h:
            r = await h.post("/api/v1/jobs", json={"job": job_yaml("pass", target=f"id: '{MAC}'")})
            assert r.status_code == 200, r.text
            job_id = r.json()["id"]
        jobs = await client.jobs()
        assert [j.id for j in jobs] == [job_id] and isinstance(jobs[0], Job)
        cancelled = await client.cancel_job(job_id)
        assert isinstance(cancelled, Job) and cancelled.id == job_id

        log = await client.backend_log(50)
        assert log and all(isinstance(e, LogEntry) for e in log)

        await asyncio.sleep(0.5)  # the last events on their way
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
    kinds = {e.type for e in events}
    assert {"machine", "pdu", "outlet", "console", "discovery", "job", "log"} <= kinds, kinds
    for event in events:
        parsed = event.parsed()  # the client parsed each already: a misfit would have ended the stream
        model = contract.EVENT_DATA.get(event.type)
        assert model is None or isinstance(parsed, model)


def renamed_machine_client(**renamed: str) -> FarmClient:
    """A FarmClient whose backend answers GET /api/v1/machines with keys renamed (old -> new)."""
    answer = machine(MAC, "dut-1", "10.42.7.1", "IDLE")
    for old, new in renamed.items():
        answer[new] = answer.pop(old)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"machines": {MAC: answer}})

    return FarmClient("http://farm.test", transport=httpx.MockTransport(handler))


async def test_a_renamed_key_fails_to_parse_and_says_which() -> None:
    async with renamed_machine_client() as client:
        assert (await client.machines())[MAC].full_name == "dut-1"  # the fixture fits as it is
    async with renamed_machine_client(full_name="fullname") as client:
        with pytest.raises(FarmClientError) as failed:
            await client.machines()
    message = str(failed.value)
    assert "GET /api/v1/machines does not fit the contract" in message
    assert f"machines.{MAC}.full_name: Field required" in message
    assert f"machines.{MAC}.fullname: Extra inputs are not permitted" in message  # strict: undeclared keys too


async def test_an_event_with_a_renamed_key_ends_the_stream_with_a_clear_error() -> None:
    from valve_console.client import parse_event

    good = {"type": "health", "seq": 1, "ts": 0.0, "data": {"service": "power", "state": "ok", "reason": None}}
    event = parse_event(good)
    assert event is not None and event.model_dump() == good and event.parsed().state == "ok"
    bad = {**good, "data": {"service": "power", "status": "ok", "reason": None}}
    with pytest.raises(FarmClientError, match=r"a health event does not fit the contract: state: Field required"):
        parse_event(bad)


async def test_outside_the_tests_a_misfit_event_becomes_a_dropped_marker(monkeypatch) -> None:
    """In production (not strict) one event that does not fit must not cut the stream: the reader gets a
    ``dropped`` marker in its place, so it refetches (and the answers say what does not fit)."""
    import json

    from valve_console import client as client_module

    monkeypatch.setattr(client_module, "STRICT", False)
    good = {"type": "health", "seq": 1, "ts": 0.0, "data": {"service": "power", "state": "ok", "reason": None}}
    bad = {**good, "seq": 2, "data": {"service": "power", "status": "ok"}}
    body = "".join(f"data: {json.dumps(e)}\n\n" for e in (good, bad, {**good, "seq": 3})).encode()
    transport = httpx.MockTransport(
        lambda request: httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body))
    async with FarmClient("http://farm", transport=transport) as client:
        events = [e async for e in client.events()]
    assert [(e.type, e.seq) for e in events] == [("health", 1), ("dropped", -1), ("health", 3)]
    assert events[1].parsed().count == 1
