"""A Farm with fast GitLab retries and no automatic training, a fake GitLab server, helpers."""

from __future__ import annotations

from pathlib import Path
from typing import Any, AsyncIterator

import httpx
import pytest

from tests.conftest import api_url, make_settings
from tests.gitlab.fake_gitlab import ADMIN_TOKEN, FakeGitlab
from valve_console.backend.farm import Farm

TAGS = ["virtio:pciid:0x1af4:0x1050", "virtio:family:VIRTIO"]


def mac_of(i: int) -> str:
    """The MAC of the Vivian DUT behind vPDU outlet ``i`` (vivian.vpdu.outlet_mac)."""
    return f"52:54:00:11:22:{i:02x}"


@pytest.fixture
def farm_overrides() -> dict[str, Any]:
    """Settings a module's farm gets on top of the ones below: a module overrides this fixture."""
    return {}


@pytest.fixture
async def farm(tmp_path: Path, farm_overrides: dict[str, Any]) -> AsyncIterator[Farm]:
    """The farm of these tests: GitLab retries capped at 0.4 s, no Sgt. Hartman (ready is set by hand)."""
    settings = make_settings(tmp_path / "data", **{
        "gitlab_retry_max": 0.4, "gitlab_timeout": 2.0, "training": False, **farm_overrides})
    f = Farm(settings)
    await f.start()
    try:
        yield f
    finally:
        await f.stop()


@pytest.fixture
def fake() -> Any:
    server = FakeGitlab()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def http(farm: Farm) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=api_url(farm), timeout=10) as c:
        c.headers["Authorization"] = f"Bearer {farm.token}"
        yield c


async def add_instance(http: httpx.AsyncClient, fake: FakeGitlab, **fields: Any) -> dict[str, Any]:
    body = {"name": "fdo", "url": fake.url, "token": ADMIN_TOKEN, "farm_tags": ["farm:test"], **fields}
    r = await http.post("/api/v1/gitlab", json=body)
    assert r.status_code == 201, r.text
    return r.json()


async def add_machine(
    http: httpx.AsyncClient, i: int, ready: bool = True, tags: list[str] | None = None, **patch: Any
) -> dict[str, Any]:
    reg = {"base_name": "virtio", "tags": tags or TAGS, "mac_address": mac_of(i), "ip_address": f"10.42.0.{10 + i}"}
    r = await http.post("/api/v1/machine/", json=reg)
    assert r.status_code == 200, r.text
    r = await http.patch(f"/api/v1/machine/{mac_of(i)}/", json={"ready_for_service": ready, **patch})
    assert r.status_code == 200, r.text
    return r.json()
