"""SNMP drivers against snmpsim (pure PyPI agent) with a variation module sharing control and status."""

from __future__ import annotations

import pytest

from tests.drivers.conftest import SIM_OUTLETS
from valve_console.drivers.pdu import DriverError, PortState, create_driver

pytestmark = pytest.mark.usefixtures("snmp_engine")  # each test on the BER codec and on pysnmp

CASES = [
    ("raritan_px2", "px2", {"version": "2c"}),
    ("eaton_epdu", "eaton", {"version": "1"}),
    ("cyberpower_pdu15swhviec12atnet", "card", {"version": "2c"}),
    ("servertech_sentry3", "sentry", {}),
]


@pytest.mark.parametrize("key, prefix, extra", CASES, ids=[c[0] for c in CASES])
async def test_outlets_labels_and_switching(snmpsim, key, prefix, extra):
    drv = create_driver(key, {"hostname": snmpsim.hostname, **extra})
    try:
        outlets = await drv.ports()
        assert [(o.port_id, o.label) for o in outlets] == [(str(i), f"{prefix}-{i}") for i in range(1, SIM_OUTLETS + 1)]
        await drv.set("2", PortState.ON)
        assert await drv.get("2") == PortState.ON
        assert await drv.get("3") == PortState.OFF
        await drv.set("2", PortState.OFF)
        assert await drv.get("2") == PortState.OFF
        await drv.set("3", PortState.REBOOT)  # the device's own cycle command, ending ON
        assert await drv.get("3") == PortState.ON
        await drv.set("3", PortState.OFF)
    finally:
        await drv.close()


async def test_generic_driver_on_a_raritan_layout(snmpsim):
    base = "1.3.6.1.4.1.13742.6"
    drv = create_driver("snmp", {
        "hostname": snmpsim.hostname, "version": "2c",
        "outlet_labels": f"{base}.3.5.3.1.3.1", "outlet_status": f"{base}.4.1.2.1.3.1",
        "outlet_ctrl": f"{base}.4.1.2.1.2.1", "state_mapping": {"on": 1, "off": 0},
        "inverse_state_mapping": {"7": "on", "8": "off"},
    })
    try:
        assert len(await drv.ports()) == SIM_OUTLETS
        await drv.set("4", PortState.ON)
        assert await drv.get("4") == PortState.ON
        await drv.set("4", PortState.OFF)
        assert await drv.get("4") == PortState.OFF
    finally:
        await drv.close()


async def test_wrong_value_and_read_only_columns_are_reported(snmpsim):
    base = "1.3.6.1.4.1.13742.6"
    wrong_value = create_driver("snmp", {
        "hostname": snmpsim.hostname, "version": "2c", "outlet_labels": f"{base}.3.5.3.1.3.1",
        "outlet_status": f"{base}.4.1.2.1.3.1", "outlet_ctrl": f"{base}.4.1.2.1.2.1",
        "state_mapping": {"on": 5, "off": 0}, "inverse_state_mapping": {"7": "on", "8": "off"},
    })
    not_writable = create_driver("snmp", {  # writes the status column
        "hostname": snmpsim.hostname, "version": "2c", "outlet_labels": f"{base}.3.5.3.1.3.1",
        "outlet_status": f"{base}.4.1.2.1.3.1", "state_mapping": {"on": 7, "off": 8},
    })
    try:
        with pytest.raises(DriverError, match="refused the write of 5 for outlet 1 ON .*wrongValue"):
            await wrong_value.set("1", PortState.ON)
        with pytest.raises(DriverError, match="notWritable"):
            await not_writable.set("1", PortState.ON)
    finally:
        await wrong_value.close()
        await not_writable.close()


async def test_unknown_community_is_a_timeout(snmpsim):
    drv = create_driver("eaton_epdu", {"hostname": snmpsim.hostname, "community": "public", "timeout": 0.3,
                                       "retries": 0})
    try:
        with pytest.raises(DriverError, match="did not answer .wrong community or host down"):
            await drv.get("1")
    finally:
        await drv.close()
