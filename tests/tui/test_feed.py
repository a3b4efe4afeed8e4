"""The console's data layer without Textual: the EventFeed fills its latest-wins buffer from the event
stream, asks for a refetch on ``dropped``, reconnects after a lost backend; FarmModel applies the buffer."""

from __future__ import annotations

import asyncio
import sys

from tests.tui.fake_farm import FakeFarmClient, event, farm_data, outlet_event
from valve_console.console_data import EventFeed, FarmModel


class Recorder:
    def __init__(self) -> None:
        self.flushes = 0
        self.connected = 0
        self.lost: list[str] = []
        self.reports: list[tuple[str, str]] = []
        self.discovery: list[dict] = []

    def feed(self, client: FakeFarmClient) -> EventFeed:
        return EventFeed(client, flush=self.flush, connected=self.on_connected, lost=self.lost.append,
                         report=lambda message, severity: self.reports.append((message, severity)),
                         discovery=self.discovery.append)

    def flush(self) -> None:
        self.flushes += 1

    def on_connected(self) -> None:
        self.connected += 1


async def wait_until(predicate, what: str, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def test_the_feed_buffers_events_and_refetches_on_dropped() -> None:
    data = farm_data()
    mac = next(iter(data["machines"]))
    renamed = {**data["machines"][mac], "full_name": "renamed-dut"}
    client = FakeFarmClient(data, events=[
        {"type": "machine", "seq": 1, "ts": 0.0, "data": {"action": "updated", "mac": mac, "machine": renamed}},
        {"type": "outlet", "seq": 2, "ts": 0.0, "data": outlet_event("pdu-a", "1", "OFF")},
        {"type": "outlet", "seq": 3, "ts": 0.0, "data": outlet_event("pdu-a", "1", "ON")},
    ])
    seen = Recorder()
    feed = seen.feed(client)
    task = asyncio.create_task(feed.run())
    try:
        await wait_until(lambda: seen.connected == 1, "the first fetch")
        assert seen.flushes == 1  # what was buffered before the refetch is flushed first
        changes = feed.take()
        assert changes is not None and changes.snapshot is not None
        assert changes.machines[mac].full_name == "renamed-dut"
        assert changes.outlets[("pdu-a", "1")].state == "ON"  # the latest state wins
        assert feed.take() is None  # a fresh, empty buffer took its place
        model = FarmModel()
        model.apply(changes)
        assert model.loaded and model.machine_name(mac) == "renamed-dut"

        # a dropped event asks for a refetch: a new snapshot comes into the buffer
        assert feed.pending.add_event(event("dropped", {"count": 1}))
        feed.schedule_refetch()
        await wait_until(lambda: feed.pending.snapshot is not None, "the refetch")
        assert seen.flushes == 2 and not seen.lost and not seen.reports
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        feed.close()
        await client.close()


async def test_the_feed_says_the_backend_is_lost_and_reconnects() -> None:
    client = FakeFarmClient(down=True)
    seen = Recorder()
    feed = seen.feed(client)
    task = asyncio.create_task(feed.run())
    try:
        await wait_until(lambda: seen.lost, "the lost backend")
        assert "Connection refused" in seen.lost[0] and seen.connected == 0
        client.down = False
        await wait_until(lambda: seen.connected == 1, "the reconnection", timeout=10)
        assert feed.pending.snapshot is not None
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        feed.close()
        await client.close()


def test_the_data_layer_loads_no_textual() -> None:
    import subprocess

    code = ("import sys, valve_console.console_data; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'textual' "
            "or m.startswith(('valve_console.screens', 'valve_console.widgets', 'valve_console.backend'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
