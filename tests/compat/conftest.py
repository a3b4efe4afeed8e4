"""valve-infra's tools against a real farm: the job farm of tests/jobs (dummy PDU, fake DUTs), with the
gateway's default trust (its own addresses act as the operator: valve-infra's tools send no token)."""

from __future__ import annotations

from pathlib import Path
from typing import AsyncIterator

import pytest

from tests.conftest import make_settings
from tests.jobs.conftest import http, jobfarm  # noqa: F401 - fixtures shared with tests/jobs
from valve_console.backend.farm import Farm


@pytest.fixture
async def farm(tmp_path: Path) -> AsyncIterator[Farm]:
    f = Farm(make_settings(tmp_path / "data", trusted_networks=["auto"]))
    await f.start()
    try:
        yield f
    finally:
        await f.stop()
