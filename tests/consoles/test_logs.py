"""Per-machine storage: the timestamped ring, the rotated log, and a job's slice across rotations."""

from __future__ import annotations

import time

from tests.consoles.conftest import device, device_open, wait_for
from valve_console.backend.consoles import Console, RotatingLog

MAC = "52:54:00:11:22:0d"


def numbered(first: int, count: int) -> bytes:
    return b"".join(b"line %06d\n" % i for i in range(first, first + count))  # 12 bytes a line


def test_rotation_by_size_and_count(tmp_path):
    log = RotatingLog(tmp_path / "m.log", max_bytes=1000, backups=2)
    for i in range(50):
        log.write(b"%099d\n" % i)  # 100 bytes each, 5000 in all
    log.close()
    files = sorted(p.name for p in tmp_path.glob("m.log*"))
    assert files == ["m.log", "m.log.1", "m.log.2"]  # the count is bounded
    assert all(p.stat().st_size <= 1000 for p in tmp_path.glob("m.log*"))  # and each file's size
    segments = log.segments()
    assert [s[1] for s in segments] == [2000, 3000, 4000]  # each file knows where it starts in the stream
    assert log.end == 5000
    assert (tmp_path / "m.log.2").read_bytes().startswith(b"%099d\n" % 20)


def test_a_jobs_slice_across_rotations_and_restarts(tmp_path):
    log = RotatingLog(tmp_path / "m.log", max_bytes=1200, backups=2)
    console = Console(MAC, ring_bytes=600, logfile=log)
    console.feed(numbered(0, 150))
    start = console.mark()  # a job starts
    assert start == 1800
    job = numbered(150, 200)  # 2400 bytes: two rotations, far more than the ring holds
    for i in range(0, len(job), 100):
        console.feed(job[i : i + 100])
    end = console.mark()
    console.feed(numbered(350, 10))
    assert end - start == len(job)
    assert len(console.contents()) <= 600  # the ring holds only the tail...
    assert console.slice(start, end) == job  # ...the rest comes from the rotated files
    assert console.slice(end - 100, end) == job[-100:]  # a range wholly in the ring
    assert console.slice(start, start + 12) == b"line 000150\n"  # wholly in an old file

    # Older than every file: the answer starts where the logs do, and says so.
    reader = console.open_slice(0, end)
    data = reader.read()
    assert reader.start > 0 and data == (numbered(0, 400))[reader.start : end]

    # Timestamps are kept with the ring's chunks.
    stamps = [ts for ts, _ in console.ring_chunks()]
    assert stamps == sorted(stamps) and time.time() - 60 < stamps[0] <= time.time()

    # A restart: offsets carry on from the logs, and the job's bytes are still there.
    log.close()
    again = Console(MAC, ring_bytes=600, logfile=RotatingLog(tmp_path / "m.log", max_bytes=1200, backups=2))
    assert again.mark() == end + 120
    assert again.slice(start, end) == job
    again.feed(b"after restart\n")
    assert again.slice(end + 120, again.mark()) == b"after restart\n"
    again.log.close()


async def test_log_slice_through_the_api(serial_farm, ptys):
    serial_farm.overrides.update(console_ring_bytes=2048, console_log_max_bytes=4096, console_log_backups=4)
    pty = ptys()
    await serial_farm.start([device(pty.path, serial="LOG1")])
    await device_open(serial_farm.hub, "LOG1-if00")
    await pty.write(f"SALAD.machine_id={MAC}\r\n".encode())
    await wait_for(lambda: MAC in serial_farm.hub.consoles and serial_farm.hub.consoles[MAC].stream, what="bound")
    console = serial_farm.hub.consoles[MAC]
    await wait_for(lambda: console.total > 0)
    start = console.mark()
    job = numbered(0, 1000)  # 12000 bytes: across rotations
    await pty.write(job)
    await wait_for(lambda: console.mark() >= start + len(job), what="all bytes in")
    end = start + len(job)
    http = serial_farm.http
    r = await http.get(f"/api/v1/console/{MAC}/log", params={"start": start, "end": end, "raw": "true"})
    assert r.status_code == 200 and r.content == job
    assert r.headers["x-console-start"] == str(start) and r.headers["x-console-end"] == str(end)
    assert len(list(console.log.path.parent.glob(f"{MAC}.log*"))) > 1  # it did rotate
    r = await http.get(f"/api/v1/console/{MAC}/log", params={"start": end - 12})
    assert r.text == "line 000999\n"
    r = await http.get(f"/api/v1/console/{MAC}/log", params={"start": 10, "end": 5})
    assert r.status_code == 400 and "after end" in r.json()["error"]
    r = await http.get(f"/api/v1/console/{MAC}/log", params={"start": -1})
    assert r.status_code == 400
    r = await http.get("/api/v1/console/02:00:00:00:00:77/log", params={"start": 0})
    assert r.status_code == 404
