"""Issue 15, reproduction 5: bodies were read before any auth or lookup.

``BodyLimit`` let 65 MiB through for the share-PUT and job-POST paths and read it all into memory
before the handler looked at the key, the job or the token: 24 concurrent 64 MiB PUTs to a made-up
share took the backend to 1.58 GB RSS. Now those handlers check first and answer at once (the rest
of the body is never held), and accepted large bodies are streamed to a file in the data directory.

Bound stated: 24 concurrent 64 MiB uploads that are refused grow RSS by less than 40 MiB and are all
answered within 5 s after 1 MiB of each was sent; an accepted 40 MiB share file and a 40 MiB v1 job
form (valve-infra's multipart with its share tarball) each grow RSS by less than 40 MiB.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import tarfile

import httpx

from tests.conftest import api_url
from tests.jobs.conftest import http, jobfarm, wait_job  # noqa: F401 - fixtures
from tests.jobs.test_share import share_job, submit_with_share, tarball
from tests.security.conftest_http import peak_rss_mb, reset_peak_rss

DECLARED = 64 << 20
CHUNK = 256 * 1024
BLOCK = bytes(range(256)) * (CHUNK // 256)
RSS_GROWTH_MB = 40
# What a client can have written before it reads an answer that came at once: its send buffer and the
# server's receive buffer on loopback (Linux autotunes them up to tcp_wmem 4 MiB + tcp_rmem 6 MiB). Far
# below the 64 MiB declared: the body was not read before the answer (RSS says it was not held either).
IN_FLIGHT = 12 << 20


async def _upload_until_answered(address: tuple[str, int], head: bytes, declared: int) -> tuple[int, bytes, int]:
    """Send ``head`` then up to ``declared`` body bytes, stopping as soon as the server answers:
    (status, body of the answer, bytes of the body sent)."""
    reader, writer = await asyncio.open_connection(*address)
    answer = asyncio.create_task(reader.read(65536))
    sent = 0
    try:
        writer.write(head)
        while sent < declared and not answer.done():
            writer.write(BLOCK[: min(CHUNK, declared - sent)])
            sent += min(CHUNK, declared - sent)
            await asyncio.wait({answer}, timeout=0)  # let the answer arrive
            await writer.drain()
        data = await asyncio.wait_for(answer, 30)
    finally:
        answer.cancel()
        writer.close()
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0
    return status, data.partition(b"\r\n\r\n")[2], sent


def _put(path: str, declared: int, token: str | None = None, ctype: str = "application/octet-stream") -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (f"{path}\r\nHost: gw\r\nContent-Type: {ctype}\r\nContent-Length: {declared}\r\n{auth}\r\n").encode()


async def test_refused_uploads_are_answered_before_their_body(jobfarm):  # noqa: F811 - the fixture imported above
    farm, http, macs, duts = jobfarm  # noqa: F811
    job = (await submit_with_share(http, share_job("hang"), tarball(("in.txt", "file", b"x")))).json()
    await wait_job(http, job["id"], lambda j: j["status"] == "RUNNING")
    address = tuple(farm.api_address)
    baseline = reset_peak_rss()
    made_up = [
        _upload_until_answered(address, _put(f"PUT /api/v1/job/made-up-{i}/share/madeupkey/x HTTP/1.1", DECLARED),
                               DECLARED)
        for i in range(24)
    ]
    results = await asyncio.wait_for(asyncio.gather(*made_up), 60)
    grown = peak_rss_mb() - baseline
    for status, body, sent in results:
        assert status == 404 and "unknown job" in json.loads(body)["error"], (status, body)
        assert sent <= IN_FLIGHT, f"the answer came after {sent} bytes of the body"
    assert grown < RSS_GROWTH_MB, f"RSS grew by {grown:.0f} MiB"
    # a real job with a wrong key, and a job without the token: refused before the body too
    wrong_key = await _upload_until_answered(
        address, _put(f"PUT /api/v1/job/{job['id']}/share/{'k' * 32}/x HTTP/1.1", DECLARED), DECLARED)
    assert wrong_key[0] == 403 and wrong_key[2] <= IN_FLIGHT, wrong_key[:2]
    no_token = await _upload_until_answered(
        address, _put("POST /api/v1/jobs HTTP/1.1", DECLARED, ctype="multipart/form-data; boundary=b"), DECLARED)
    assert no_token[0] == 401 and no_token[2] <= IN_FLIGHT, no_token[:2]
    assert "token" in json.loads(no_token[1])["error_msg"]
    # over the share's limit (declared): refused without reading
    too_big = await _upload_until_answered(
        address, _put(f"PUT /api/v1/job/{job['id']}/share/k/x HTTP/1.1", (64 << 20) + 1), (64 << 20) + 1)
    assert too_big[0] == 413 and too_big[2] <= IN_FLIGHT, too_big[:2]
    assert (await http.get("/api/v1/health")).status_code == 200
    await http.delete(f"/api/v1/job/{job['id']}")


async def _stream(size: int, digest: "hashlib._Hash"):
    sent = 0
    while sent < size:
        block = BLOCK[: min(CHUNK, size - sent)]
        digest.update(block)
        sent += len(block)
        yield block


async def test_accepted_large_bodies_are_streamed_to_disk(jobfarm):  # noqa: F811 - the fixture imported above
    farm, http, macs, duts = jobfarm  # noqa: F811
    size = 40 << 20
    job = (await submit_with_share(http, share_job("hang"), tarball(("in.txt", "file", b"x")))).json()
    running = await wait_job(http, job["id"], lambda j: j["status"] == "RUNNING")
    key = farm.jobs.shares.known_key(job["id"])
    baseline = reset_peak_rss()
    digest = hashlib.sha256()
    async with httpx.AsyncClient(base_url=api_url(farm), timeout=60) as dut:
        put = await dut.put(f"/api/v1/job/{job['id']}/share/{key}/big.bin", content=_stream(size, digest))
    assert put.status_code == 200 and put.json()["size"] == size, put.text
    grown = peak_rss_mb() - baseline
    stored = farm.settings.data_dir / "jobs" / job["id"] / "share" / "big.bin"
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == digest.hexdigest()
    assert grown < RSS_GROWTH_MB, f"a {size >> 20} MiB share upload grew RSS by {grown:.0f} MiB"
    assert not list(stored.parent.parent.glob(".body-*")), "the spooled body is left behind"
    await http.delete(f"/api/v1/job/{job['id']}")
    await wait_job(http, job["id"])
    assert running["machine"]

    # valve-infra's v1 form with a 40 MiB share tarball, streamed by the client
    baseline = reset_peak_rss()
    digest = hashlib.sha256()
    body = _v1_form(share_job("pass"), size, digest)
    response = await http.post(
        "/api/v1/jobs", content=body, headers={"Content-Type": "multipart/form-data; boundary=XyZ"}, timeout=120
    )
    assert response.status_code == 200, response.text
    assert response.json()["error_msg"] is None
    grown = peak_rss_mb() - baseline
    job_id = response.headers["location"].rsplit("/", 1)[1]
    unpacked = farm.settings.data_dir / "jobs" / job_id / "share" / "data.bin"
    assert hashlib.sha256(unpacked.read_bytes()).hexdigest() == digest.hexdigest()
    assert grown < RSS_GROWTH_MB, f"a {size >> 20} MiB job form grew RSS by {grown:.0f} MiB"
    assert not [p for p in (farm.settings.data_dir / "jobs").iterdir() if p.name.startswith(".")]


async def _v1_form(job_text: str, size: int, digest: "hashlib._Hash"):
    """valve-infra's executorctl form: metadata, job, then the share as an (uncompressed) tar of one file."""
    def part(name: str, ctype: str, filename: str | None = None) -> bytes:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        return f"--XyZ\r\nContent-Disposition: {disposition}\r\nContent-Type: {ctype}\r\n\r\n".encode()

    yield part("metadata", "application/json") + json.dumps({"version": 1}).encode() + b"\r\n"
    yield part("job", "application/x-yaml") + job_text.encode() + b"\r\n"
    yield part("job_bucket_initial_state_tarball_file", "application/octet-stream", "share.tar")
    info = tarfile.TarInfo("data.bin")
    info.size = size
    yield info.tobuf(format=tarfile.GNU_FORMAT)
    async for block in _stream(size, digest):
        yield block
    end = io.BytesIO()
    end.write(b"\0" * (-size % 512) + b"\0" * 1024)
    yield end.getvalue() + b"\r\n--XyZ--\r\n"
