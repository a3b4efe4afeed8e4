"""SNMP drivers against net-snmp snmpd (pass_persist helper playing APC and CyberPower PDUs)."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.drivers.conftest import APC_OUTLETS, CPS_OUTLETS, V3_PASS, DelayProxy, free_udp_port
from valve_console.backend import power as power_module
from valve_console.backend.power import PowerError
from valve_console.drivers.pdu import DriverError, OutletError, PortState, create_driver

pytestmark = pytest.mark.usefixtures("snmp_engine")  # each test on the BER codec and on pysnmp

V3_PRIV = {"version": "3", "username": "v3priv", "auth_key": V3_PASS[0], "priv_key": V3_PASS[1],
           "auth_protocol": "SHA", "priv_protocol": "AES"}
V3_AUTH = {"version": "3", "username": "v3auth", "auth_key": V3_PASS[0], "auth_protocol": "SHA256"}

CASES = [
    # driver, vendor state file, extra config (SNMP version under test)
    ("apc_masterswitch", "apc", {}),  # v1, community private (valve-infra's defaults)
    ("apc_rpdu", "apc", {"version": "2c", "read_community": "public"}),
    ("apc_rpdu2", "apc", V3_PRIV),  # v3 authPriv SHA/AES
    ("cyberpower_pdu41004", "cyberpower", V3_AUTH),  # v3 authNoPriv SHA-256
    ("cyberpower_pdu41004", "cyberpower", {"version": "2c"}),
]


@pytest.mark.parametrize("key, vendor, extra", CASES, ids=[f"{c[0]}-v{c[2].get('version', '1')}" for c in CASES])
async def test_outlets_labels_and_switching(snmpd, key, vendor, extra):
    drv = create_driver(key, {"hostname": snmpd.hostname, **extra})
    try:
        outlets = await drv.ports()
        count = APC_OUTLETS if vendor == "apc" else CPS_OUTLETS
        prefix = "apc" if vendor == "apc" else "cps"
        assert [o.port_id for o in outlets] == [str(i) for i in range(1, count + 1)]
        assert [o.label for o in outlets] == [f"{prefix}-{i}" for i in range(1, count + 1)]
        assert await drv.get("2") == PortState.OFF
        await drv.set("2", PortState.ON)
        assert await drv.get("2") == PortState.ON
        assert snmpd.outlets(vendor)[1] is True  # the agent really switched
        assert await drv.get("1") == PortState.OFF  # and only that outlet
        await drv.set("2", PortState.OFF)
        assert await drv.get("2") == PortState.OFF
        assert snmpd.outlets(vendor)[1] is False
    finally:
        await drv.close()


async def test_rpdu2_reads_its_inverted_status_encoding(snmpd):
    """rPDU2 status is off 1 / on 2, the reverse of rPDU: both drivers must agree on one outlet."""
    snmpd.update("apc", on=[True] + [False] * (APC_OUTLETS - 1))
    rpdu = create_driver("apc_rpdu", {"hostname": snmpd.hostname})
    rpdu2 = create_driver("apc_rpdu2", {"hostname": snmpd.hostname, "version": "2c"})
    try:
        assert [await rpdu.get("1"), await rpdu2.get("1")] == [PortState.ON, PortState.ON]
        assert [await rpdu.get("2"), await rpdu2.get("2")] == [PortState.OFF, PortState.OFF]
    finally:
        await rpdu.close()
        await rpdu2.close()


async def test_reboot_sends_the_device_command(snmpd):
    drv = create_driver("apc_masterswitch", {"hostname": snmpd.hostname})
    try:
        await drv.set("4", PortState.REBOOT)  # outletReboot (3): the helper ends the cycle ON
        assert await drv.get("4") == PortState.ON
    finally:
        await drv.close()


async def test_generic_snmp_driver_on_the_rpdu_tables(snmpd):
    cfg = {
        "hostname": snmpd.hostname, "version": "2c",
        "system_id": "318.1.1.12",
        "outlet_labels": "3.3.1.1.2", "outlet_status": "3.5.1.1.4", "outlet_ctrl": "3.3.1.1.4",
        "outlet_count": "3.1.3.0",
        "state_mapping": {"on": 1, "off": 2, "reboot": 3},
        "inverse_state_mapping": {"1": "on", "2": "off"},
    }
    drv = create_driver("snmp", cfg)
    try:
        assert [o.label for o in await drv.ports()][:2] == ["apc-1", "apc-2"]
        await drv.set("3", PortState.ON)
        assert await drv.get("3") == PortState.ON and snmpd.outlets("apc")[2] is True
        await drv.set("3", PortState.OFF)
        assert await drv.get("3") == PortState.OFF
    finally:
        await drv.close()


async def test_generic_driver_falls_back_to_the_count_oid(snmpd):
    drv = create_driver("snmp", {
        "hostname": snmpd.hostname, "outlet_labels": "1.3.6.1.4.1.318.1.1.4.9.9",  # no such column
        "outlet_count": "1.3.6.1.4.1.318.1.1.4.4.1.0", "outlet_status": "1.3.6.1.4.1.318.1.1.4.4.2.1.3",
        "state_mapping": {"on": 1, "off": 2},
    })
    try:
        outlets = await drv.ports()
        assert [o.port_id for o in outlets] == [str(i) for i in range(1, APC_OUTLETS + 1)]
        assert {o.label for o in outlets} == {""}
    finally:
        await drv.close()


async def test_batch_operations_use_one_request_per_sixteen_outlets(snmpd):
    drv = create_driver("apc_rpdu2", {"hostname": snmpd.hostname, "version": "2c"})
    try:
        ids = [str(i) for i in range(1, APC_OUTLETS + 1)]
        await drv.set_many({i: PortState.ON for i in ids if int(i) % 2})
        assert snmpd.outlets("apc") == [True, False] * (APC_OUTLETS // 2)
        states = await drv.get_many(ids)
        assert list(states) == ids
        assert [s.value for s in states.values()] == ["ON", "OFF"] * (APC_OUTLETS // 2)
        with pytest.raises(DriverError, match="noSuchInstance"):
            await drv.get_many(["1", "99"])
    finally:
        await drv.close()


# --------------------------------------------------------------------------- faults


async def test_agent_down_fails_quickly():
    port = free_udp_port()  # nothing listens there
    drv = create_driver("apc_masterswitch", {"hostname": f"127.0.0.1:{port}", "timeout": 0.3, "retries": 0})
    t0 = time.monotonic()
    try:
        with pytest.raises(DriverError) as err:
            await drv.get("1")
    finally:
        await drv.close()
    assert time.monotonic() - t0 < 2.0
    assert f"SNMP agent 127.0.0.1:{port} did not answer (wrong community or host down" in str(err.value)


async def test_wrong_community_is_a_timeout(snmpd):
    drv = create_driver("apc_rpdu", {"hostname": snmpd.hostname, "version": "2c", "community": "letmein",
                                     "timeout": 0.3, "retries": 1})
    try:
        with pytest.raises(DriverError, match="did not answer .wrong community or host down; waited 0.3 s x 2 tries"):
            await drv.ports()
    finally:
        await drv.close()


async def test_read_only_community_cannot_write(snmpd):
    v2 = create_driver("apc_rpdu", {"hostname": snmpd.hostname, "version": "2c", "community": "public"})
    v1 = create_driver("apc_masterswitch", {"hostname": snmpd.hostname, "community": "public"})
    try:
        assert len(await v2.ports()) == APC_OUTLETS  # reading is fine
        with pytest.raises(DriverError) as err:
            await v2.set("1", PortState.ON)
        assert "refused the write of 1 for outlet 1 ON" in str(err.value) and "noAccess" in str(err.value)
        with pytest.raises(DriverError, match="noSuchName .SNMPv1 says this for a read-only community"):
            await v1.set("1", PortState.ON)  # SNMPv1 has no noAccess
        assert snmpd.outlets("apc")[0] is False
    finally:
        await v2.close()
        await v1.close()


async def test_v3_credentials_errors_are_named(snmpd):
    cases = [
        ({**V3_PRIV, "username": "nobody"}, "does not know the SNMPv3 user 'nobody'"),
        ({**V3_PRIV, "auth_key": "wrongpass123"}, "rejected the SNMPv3 authentication"),
        ({**V3_PRIV, "priv_key": "wrongpass123"}, "did not answer (wrong credentials or host down"),
    ]
    for extra, message in cases:
        drv = create_driver("apc_rpdu2", {"hostname": snmpd.hostname, **extra, "timeout": 0.3, "retries": 0})
        try:
            with pytest.raises(DriverError) as err:
                await drv.get("1")
            assert message in str(err.value)
        finally:
            await drv.close()


async def test_missing_outlet_and_wrong_model_are_explained(snmpd):
    drv = create_driver("apc_rpdu", {"hostname": snmpd.hostname, "version": "2c"})
    eaton = create_driver("eaton_epdu", {"hostname": snmpd.hostname, "version": "2c"})
    try:
        with pytest.raises(DriverError, match=r"has nothing at .*\.4\.99 \(noSuchInstance\).*no such outlet"):
            await drv.get("99")
        with pytest.raises(DriverError, match="outlets are 1..N"):
            await drv.get("zero")
        with pytest.raises(DriverError, match="wrong PDU model"):
            await eaton.ports()
    finally:
        await drv.close()
        await eaton.close()


async def test_read_back_mismatch_through_power_service(farm, snmpd, monkeypatch):
    """A PDU that accepts the write but never changes: PowerService says what it reads."""
    monkeypatch.setattr(power_module, "READBACK_SETTLE", 0.6)
    await farm.power.add_pdu("stuck", "apc_masterswitch", {"hostname": snmpd.hostname})
    snmpd.update("apc", frozen=True)
    with pytest.raises(PowerError) as err:
        await farm.power.set_outlet("stuck", "1", "on")
    assert "outlet 1 of PDU stuck reads OFF after switching ON" in str(err.value)
    assert farm.power.pdu_json("stuck")["ports"]["1"]["mismatch"] == "read back OFF after switching ON"
    snmpd.update("apc", frozen=False)
    assert await farm.power.set_outlet("stuck", "1", "on") == PortState.ON
    assert farm.power.pdu_json("stuck")["ports"]["1"]["mismatch"] is None


async def test_slow_pdu_is_marked_unreachable_while_another_keeps_working(farm, snmpd):
    proxy = DelayProxy(("127.0.0.1", snmpd.port))
    port = await proxy.start()
    try:
        await farm.power.add_pdu("slow", "apc_rpdu", {"hostname": f"127.0.0.1:{port}", "version": "2c",
                                                      "timeout": 0.4, "retries": 0})
        await farm.power.add_pdu("fast", "cyberpower_pdu41004", {"hostname": snmpd.hostname})
        assert farm.power.outlet_ids("slow") == [str(i) for i in range(1, APC_OUTLETS + 1)]
        proxy.delay = 1.5  # every answer now arrives long after the driver gave up
        t0 = time.monotonic()
        with pytest.raises(PowerError) as err:
            await farm.power.set_outlet("slow", "2", "on")
        assert time.monotonic() - t0 < 3.0
        assert "did not answer" in str(err.value)
        pdu = farm.power.pdu_json("slow")
        assert pdu["state"] == "unreachable" and "did not answer" in pdu["error"]
        assert farm.power.state == "degraded" and "slow" in farm.power.reason
        # The other PDU is untouched by the slow one.
        t0 = time.monotonic()
        assert await farm.power.set_outlet("fast", "3", "on") == PortState.ON
        assert time.monotonic() - t0 < 1.0
        assert snmpd.outlets("cyberpower")[2] is True
        assert farm.power.pdu_json("fast")["state"] == "reachable"
        # Once the PDU is quick again, the next command works and clears the mark.
        proxy.delay = 0
        await asyncio.sleep(1.6)  # let the late answers drain
        assert await farm.power.set_outlet("slow", "2", "on") == PortState.ON
        assert farm.power.pdu_json("slow")["state"] == "reachable"
    finally:
        proxy.close()


async def test_power_service_switches_through_every_snmp_version(farm, snmpd):
    await farm.power.add_pdu("v1", "apc_masterswitch", {"hostname": snmpd.hostname})
    await farm.power.add_pdu("v3", "apc_rpdu2", {"hostname": snmpd.hostname, **V3_PRIV})
    assert farm.power.pdu_json("v3")["ports"]["5"]["label"] == "apc-5"
    assert await farm.power.set_outlet("v1", "5", "on") == PortState.ON
    assert await farm.power.set_outlet("v3", "6", "on") == PortState.ON
    assert snmpd.outlets("apc")[4:6] == [True, True]
    assert await farm.power.set_outlet("v3", "5", "off") == PortState.OFF
    assert snmpd.outlets("apc")[4] is False


@pytest.mark.parametrize("version", ["1", "2c"])
async def test_set_many_names_the_outlet_the_agent_refuses(snmpd, version):
    snmpd.update("apc", refuse=[3])
    drv = create_driver("apc_masterswitch", {"hostname": snmpd.hostname, "version": version})
    try:
        with pytest.raises(OutletError) as err:
            await drv.set_many({"1": PortState.ON, "3": PortState.ON, "4": PortState.ON})
        assert err.value.port_id == "3" and err.value.applied == []
        assert "refused the write for 3 outlets" in str(err.value)
        await drv.set_many({"1": PortState.ON, "4": PortState.ON})
        assert (await drv.get_many(["1", "3", "4"])) == {"1": PortState.ON, "3": PortState.OFF, "4": PortState.ON}
    finally:
        await drv.close()
