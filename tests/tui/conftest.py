"""Fixtures for the TUI tests: the console app on a FarmClient of the real test farm."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.conftest import api_url
from valve_console.app import ConsoleApp, make_app
from valve_console.backend.farm import Farm
from valve_console.client import FarmClient


@pytest.fixture
async def app(farm: Farm) -> AsyncIterator[ConsoleApp]:
    """The console app talking to ``farm`` over HTTP with the operator token (not yet running)."""
    client = FarmClient(api_url(farm), token=farm.token)
    try:
        yield make_app(client, linux_console=False)
    finally:
        await client.close()
