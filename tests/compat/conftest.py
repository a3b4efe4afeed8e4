"""valve-infra's tools against a real farm: the job farm of tests/jobs (dummy PDU, fake DUTs), with the
gateway's default trust (its own addresses act as the operator: valve-infra's tools send no token)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, AsyncContextManager, AsyncIterator

import pytest

from tests.conftest import make_settings, running_farm
from tests.jobs.conftest import http, jobfarm  # noqa: F401 - fixtures shared with tests/jobs
from valve_console.backend.farm import Farm


def farm_trusting_the_gateway(tmp_path: Path, **overrides: Any) -> AsyncContextManager[Farm]:
    return running_farm(make_settings(tmp_path / "data", **{"trusted_networks": ["auto"], **overrides}))


@pytest.fixture
async def farm(tmp_path: Path) -> AsyncIterator[Farm]:
    async with farm_trusting_the_gateway(tmp_path) as f:
        yield f
