"""Driver configs are validated up front, with one readable line naming the bad key."""

from __future__ import annotations

import pytest

from valve_console.drivers.pdu import DriverConfigError, create_driver, driver_names

SNMP_KEYS = ["apc_masterswitch", "apc_rpdu", "apc_rpdu2", "cyberpower_pdu41004", "cyberpower_pdu15swhviec12atnet",
             "raritan_px2", "eaton_epdu", "servertech_sentry3"]
GENERIC = {"hostname": "10.0.0.5", "outlet_labels": "1.3.6.1.4.1.318.1.1.4.4.2.1.4",
           "outlet_status": ".1.3.6.1.4.1.318.1.1.4.4.2.1.3", "state_mapping": {"ON": 1, "off": 2, "Reboot": 3}}


def test_every_driver_is_registered():
    assert set(SNMP_KEYS + ["snmp", "tasmota", "shelly_gen1", "shelly_gen2", "dummy", "vpdu"]) <= set(driver_names())


@pytest.mark.parametrize("key", SNMP_KEYS)
def test_snmp_defaults_follow_valve_infra(key):
    drv = create_driver(key, {"hostname": "10.0.0.5"})
    cfg = drv.config
    assert (cfg.version, cfg.community, cfg.port, cfg.timeout, cfg.retries) == ("1", "private", 161, 2.0, 1)
    assert drv.hostname == "10.0.0.5:161"


@pytest.mark.parametrize(
    "config, message",
    [
        ({}, "missing key 'hostname'"),
        ({"hostname": "h", "bogus": 1}, "unknown key 'bogus'"),
        ({"hostname": "h", "version": "4"}, "version"),
        ({"hostname": "h:99", "port": 98}, "give it once"),
        ({"hostname": "h:99999"}, "between 1 and 65535"),
        ({"hostname": "h", "version": "3"}, "needs a username"),
        ({"hostname": "h", "username": "u"}, "username only applies to SNMP version 3"),
        ({"hostname": "h", "version": "3", "username": "u", "community": "x"}, "do not apply to SNMP version 3"),
        ({"hostname": "h", "version": "3", "username": "u", "auth_key": "short"}, "at least 8 characters"),
        ({"hostname": "h", "version": "3", "username": "u", "priv_key": "12345678"}, "priv_key needs an auth_key"),
        ({"hostname": "h", "version": "3", "username": "u", "auth_key": "12345678", "auth_protocol": "SHA3"},
         "not one of MD5, SHA"),
        ({"hostname": "h", "version": "3", "username": "u", "auth_key": "12345678", "priv_key": "12345678",
          "priv_protocol": "blowfish"}, "not one of DES, 3DES, AES"),
        ({"hostname": "h", "timeout": 0}, "timeout"),
    ],
)
def test_bad_snmp_configs_are_refused(config, message):
    with pytest.raises(DriverConfigError) as err:
        create_driver("apc_rpdu", config)
    assert message in str(err.value)
    assert str(err.value).startswith("invalid config for driver 'apc_rpdu'")


def test_snmp_v3_and_hosts_are_read_generously():
    drv = create_driver("apc_rpdu2", {"hostname": "[::1]:1161", "version": "v3", "username": "u",
                                      "auth_key": "12345678", "auth_protocol": "sha-256", "priv_key": "abcdefgh",
                                      "priv_protocol": "aes256"})
    assert drv.hostname == "[::1]:1161"
    assert (drv.config.version, drv.config.auth_protocol, drv.config.priv_protocol) == ("3", "SHA256", "AES256")
    assert create_driver("apc_rpdu", {"hostname": "pdu1", "version": 2}).config.version == "2c"


def test_generic_snmp_driver_is_configured_and_validated():
    drv = create_driver("snmp", GENERIC)
    assert drv.status == "1.3.6.1.4.1.318.1.1.4.4.2.1.3"  # leading dot dropped
    assert {s.value: v for s, (_, v) in drv.commands.items()} == {"ON": 1, "OFF": 2, "REBOOT": 3}
    # valve-infra's relative form: system_id + tables
    rel = create_driver("snmp", {"hostname": "h", "system_id": "318.1.1.4", "outlet_labels": "4.2.1.4",
                                 "outlet_status": "4.2.1.3", "state_mapping": {"on": 1, "off": 2}})
    assert rel.labels == "1.3.6.1.4.1.318.1.1.4.4.2.1.4"
    for bad, message in [
        ({"outlet_status": "1.3.x"}, "not a numeric OID"),
        ({"state_mapping": {"on": 1}}, "needs off"),
        ({"state_mapping": {"on": 1, "off": 1}}, "must be different"),
        ({"state_mapping": {"on": 1, "off": 2, "sideways": 3}}, "unknown state 'sideways'"),
        ({"inverse_state_mapping": {"1": "on"}}, "one that reads off"),
        ({"inverse_state_mapping": {"x": "on", "2": "off"}}, "integers"),
        ({"inverse_state_mapping": {"1": "up", "2": "off"}}, "'up' is not on, off"),
    ]:
        with pytest.raises(DriverConfigError) as err:
            create_driver("snmp", {**GENERIC, **bad})
        assert message in str(err.value), (bad, str(err.value))
    with pytest.raises(DriverConfigError, match="missing key 'state_mapping'"):
        create_driver("snmp", {k: v for k, v in GENERIC.items() if k != "state_mapping"})


def test_vendor_specific_keys():
    assert create_driver("raritan_px2", {"hostname": "h", "pdu_id": 2}).oid(
        "1.3.6.1.4.1.13742.6.4.1.2.1.3.{pdu_id}") == "1.3.6.1.4.1.13742.6.4.1.2.1.3.2"
    with pytest.raises(DriverConfigError, match="unknown key 'unit'"):
        create_driver("raritan_px2", {"hostname": "h", "unit": 2})
    assert create_driver("eaton_epdu", {"hostname": "h"}).config.unit == 0
    assert create_driver("servertech_sentry3", {"hostname": "h", "infeed": 2}).config.infeed == 2


@pytest.mark.parametrize(
    "key, config, message",
    [
        ("tasmota", {}, "missing key 'hostname'"),
        ("tasmota", {"hostname": "plug", "outlets": 0}, "outlets"),
        ("tasmota", {"hostname": "ftp://plug"}, "http(s)://HOST"),
        ("shelly_gen1", {"hostname": "plug:http"}, "port"),
        ("shelly_gen2", {"hostname": "plug", "community": "x"}, "unknown key 'community'"),
    ],
)
def test_bad_http_configs_are_refused(key, config, message):
    with pytest.raises(DriverConfigError) as err:
        create_driver(key, config)
    assert message in str(err.value)


def test_every_example_in_the_driver_docs_is_valid():
    import json
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "pdu-drivers.md").read_text()
    examples = [json.loads(block) for block in re.findall(r"```json\n(.*?)```", text, re.S)]
    for body in examples:
        create_driver(body["driver"], body["config"])
    assert sorted({body["driver"] for body in examples}) == driver_names()  # one example per driver
