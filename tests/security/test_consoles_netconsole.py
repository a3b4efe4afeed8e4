"""The netconsole listens on the private network's address by default, not on every interface."""

from __future__ import annotations

import logging

from valve_console.backend.consoles import ConsoleHub
from valve_console.backend.events import EventBus
from valve_console.config import Settings


def test_the_private_address_when_the_gateway_has_it(monkeypatch):
    monkeypatch.delenv("VALVE_CONSOLE_NETCONSOLE", raising=False)
    monkeypatch.setenv("VALVE_CONSOLE_PRIVATE_IP", "127.0.0.1/8")  # an address this machine has
    settings = Settings()
    assert settings.netconsole == "127.0.0.1:8100" and settings.notes == []


async def test_loopback_with_a_warning_when_it_does_not(monkeypatch, tmp_path, caplog):
    # not a gateway (VALVE_CONSOLE_PRIVATE_IP unset) and 10.42.0.1 absent: a laptop, the demo
    monkeypatch.delenv("VALVE_CONSOLE_NETCONSOLE", raising=False)
    monkeypatch.delenv("VALVE_CONSOLE_PRIVATE_IP", raising=False)
    monkeypatch.setattr("valve_console.backend.trust.own_addresses", lambda: set())
    settings = Settings(data_dir=tmp_path)
    assert settings.netconsole == "127.0.0.1:8100"
    hub = ConsoleHub(EventBus(), tmp_path, 4096, 0, 0, tcp_host=None, settings=settings)
    with caplog.at_level(logging.WARNING, logger="valve_console.backend.consoles"):
        await hub.start(None)
    await hub.stop()
    assert any("10.42.0.1 is not on this gateway" in r.getMessage() and "loopback" in r.getMessage()
               for r in caplog.records)


async def test_a_gateways_private_address_before_its_nic_is_up(monkeypatch, tmp_path, caplog):
    """The units set VALVE_CONSOLE_PRIVATE_IP: the netconsole takes that address even while no interface
    has it (the private NIC comes up after the backend), says so, and accepts once it is there."""
    import socket

    from valve_console.backend.farm import _bind_tcp, _warn_if_not_up

    monkeypatch.delenv("VALVE_CONSOLE_NETCONSOLE", raising=False)
    monkeypatch.setenv("VALVE_CONSOLE_PRIVATE_IP", "192.0.2.77/24")  # TEST-NET-1: nobody has it
    settings = Settings(data_dir=tmp_path)
    assert settings.netconsole == "192.0.2.77:8100" and settings.notes == []
    # without IP_FREEBIND the kernel refuses the address; with it the socket listens on it
    plain = socket.socket()
    try:
        with __import__("pytest").raises(OSError):
            plain.bind(("192.0.2.77", 0))
    finally:
        plain.close()
    sock = _bind_tcp("192.0.2.77:0", "netconsole", freebind=True)
    try:
        assert sock.getsockname()[0] == "192.0.2.77"
        with caplog.at_level(logging.WARNING, logger="valve_console.backend.farm"):
            _warn_if_not_up(sock, "netconsole")
        assert any("192.0.2.77, which is not (yet) an address of this gateway" in r.getMessage()
                   for r in caplog.records)
    finally:
        sock.close()
    # an address the machine has: nothing to say
    caplog.clear()
    sock = _bind_tcp("127.0.0.1:0", "netconsole", freebind=True)
    with caplog.at_level(logging.WARNING, logger="valve_console.backend.farm"):
        _warn_if_not_up(sock, "netconsole")
    sock.close()
    assert not caplog.records


def test_an_explicit_address_is_kept_even_every_interface(monkeypatch):
    monkeypatch.setenv("VALVE_CONSOLE_PRIVATE_IP", "192.0.2.77/24")
    assert Settings(netconsole="0.0.0.0:8100").netconsole == "0.0.0.0:8100"
    monkeypatch.setenv("VALVE_CONSOLE_NETCONSOLE", "0.0.0.0:8100")
    assert Settings().netconsole == "0.0.0.0:8100" and Settings().notes == []
    monkeypatch.setenv("VALVE_CONSOLE_PRIVATE_IP", "not an address")
    monkeypatch.delenv("VALVE_CONSOLE_NETCONSOLE")
    settings = Settings()
    assert settings.netconsole == "127.0.0.1:8100" and "not an address" in settings.notes[0]


def test_console_settings_are_checked_in_words(monkeypatch):
    import pytest
    from pydantic import ValidationError

    monkeypatch.setenv("VALVE_CONSOLE_CONSOLE_LOCAL_SOURCES", "auto,10.0.0.0/33")
    with pytest.raises(ValidationError, match="console_local_sources: '10.0.0.0/33' is not a network"):
        Settings()
    monkeypatch.setenv("VALVE_CONSOLE_CONSOLE_LOCAL_SOURCES", "none")
    assert Settings().console_local_sources == ["none"]
    with pytest.raises(ValidationError):
        Settings(console_bind_policy="anyone")
