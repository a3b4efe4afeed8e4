"""A Farm with a dummy PDU, registered ready machines and fake DUTs driven by the test."""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import AsyncIterator, Callable

import httpx
import pytest

from tests.conftest import api_url
from valve_console.drivers.pdu.base import PortState

TAGS = ["virtio:family:VIRTIO", "gpu:fake"]


def mac_of(i: int) -> str:
    return f"02:00:00:00:01:{i:02x}"


def job_yaml(
    script: str = "pass",
    *,
    target: str = "tags: ['gpu:fake']",
    timeouts: str = "overall: {seconds: 20}",
    cont: str | None = None,
) -> str:
    text = f"""version: 1
target:
  {target}
timeouts:
  {timeouts}
console_patterns:
  session_end: {{regex: "It's now safe to turn off your computer"}}
  job_success: {{regex: "Execution is over, pipeline status: 0"}}
  session_reboot: {{regex: "vivian: reboot requested"}}
deployment:
  start:
    kernel:
      url: http://127.0.0.1/kernel
      cmdline: vivian.script={script} SALAD.machine_id={{{{ machine_id }}}}
    initramfs:
      url: http://127.0.0.1/initrd
"""
    if cont is not None:
        text += f"""  continue:
    kernel:
      cmdline: vivian.script={cont}
"""
    return text


SCRIPTS = {
    "pass": ["+ job output 1", "Execution is over, pipeline status: 0", "It's now safe to turn off your computer"],
    "fail": ["+ job output 1", "Execution is over, pipeline status: 1", "It's now safe to turn off your computer"],
    "hang": [],
    "reboot": ["vivian: reboot requested"],
}


class FakeDuts:
    """Plays every machine of the dummy PDU: powered ON with a boot config, it connects to the
    netconsole, announces itself and prints the lines of its ``vivian.script``; OFF closes it."""

    def __init__(self, farm) -> None:
        self.farm = farm
        self.boots: dict[str, list[str]] = {}
        self.typed: dict[str, bytes] = {}
        self._tasks: list[asyncio.Task] = []

    def start(self, macs: list[str]) -> None:
        for port, mac in enumerate(macs):
            self._tasks.append(asyncio.create_task(self._play(mac, str(port))))

    async def _play(self, mac: str, port: str) -> None:
        while True:
            while not (self.farm.power.outlet_state("d1", port) == PortState.ON and self.farm.jobs.boot_config(mac)):
                await asyncio.sleep(0.02)
            config = self.farm.jobs.boot_config(mac)
            script = re.search(r"vivian\.script=(\w+)", config.cmdline).group(1)
            self.boots.setdefault(mac, []).append(script)
            reader, writer = await asyncio.open_connection(*self.farm.netconsole_address)
            writer.write(f"SALAD.machine_id={mac}\r\nCommand line: {config.cmdline}\r\n".encode())
            for line in SCRIPTS[script]:
                writer.write(line.encode() + b"\r\n")
            await writer.drain()
            while self.farm.power.outlet_state("d1", port) == PortState.ON:
                with contextlib.suppress(asyncio.TimeoutError):
                    data = await asyncio.wait_for(reader.read(100), 0.05)
                    if data:
                        self.typed[mac] = self.typed.get(mac, b"") + data
            writer.close()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@pytest.fixture
async def http(farm) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=api_url(farm), timeout=10) as c:
        c.headers["Authorization"] = f"Bearer {farm.token}"
        yield c


@pytest.fixture
async def jobfarm(farm, http) -> AsyncIterator[tuple]:
    """(farm, http, macs, duts): 4 ready machines on dummy PDU d1 outlets 0-3, played by FakeDuts."""
    await farm.power.add_pdu("d1", "dummy", {"ports": 4})
    macs = [mac_of(i) for i in range(4)]
    for i, mac in enumerate(macs):
        r = await http.post(
            "/api/v1/machine/",
            json={"base_name": "fake", "tags": TAGS, "mac_address": mac, "ip_address": f"10.0.0.{i + 10}"},
        )
        assert r.status_code == 200, r.text
        r = await http.patch(
            f"/api/v1/machine/{mac}/", json={"pdu": "d1", "pdu_port_id": str(i), "ready_for_service": True}
        )
        assert r.status_code == 200, r.text
    duts = FakeDuts(farm)
    duts.start(macs)
    try:
        yield farm, http, macs, duts
    finally:
        await duts.stop()


async def wait_job(http: httpx.AsyncClient, job_id: str, done: Callable[[dict], bool] | None = None, timeout=15.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        job = (await http.get(f"/api/v1/job/{job_id}")).json()
        if (done or (lambda j: j["status"] not in ("QUEUED", "RUNNING")))(job):
            return job
        assert loop.time() < deadline, f"job {job_id} still {job['status']}"
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def end_being_stored(farm) -> AsyncIterator[asyncio.Event]:
    """Hold the store's write of the next job end (a row with ``ended_at``) until the block exits: the window
    in which the job's status already says how it ended but its row is not stored yet. Yields the event set
    once a write is held."""
    store, held, release = farm.jobs.store, asyncio.Event(), asyncio.Event()
    upsert = store.upsert

    async def slow_upsert(model, values, *args, **kwargs):
        if values.get("ended_at") is not None and not release.is_set():
            held.set()
            await release.wait()
        return await upsert(model, values, *args, **kwargs)

    store.upsert = slow_upsert
    try:
        yield held
    finally:
        release.set()
        store.upsert = upsert
