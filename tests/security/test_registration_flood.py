"""Issue 15, reproduction 3: a registration flood froze the backend.

``full_name`` was computed by scanning every machine, for every machine, and the DHCP hosts writer rebuilt
the whole machine list's JSON after every burst of machine events: ~4,000 open registrations made
``GET /machines`` take 61 s and ``/health`` 88 s. Names are now given once and stored, and the hosts file
is rendered from the pins that changed, coalesced.

The real program runs as a process; FLOOD machines register from loopback (the gateway's own tools are not
rate-limited, so this measures the cost per machine, not the limiter) while a thread asks for
``/api/v1/health`` every 50 ms and samples the backend's RSS. Bounds: every health answer within 1 s, the
RSS growth under RSS_GROWTH_BOUND, ``GET /machines`` of the whole farm within LIST_BOUND, and at most two
hosts file writes per second of flood (the debounce is 0.5 s).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
import time
from pathlib import Path

import httpx
import psutil

from tests.e2e.helpers import ROOT, Backend

FLOOD = 2000
CONCURRENCY = 8
HEALTH_BOUND = 1.0  # seconds
LIST_BOUND = 2.0  # seconds for GET /machines of the 2,000 machines (a busy 2-core build machine: ~0.5 s)
RSS_GROWTH_BOUND = 64 << 20  # bytes: 2,000 machines (records, JSON, pins, names); measured ~13 MiB
FLOOD_DEADLINE = 180.0  # seconds: the flood itself (a loop frozen by O(n²) work never gets there)


class QuietBackend(Backend):
    """A Backend whose output goes to files: thousands of log lines must not fill a pipe and block it."""

    def start(self, timeout: float = 15.0) -> "QuietBackend":
        self.log = open(self.data_dir.parent / "backend.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(self.args, cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.data_dir.parent / "backend.log").read_text()
            try:
                if httpx.get(self.url + "/api/v1/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("backend did not come up")

    def stop(self, *args, **kwargs) -> int:
        try:
            return super().stop(*args, **kwargs)
        finally:
            self.log.close()


class Prober(threading.Thread):
    """Asks for /health every 50 ms, samples the backend's RSS and counts the hosts file's rewrites (each
    write replaces the file: a new inode and mtime) until stopped."""

    def __init__(self, url: str, pid: int, hosts_file: Path) -> None:
        super().__init__(daemon=True)
        self.url, self.process, self.hosts_file = url, psutil.Process(pid), hosts_file
        self.versions: set[tuple[int, int]] = set()
        self.latencies: list[float] = []
        self.rss: list[int] = []
        self.failures: list[str] = []
        self.done = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self.done.is_set():
                started = time.monotonic()
                try:
                    status = client.get(self.url + "/api/v1/health").status_code
                    if status != 200:
                        self.failures.append(f"health answered {status}")
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                self.latencies.append(time.monotonic() - started)
                self.rss.append(self.process.memory_info().rss)
                try:
                    st = os.stat(self.hosts_file)
                    self.versions.add((st.st_ino, st.st_mtime_ns))
                except FileNotFoundError:
                    pass
                self.done.wait(0.05)


def mac(n: int) -> str:
    return "02:00:" + ":".join(f"{b:02x}" for b in n.to_bytes(4, "big"))


def ip(n: int) -> str:
    return f"10.{60 + (n >> 16)}.{(n >> 8) & 255}.{n & 255}"


async def flood(url: str, count: int) -> tuple[int, float]:
    """(registrations done, seconds): all of them, or as many as FLOOD_DEADLINE allowed."""
    numbers = iter(range(1, count + 1))
    done = 0
    started = time.monotonic()

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal done
        for n in numbers:
            if time.monotonic() - started > FLOOD_DEADLINE:
                return
            body = {"base_name": f"gfx{n % 3}", "tags": [f"amdgpu:gfxversion:gfx{n % 3}"], "mac_address": mac(n),
                    "ip_address": ip(n), "local_tty_device": "ttyUSB0"}
            r = await client.post("/api/v1/machine/", json=body)
            assert r.status_code == 200, r.text
            done += 1

    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        await asyncio.gather(*(worker(client) for _ in range(CONCURRENCY)))
    return done, time.monotonic() - started


async def test_a_registration_flood_keeps_the_backend_responsive(tmp_path: Path) -> None:
    assert len({ip(n) for n in range(1, FLOOD + 1)}) == FLOOD
    backend = QuietBackend(tmp_path / "data", env={"VALVE_CONSOLE_HOSTS_DEBOUNCE": "0.5"}).start()
    hosts_file = tmp_path / "data" / "dnsmasq" / "hosts.dhcp"
    prober = Prober(backend.url, backend.proc.pid, hosts_file)
    try:
        prober.start()
        await asyncio.sleep(0.5)
        baseline = max(prober.rss)
        done, took = await flood(backend.url, FLOOD)
        await asyncio.sleep(1.0)  # the last coalesced hosts write
        prober.done.set()
        prober.join(60)
        started = time.monotonic()
        machines = httpx.get(backend.url + "/api/v1/machines", timeout=120).json()["machines"]
        list_time = time.monotonic() - started
        writes = len(prober.versions) - 1  # the first one was written at start
        hosts = hosts_file.read_text().splitlines()
        worst = max(prober.latencies)
        growth = max(prober.rss) - baseline
        print(f"\n{done} registrations in {took:.1f} s ({done / took:.0f}/s); /health worst {worst * 1000:.0f} ms "
              f"over {len(prober.latencies)} probes; GET /machines {list_time * 1000:.0f} ms; RSS {baseline >> 20} MiB"
              f" + {growth >> 20} MiB; {writes} hosts file writes seen")
        assert not prober.failures, prober.failures[:5]
        assert worst < HEALTH_BOUND, f"/health took {worst:.2f} s during the flood"
        assert done == FLOOD, f"only {done} registrations in {FLOOD_DEADLINE} s"
        assert growth < RSS_GROWTH_BOUND, f"RSS grew by {growth >> 20} MiB"
        assert len(machines) == FLOOD and list_time < LIST_BOUND, list_time
        # Names are given once, in order per base name, and unique.
        names = sorted(m["full_name"] for m in machines.values())
        assert len(set(names)) == FLOOD
        assert {n for n in names if n.startswith("valve-gfx1-")} == {f"valve-gfx1-{i}" for i in range(1, 668)}
        # The hosts file pins every machine, and was written in coalesced batches, not per registration.
        assert len([line for line in hosts if not line.startswith("#")]) == FLOOD
        assert 1 <= writes <= took / 0.5 + 2, writes
    finally:
        prober.done.set()
        backend.stop()


async def test_the_hosts_file_follows_machine_events_without_reading_the_machine_list(tmp_path: Path) -> None:
    """The hosts writer reads the machine list once (at start), then keeps one pin per machine from each
    event: a burst of 500 new machines is one write, events that change no pin are no write, and only a
    subscription that lost events reads the list again."""
    from valve_console.backend.boot import BootService, parse_dhcp_hosts
    from valve_console.backend.events import EventBus

    bus = EventBus(queue_size=1000)
    reads = 0

    def machines() -> list[dict]:
        nonlocal reads
        reads += 1
        return [{"mac_address": mac(0), "ip_address": ip(0), "full_name": "f-old-1"}]

    service = BootService(bus, machines, tmp_path / "dnsmasq", debounce=0.2)
    await service.start()
    hosts_file = tmp_path / "dnsmasq" / "hosts.dhcp"

    def pinned() -> dict[str, tuple[str, str]]:
        return {h.mac: (h.ip, h.hostname) for h in parse_dhcp_hosts(hosts_file.read_text())}

    def event(n: int, **fields) -> None:
        machine = {"mac_address": mac(n), "ip_address": ip(n), "full_name": f"f-gfx-{n}", "is_retired": False,
                   "last_seen": time.time(), **fields}
        bus.publish("machine", {"action": "updated", "mac": mac(n), "machine": machine})

    async def settled(writes: int) -> None:
        deadline = time.monotonic() + 5
        while service.writes != writes or service._dirty:
            assert time.monotonic() < deadline, (service.writes, writes)
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # longer than the debounce: nothing more comes
        assert service.writes == writes

    try:
        assert (service.writes, reads) == (1, 1) and pinned() == {mac(0): (ip(0), "f-old-1")}
        for n in range(1, 501):
            event(n)
        await settled(2)
        assert len(pinned()) == 501 and pinned()[mac(7)] == (ip(7), "f-gfx-7")
        for n in range(1, 501):
            event(n)  # the same pins (a last_seen, a state): nothing to write
        await settled(2)
        event(7, ip_address="10.99.0.7")
        event(8, is_retired=True)
        bus.publish("machine", {"action": "removed", "mac": mac(9), "machine": None})
        await settled(3)
        hosts = pinned()
        assert hosts[mac(7)] == ("10.99.0.7", "f-gfx-7") and mac(8) not in hosts and mac(9) not in hosts
        assert reads == 1 and service.resyncs == 1
        for n in range(1, 1200):  # more than the subscription holds: it loses events, so it reads the list
            event(n)
        await settled(4)
        assert reads == 2 and service.resyncs == 2
        hosts = pinned()  # the list as read, then the events the subscription still held
        assert hosts[mac(0)] == (ip(0), "f-old-1") and hosts[mac(1199)] == (ip(1199), "f-gfx-1199")
    finally:
        await service.stop()
