"""valve-infra's v1 job protocol, spoken by a client of our own (tests/compat/v1client.py) as a process.

The farm is real (API on loopback, dummy PDU, fake DUTs on the netconsole; tests/jobs/conftest.py); the
client submits valve-infra's multipart form with a callback port and reads the gateway's frames.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import struct
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import api_url, eventually
from tests.jobs.conftest import job_yaml, wait_job
from valve_console.drivers.pdu.base import PortState

CLIENT = [sys.executable, str(Path(__file__).with_name("v1client.py"))]


async def run_client(farm, tmp_path: Path, job: str, *args: str, timeout: float = 60.0) -> tuple[int, str, str]:
    path = tmp_path / f"job-{len(list(tmp_path.glob('job-*')))}.yml"
    path.write_text(job)
    proc = await asyncio.create_subprocess_exec(
        *CLIENT, api_url(farm), str(path), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


async def start_client(farm, tmp_path: Path, job: str, *args: str) -> asyncio.subprocess.Process:
    path = tmp_path / f"job-{len(list(tmp_path.glob('job-*')))}.yml"
    path.write_text(job)
    return await asyncio.create_subprocess_exec(
        *CLIENT, api_url(farm), str(path), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )


async def stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.kill()
    await proc.communicate()


async def the_job(http: httpx.AsyncClient, check) -> dict:
    """The newest job that satisfies ``check``."""

    async def find():
        jobs = (await http.get("/api/v1/jobs")).json()["jobs"]
        return next((j for j in jobs if check(j)), None)

    return await eventually(find, "the job", timeout=20)


async def test_pass_and_fail_exit_with_the_job_status(jobfarm, tmp_path):
    farm, http, macs, duts = jobfarm
    code, out, err = await run_client(farm, tmp_path, job_yaml("pass"), "-t", "gpu:fake")
    assert code == 0, err
    assert "+ job output 1" in out and "Execution is over, pipeline status: 0" in out
    # every control line is valve-infra's "+<seconds>s: <text>\n"
    lines = [line for line in err.splitlines() if line.startswith("+")]
    assert lines and all(line.split(": ", 1)[0][1:-1].replace(".", "").isdigit() for line in lines), err
    assert any("Matched the following patterns" in line for line in lines)
    assert "v1client: session_end {'status': 'PASS'}" in err
    code, out, err = await run_client(farm, tmp_path, job_yaml("fail"), "-t", "gpu:fake")
    assert code == 3, err


async def test_a_timeout_is_retried_then_the_job_passes(jobfarm, tmp_path):
    farm, http, macs, duts = jobfarm
    job = job_yaml("hang", target=f"id: '{macs[1]}'", timeouts="console_activity: {seconds: 1, retries: 1}",
                   cont="pass")
    code, out, err = await run_client(farm, tmp_path, job)
    assert code == 0, err
    assert "Hit the timeout console_activity --> Try again!" in err
    assert duts.boots[macs[1]] == ["hang", "pass"]
    job = job_yaml("hang", target=f"id: '{macs[1]}'", timeouts="overall: {seconds: 2}")
    code, out, err = await run_client(farm, tmp_path, job)
    assert code == 4, err  # INCOMPLETE


async def test_a_queued_job_keeps_its_callback_and_hears_its_position(jobfarm, tmp_path):
    farm, http, macs, duts = jobfarm
    first = (await http.post("/api/v1/jobs", json={"job": job_yaml("hang", target=f"id: '{macs[0]}'")})).json()
    await wait_job(http, first["id"], lambda j: j["status"] == "RUNNING")
    client = await start_client(farm, tmp_path, job_yaml("pass"), "-i", macs[0], "--tags-null")
    queued = await the_job(http, lambda j: j["status"] == "QUEUED" and j["machine"] == macs[0])
    await asyncio.sleep(6)  # longer than the client's 5 s accept window: the gateway connected at once
    assert client.returncode is None
    await http.delete(f"/api/v1/job/{first['id']}")
    out, err = await asyncio.wait_for(client.communicate(), 60)
    assert client.returncode == 0, err.decode()
    text = err.decode()
    assert f"({macs[0]}), 1 job(s) ahead" in text and f"The job is next on {macs[0]}" in text
    assert "v1client: connected" in text and "Execution is over, pipeline status: 0" in out.decode()
    assert (await wait_job(http, queued["id"]))["status"] == "PASS"


async def test_a_client_killed_mid_job_cancels_it_and_the_dut_goes_off(jobfarm, tmp_path):
    farm, http, macs, duts = jobfarm
    client = await start_client(farm, tmp_path, job_yaml("hang", target=f"id: '{macs[2]}'"), "--type", "ls\r")
    job = await the_job(http, lambda j: j["status"] == "RUNNING" and j["machine"] == macs[2])
    await eventually(lambda: farm.power.outlet_state("d1", "2") == PortState.ON, "the DUT on")
    await eventually(lambda: duts.typed.get(macs[2], b"").endswith(b"ls\r"), "the client's keystrokes on the DUT")
    client.send_signal(signal.SIGKILL)
    await client.wait()
    ended = await wait_job(http, job["id"])
    assert ended["status"] == "INCOMPLETE" and ended["state"] == "cancelled"
    assert "the client went away" in ended["result"]
    assert farm.power.outlet_state("d1", "2") == PortState.OFF


async def test_a_repeated_job_id_is_made_unique(jobfarm, tmp_path):
    farm, http, macs, duts = jobfarm
    for _ in range(2):
        code, out, err = await run_client(farm, tmp_path, job_yaml("pass"), "-j", "deqp [gfx9] 1/4", "-i", macs[3])
        assert code == 0, err
    ids = [j["id"] for j in (await http.get("/api/v1/jobs")).json()["jobs"] if j["id"].startswith("deqp-")]
    assert len(ids) == 2 and "deqp-gfx9-1-4" in ids and any(i.startswith("deqp-gfx9-1-4-") for i in ids)


@pytest.mark.parametrize(
    ("flag", "words"),
    [
        ("--garbage", "not UTF-8 JSON"),
        ("--oversized", "a frame of 2147483647 bytes"),
        ("--bad-base85", "bad base85"),
    ],
)
async def test_bad_frames_end_that_job_alone(jobfarm, tmp_path, flag, words):
    farm, http, macs, duts = jobfarm
    other = (await http.post("/api/v1/jobs", json={"job": job_yaml("hang", target=f"id: '{macs[1]}'")})).json()
    await wait_job(http, other["id"], lambda j: j["status"] == "RUNNING")
    client = await start_client(farm, tmp_path, job_yaml("hang", target=f"id: '{macs[0]}'"), flag)
    job = await the_job(http, lambda j: j["machine"] == macs[0])
    ended = await wait_job(http, job["id"], timeout=20)
    assert ended["status"] == "INCOMPLETE" and words in ended["result"], ended
    assert "broke valve-infra's protocol" in ended["result"]
    await stop(client)
    assert (await http.get(f"/api/v1/job/{other['id']}")).json()["status"] == "RUNNING"  # the other job goes on
    await http.delete(f"/api/v1/job/{other['id']}")


async def test_a_callback_that_refuses_fails_the_job_in_words(jobfarm, tmp_path):
    farm, http, macs, duts = jobfarm
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # nobody listens there once closed
    client = await start_client(farm, tmp_path, job_yaml("pass"), "-i", macs[3], "--callback-port", str(closed),
                                "--no-accept")
    job = await the_job(http, lambda j: j["machine"] == macs[3])
    ended = await wait_job(http, job["id"])
    assert ended["status"] == "SETUP_FAIL"
    assert f"cannot connect to the client's callback 127.0.0.1:{closed}" in ended["result"]
    await stop(client)


async def test_multipart_forms_that_lie_are_refused_and_lose_nothing(jobfarm, tmp_path):
    farm, http, macs, duts = jobfarm
    before = (await http.get("/api/v1/jobs")).json()["jobs"]
    boundary = "b0undary"
    meta = json.dumps({"version": 1, "callback": {"port": 9}}).encode()

    def part(name: str, data: bytes, ctype: str, extra: str = "") -> bytes:
        return (f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}"\r\n'
                f"Content-Type: {ctype}\r\n{extra}\r\n").encode() + data + b"\r\n"

    bodies = {
        # a part that announces 1 MB but carries a few bytes, and a form that never closes
        "truncated": part("metadata", meta, "application/json", "Content-Length: 1000000\r\n")
        + part("job", job_yaml().encode(), "application/x-yaml")[:-20],
        # the request's own length lies (more than it sends): the server must not wait for ever
        "no end": part("metadata", meta, "application/json"),
        "wrong type": part("metadata", meta, "text/plain") + part("job", job_yaml().encode(), "application/x-yaml")
        + f"--{boundary}--\r\n".encode(),
    }
    for name, body in bodies.items():
        r = await http.post("/api/v1/jobs", content=body,
                            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        assert r.status_code in (400, 413), (name, r.status_code, r.text)
        assert set(r.json()) == {"version", "error_msg"} and r.json()["error_msg"], (name, r.text)
    # A body shorter than its Content-Length: the connection is given up on, the server is fine.
    host, port = farm.api_address
    reader, writer = await asyncio.open_connection(host, port)
    head = (f"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {farm.token}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: 100000\r\n\r\n")
    writer.write(head.encode() + bodies["no end"])
    await writer.drain()
    writer.close()
    assert (await http.get("/api/v1/health")).status_code == 200
    assert (await http.get("/api/v1/jobs")).json()["jobs"] == before


async def test_v0_json_submission_gets_raw_bytes_and_the_end_line(jobfarm):
    farm, http, macs, duts = jobfarm
    server = await asyncio.start_server(lambda r, w: received.put_nowait((r, w)), "127.0.0.1", 0)
    received: asyncio.Queue = asyncio.Queue()
    port = server.sockets[0].getsockname()[1]
    async with httpx.AsyncClient(base_url=api_url(farm), headers={"Authorization": f"Bearer {farm.token}"}) as c:
        r = await c.post("/api/v1/jobs", json={"metadata": {"callback_port": port},
                                               "job": job_yaml("pass", target=f"id: '{macs[2]}'")})
    assert r.status_code == 200 and r.json() == {"reason": None}
    reader, writer = await asyncio.wait_for(received.get(), 5)
    data = await asyncio.wait_for(reader.read(), 30)  # the gateway half-closes after the end line
    writer.close()
    server.close()
    assert b"+ job output 1" in data and data.rstrip().endswith(b"<-- End of the session: PASS -->")


def test_frame_codec_round_trip():
    from valve_console.backend.callback import ctrl_frame, frame

    raw = ctrl_frame("+1.000s: hello")
    (length,) = struct.unpack("!I", raw[:4])
    msg = json.loads(raw[4:])
    assert length == len(raw) - 4 and msg["payload"] == {"msg": "+1.000s: hello\n", "severity": 1}
    from datetime import datetime

    datetime.fromisoformat(msg["date"])  # valve-infra's client parses it so
    assert json.loads(frame("session_end", {"status": "PASS"})[4:])["msg_type"] == "session_end"


async def test_a_reader_that_falls_behind_is_let_go_not_buffered_for_ever():
    """A job's reader (callback relay, SSE) holds at most its byte budget; past it, get() says so."""
    from valve_console.backend.jobs.executor import JobListener, ListenerOverflow

    listener = JobListener(max_bytes=10_000)
    for _ in range(20):
        listener.put(("job_io", {"data": "x" * 1000}))
    assert listener.overflowed and listener.bytes == 0  # what it held is dropped at once
    with pytest.raises(ListenerOverflow, match="more than 10000 bytes behind"):
        await listener.get()
    ok = JobListener(max_bytes=10_000)
    ok.put(("ctrl", {"msg": "+0.001s: hello", "severity": 1}))
    assert await ok.get() == ("ctrl", {"msg": "+0.001s: hello", "severity": 1}) and ok.bytes == 0
