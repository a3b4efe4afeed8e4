"""A real Farm with Sgt. Hartman on (tiny loop counts and back-off), and Vivian DUTs that follow their boot config."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import AsyncIterator, Callable

import httpx
import pytest

from tests.conftest import api_url, make_settings, netconsole_address
from valve_console.backend.farm import Farm

TAGS = ["virtio:pciid:0x1af4:0x1050", "virtio:family:VIRTIO"]
RETRY = 0.3  # training_retry_delay of these farms (seconds); the cap is 2 × RETRY


def mac(outlet: int) -> str:
    return f"52:54:00:11:22:{outlet:02x}"


def ip(outlet: int) -> str:
    return f"10.42.0.{10 + outlet}"  # what a Vivian DUT reports (vivian.dut.default_ip)


@pytest.fixture
async def tfarm(tmp_path: Path) -> AsyncIterator[Farm]:
    """A Farm that trains: 2 boot loops, 2 needed, back-off RETRY doubling up to 2 × RETRY."""
    settings = make_settings(
        tmp_path / "data",
        training=True,
        training_loops=2,
        training_qualify=2,
        training_retry_delay=RETRY,
        training_retry_max=2 * RETRY,
        job_console_drain=0.05,
    )
    farm = Farm(settings)
    await farm.start()
    try:
        yield farm
    finally:
        await farm.stop()


@pytest.fixture
async def http(tfarm: Farm) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=api_url(tfarm), timeout=10) as c:
        c.headers["Authorization"] = f"Bearer {tfarm.token}"
        yield c


async def add_vpdu(farm: Farm, tmp_path: Path, name: str, *dut_args: str):
    """A real vPDU (8 outlets) registered as ``name``; its DUTs get ``dut_args``."""
    from vivian.vpdu import VirtualPDU

    vpdu = VirtualPDU(
        num_ports=8,
        api=api_url(farm),
        console=netconsole_address(farm),
        log_dir=tmp_path / f"vivian-{name}",
        dut_args=["--boot-delay=0", *dut_args],
    )
    port = await vpdu.start("127.0.0.1", 0)
    await farm.power.add_pdu(name, "vpdu", {"hostname": f"127.0.0.1:{port}"})
    return vpdu


@pytest.fixture
async def vpdu(tfarm: Farm, tmp_path: Path):
    vpdu = await add_vpdu(tfarm, tmp_path, "vpdu1")
    try:
        yield vpdu
    finally:
        await vpdu.stop()


@pytest.fixture
async def flaky_vpdu(tfarm: Farm, tmp_path: Path):
    """Every second boot-loop check of its DUTs fails."""
    vpdu = await add_vpdu(tfarm, tmp_path, "flaky", "--flaky=2")
    try:
        yield vpdu
    finally:
        await vpdu.stop()


async def add_machine(http: httpx.AsyncClient, outlet: int, pdu: str = "vpdu1", **patch) -> dict:
    """Register a machine like its DUT would, then give it its outlet (which starts its training)."""
    reg = {"base_name": "virtio", "tags": TAGS, "mac_address": mac(outlet), "ip_address": ip(outlet),
           "local_tty_device": "ttyS1"}
    r = await http.post("/api/v1/machine/", json=reg)
    assert r.status_code == 200, r.text
    r = await http.patch(f"/api/v1/machine/{mac(outlet)}/",
                         json={"pdu": pdu, "pdu_port_id": str(outlet), "pdu_off_delay": 0.1, **patch})
    assert r.status_code == 200, r.text
    return r.json()


async def machine(http: httpx.AsyncClient, outlet: int) -> dict:
    r = await http.get(f"/api/v1/machine/{mac(outlet)}/")
    assert r.status_code == 200, r.text
    return r.json()


async def wait_machine(http: httpx.AsyncClient, outlet: int, done: Callable[[dict], bool], what: str,
                       timeout: float = 30.0) -> dict:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        m = await machine(http, outlet)
        if done(m):
            return m
        assert loop.time() < deadline, f"{what}: not reached; machine: state {m['state']}, training {m['training']}"
        await asyncio.sleep(0.05)
