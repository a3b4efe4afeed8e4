"""PowerService batching against the real snmpd agent (pass_persist APC outlets).

The number of SNMP requests is read from snmpd's own SNMP MIB counters (snmpInGetRequests,
snmpInSetRequests), so "one batch" means what the agent saw, not what our code claims.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.drivers.conftest import APC_OUTLETS, DelayProxy
from valve_console.backend import power as power_module
from valve_console.backend.events import EventBus
from valve_console.backend.power import PowerError, PowerService
from valve_console.backend.store import Store
from valve_console.drivers.pdu import PortState
from valve_console.drivers.pdu.snmp import SnmpClient, SnmpConfig

pytestmark = pytest.mark.usefixtures("snmp_engine")  # each test on the BER codec and on pysnmp

IN_GETS, IN_SETS = "1.3.6.1.2.1.11.15.0", "1.3.6.1.2.1.11.17.0"


@pytest.fixture
async def power(tmp_path):
    store = Store.for_path(tmp_path / "db.sqlite")
    await store.open()
    service = PowerService(store, EventBus(), default_off_delay=0, poll_interval=3600, timeout=2.0)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()
        await store.close()


async def add_apc(power: PowerService, name: str, hostname: str, **config) -> None:
    await power.add_pdu(name, "apc_masterswitch", {"hostname": hostname, **config})
    for _ in range(200):
        if power.outlet_ids(name):
            # Queued behind the first poll: when it answers, that poll has logged and published.
            await power.read_outlet(name, "1")
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{name} was not discovered: {power.pdu_json(name)}")


class Counters:
    """The agent's own count of the GET and SET requests it processed."""

    def __init__(self, hostname: str) -> None:
        self.client = SnmpClient(SnmpConfig(hostname=hostname, version="2c"))
        self.reads = 0

    async def read(self) -> tuple[int, int]:
        gets, sets = await self.client.get([IN_GETS, IN_SETS], "request counters")
        self.reads += 1
        return int(gets) - self.reads, int(sets)  # not counting our own reads of the counters

    def close(self) -> None:
        self.client.close()


async def test_a_burst_for_one_pdu_is_one_set_and_one_get(snmpd, power):
    await add_apc(power, "apc", snmpd.hostname)
    counters = Counters(snmpd.hostname)
    try:
        gets0, sets0 = await counters.read()
        ports = [str(i) for i in range(1, APC_OUTLETS + 1)]
        results = await asyncio.gather(*(power.set_outlet("apc", p, "on") for p in ports))
        assert results == [PortState.ON] * APC_OUTLETS
        assert snmpd.outlets("apc") == [True] * APC_OUTLETS
        gets1, sets1 = await counters.read()
        assert (gets1 - gets0, sets1 - sets0) == (1, 1)  # 8 outlets: one SET, one read-back GET
        # A reboot of every outlet: one batch off, one batch on.
        results = await asyncio.gather(*(power.set_outlet("apc", p, "reboot") for p in ports))
        assert results == [PortState.ON] * APC_OUTLETS
        gets2, sets2 = await counters.read()
        assert (gets2 - gets1, sets2 - sets1) == (2, 2)
    finally:
        counters.close()


async def test_commands_for_one_outlet_keep_their_order_under_a_burst(snmpd, power):
    await add_apc(power, "apc", snmpd.hostname)
    sub = power.bus.subscribe(["outlet"])
    sequence = ["on", "off", "on", "off", "on"]
    tasks = []
    for state in sequence:  # outlet 1 gets five commands, each between commands for the others
        tasks.append(asyncio.create_task(power.set_outlet("apc", "1", state)))
        tasks += [asyncio.create_task(power.set_outlet("apc", str(p), state)) for p in (2, 3)]
    results = await asyncio.gather(*tasks)
    assert [r.value for r in results[::3]] == [s.upper() for s in sequence]
    assert snmpd.outlets("apc")[:3] == [True, True, True]
    seen = []
    while True:
        events = await sub.get_batch(timeout=0.2)
        if not events:
            break
        seen += [e.data["state"] for e in events if e.data["port_id"] == "1"]
    sub.close()
    assert seen == [s.upper() for s in sequence]


async def test_a_stuck_outlet_fails_only_its_caller(snmpd, power, monkeypatch):
    monkeypatch.setattr(power_module, "READBACK_SETTLE", 0.5)
    await add_apc(power, "apc", snmpd.hostname)
    snmpd.update("apc", stuck=[3])
    results = await asyncio.gather(*(power.set_outlet("apc", str(p), "on") for p in range(1, 6)),
                                   return_exceptions=True)
    assert [r for i, r in enumerate(results) if i != 2] == [PortState.ON] * 4
    assert isinstance(results[2], PowerError)
    assert "outlet 3 of PDU apc reads OFF after switching ON" in str(results[2])
    assert snmpd.outlets("apc")[:5] == [True, True, False, True, True]
    assert power.pdu_json("apc")["state"] == "reachable"
    assert power.outlet_state("apc", "3") == PortState.OFF


async def test_an_outlet_the_agent_refuses_fails_only_its_caller(snmpd, power):
    await add_apc(power, "apc", snmpd.hostname)
    snmpd.update("apc", refuse=[2])
    results = await asyncio.gather(*(power.set_outlet("apc", str(p), "on") for p in range(1, 5)),
                                   return_exceptions=True)
    assert results[0] == results[2] == results[3] == PortState.ON
    assert isinstance(results[1], PowerError)
    assert "refused" in str(results[1]) and f"{power_module.OutletError.__name__}" not in str(results[1])
    assert snmpd.outlets("apc")[:4] == [True, False, True, True]
    assert power.pdu_json("apc")["state"] == "reachable"  # the PDU answered: only that outlet failed


async def test_a_pdu_that_stops_answering_fails_every_caller_of_the_batch(snmpd, power):
    proxy = DelayProxy(("127.0.0.1", snmpd.port))
    port = await proxy.start()
    try:
        await add_apc(power, "apc", f"127.0.0.1:{port}", timeout=0.3, retries=0)
        proxy.delay = 5.0  # longer than the driver waits: the PDU is gone
        results = await asyncio.gather(*(power.set_outlet("apc", str(p), "on") for p in range(1, 5)),
                                       return_exceptions=True)
        assert all(isinstance(r, PowerError) for r in results), results
        assert all("did not answer" in str(r) for r in results), results
        pdu = power.pdu_json("apc")
        assert pdu["state"] == "unreachable" and "did not answer" in pdu["error"]
        assert snmpd.outlets("apc")[:4] == [False] * 4
        proxy.delay = 0.0  # back: the next command works again
        assert await power.set_outlet("apc", "1", "on") == PortState.ON
        assert power.pdu_json("apc")["state"] == "reachable"
    finally:
        proxy.close()
