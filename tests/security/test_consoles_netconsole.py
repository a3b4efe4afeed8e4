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
    monkeypatch.delenv("VALVE_CONSOLE_NETCONSOLE", raising=False)
    monkeypatch.setenv("VALVE_CONSOLE_PRIVATE_IP", "192.0.2.77/24")  # TEST-NET-1: nobody has it
    settings = Settings(data_dir=tmp_path)
    assert settings.netconsole == "127.0.0.1:8100"
    hub = ConsoleHub(EventBus(), tmp_path, 4096, 0, 0, tcp_host=None, settings=settings)
    with caplog.at_level(logging.WARNING, logger="valve_console.backend.consoles"):
        await hub.start(None)
    await hub.stop()
    assert any("192.0.2.77 is not on this gateway" in r.getMessage() and "loopback" in r.getMessage()
               for r in caplog.records)


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
