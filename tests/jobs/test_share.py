"""The job share (share.py): safe tar extraction, the share store, and its API (DUT GET/PUT with the
per-job key, the client's tarball upload with the job and download at the end)."""

from __future__ import annotations

import asyncio
import io
import json
import re
import tarfile
from pathlib import Path

import httpx
import pytest

from tests.jobs.conftest import end_being_stored, job_yaml, wait_job
from valve_console.backend.share import ShareError, ShareStore, pack_dir, safe_extract


def tarball(*members: tuple[str, str, bytes | str], gz: bool = True) -> bytes:
    """(name, kind, data): kind "file" (data: bytes), "dir", "sym" (data: link target) or "hard"."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if gz else "w") as tar:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                continue
            if kind == "dir":
                info.type = tarfile.DIRTYPE
            elif kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, str(data)
            elif kind == "hard":
                info.type, info.linkname = tarfile.LNKTYPE, str(data)
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
            tar.addfile(info)
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------ extraction


def test_safe_extract_unpacks_files_dirs_and_inner_links(tmp_path):
    dest = tmp_path / "share"
    names = safe_extract(
        tarball(
            ("./input.txt", "file", b"hello\n"),
            ("sub", "dir", b""),
            ("sub/deep.bin", "file", b"\x00\x01"),
            ("sub/link", "sym", "../input.txt"),
        ),
        dest,
        max_bytes=1000,
    )
    assert sorted(names) == ["input.txt", "sub", "sub/deep.bin", "sub/link"]
    assert (dest / "input.txt").read_bytes() == b"hello\n"
    assert (dest / "sub" / "deep.bin").read_bytes() == b"\x00\x01"
    assert (dest / "sub" / "link").is_symlink() and (dest / "sub" / "link").read_bytes() == b"hello\n"


@pytest.mark.parametrize(
    "members, words",
    [
        ([("../escape.txt", "file", b"x")], "'..' is not allowed"),
        ([("a/../../escape.txt", "file", b"x")], "'..' is not allowed"),
        ([("/etc/escape.txt", "file", b"x")], "absolute paths are not allowed"),
        ([("link", "sym", "/etc/passwd")], "symlink to an absolute path"),
        ([("sub/link", "sym", "../../outside")], "points outside the share"),
        ([("link", "sym", ".."), ("link/escape.txt", "file", b"x")], "points outside the share"),
        ([("hard", "hard", "/etc/passwd")], "hard links are not supported"),
        ([("fifo", "fifo", b"")], "only files, directories and symlinks"),
        ([("big", "file", b"x" * 2000)], "larger than 1000 bytes"),
        ([("a", "file", b"x" * 600), ("b", "file", b"y" * 600)], "larger than 1000 bytes"),
    ],
)
def test_safe_extract_refuses_unsafe_or_too_big_archives_and_writes_nothing(tmp_path, members, words):
    dest = tmp_path / "share"
    (tmp_path / "outside").mkdir()
    with pytest.raises(ShareError, match=re.escape(words)):
        safe_extract(tarball(("first.txt", "file", b"ok"), *members), dest, max_bytes=1000)
    assert list(dest.iterdir()) == []  # nothing half-extracted
    assert list((tmp_path / "outside").iterdir()) == []
    assert not (tmp_path / "escape.txt").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".unpack-")] == []


def test_safe_extract_refuses_too_many_members_and_garbage(tmp_path):
    many = tarball(*[(f"f{i}", "file", b"") for i in range(20)], gz=False)
    with pytest.raises(ShareError, match="more than 10 files"):
        safe_extract(many, tmp_path / "a", max_bytes=1000, max_members=10)
    with pytest.raises(ShareError, match="not a readable tar"):
        safe_extract(b"this is not a tarball at all" * 10, tmp_path / "b", max_bytes=1000)


def test_safe_extract_does_not_write_through_a_link_already_in_the_destination(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "share"
    dest.mkdir()
    (dest / "results").symlink_to(outside)
    safe_extract(tarball(("results", "dir", b""), ("results/r.txt", "file", b"data")), dest, max_bytes=1000)
    assert list(outside.iterdir()) == []  # the link was replaced by a real directory
    assert (dest / "results" / "r.txt").read_bytes() == b"data" and not (dest / "results").is_symlink()


def test_pack_dir_round_trips_and_keeps_existing_files(tmp_path):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "a.txt").write_text("A")
    (src / "d" / "b.txt").write_text("B")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "a.txt").write_text("old")
    (dest / "mine.txt").write_text("kept")
    safe_extract(pack_dir(src), dest, max_bytes=100)
    assert (dest / "a.txt").read_text() == "A" and (dest / "d" / "b.txt").read_text() == "B"
    assert (dest / "mine.txt").read_text() == "kept"


# ------------------------------------------------------------------------------------------ the store


def test_store_write_read_limits_and_eviction(tmp_path):
    store = ShareStore(tmp_path / "jobs", max_bytes=100, max_total_bytes=150)
    for job_id in ("old", "new"):
        store.adopt(store.stage(f"key-{job_id}", None), job_id, f"key-{job_id}")
    assert store.check_key("new", "key-new") and not store.check_key("new", "key-old")
    assert (tmp_path / "jobs" / "new" / "key").stat().st_mode & 0o077 == 0
    assert store.write("old", "a/b.txt", b"x" * 90) == 90
    assert store.read_path("old", "a/b.txt").read_bytes() == b"x" * 90
    with pytest.raises(ShareError, match="limit of 100 bytes") as info:
        store.write("new", "big", b"y" * 101)
    assert info.value.status == 413
    with pytest.raises(ShareError, match="full") as info:  # 90 + 80 > 150 and nothing may go
        store.write("new", "r.txt", b"y" * 80)
    assert info.value.status == 507
    store.write("new", "r.txt", b"y" * 80, evictable=["old", "new"])  # the finished old job's share goes
    assert not store.exists("old") and store.read_path("new", "r.txt").stat().st_size == 80
    for bad, words in (("../x", "'..'"), ("/etc/passwd", "absolute"), ("", "a file path is needed")):
        with pytest.raises(ShareError, match=re.escape(words)):
            store.write("new", bad, b"z")
    (store.share_dir("new") / "out").symlink_to(tmp_path)
    with pytest.raises(ShareError, match="leads out of the share"):
        store.write("new", "out/x", b"z")
    with pytest.raises(ShareError, match="leads out of the share"):
        store.read_path("new", "out/jobs/new/key")
    assert store.prune(keep=[]) == ["new"] and store.job_ids() == []


# ------------------------------------------------------------------------------------------ the API


def share_job(script: str) -> str:
    """A fake-DUT job whose command line carries the share variables (the test reads them back)."""
    return job_yaml(script).replace(
        "SALAD.machine_id=", "share={{ job_share_url }} bucket={{ job_bucket }} SALAD.machine_id="
    )


async def submit_with_share(http: httpx.AsyncClient, text: str, share: bytes) -> httpx.Response:
    files = {
        "metadata": (None, json.dumps({"version": 1}).encode(), "application/json"),
        "job": (None, text.encode(), "application/x-yaml"),
        "job_bucket_initial_state_tarball_file": ("share.tgz", share, "application/octet-stream"),
    }
    return await http.post("/api/v1/jobs", files=files, headers={"X-Valve-Console-Client": "1"})


async def test_dut_reads_and_writes_the_share_with_its_key_only(jobfarm):
    farm, http, macs, duts = jobfarm
    r = await submit_with_share(http, share_job("hang"), tarball(("input.txt", "file", b"question\n")))
    assert r.status_code == 200, r.text
    job_id = r.json()["id"]
    job = await wait_job(http, job_id, lambda j: j["status"] == "RUNNING")
    config = await boot_config(farm, job["machine"])
    url = re.search(r"share=(\S+)", config.cmdline).group(1)
    assert re.search(r"bucket=job-[0-9a-f-]+-" + re.escape(job_id.lower()), config.cmdline)
    base = f"/api/v1/job/{job_id}/share/"
    assert url.startswith(f"http://{farm.api_address[0]}:{farm.api_address[1]}{base}")
    key = url.rsplit("/", 1)[1]
    async with httpx.AsyncClient(timeout=10) as dut:  # no operator token: the key is the credential
        got = await dut.get(f"{url}/input.txt")
        assert got.status_code == 200 and got.content == b"question\n"
        put = await dut.put(f"{url}/out/results.txt", content=b"answer\n")
        assert put.status_code == 200 and put.json() == {"path": "out/results.txt", "size": 7}
        listing = (await dut.get(f"{url}/")).json()["files"]
        assert {f["path"] for f in listing} == {"input.txt", "out/results.txt"}
        for method, kwargs in (("GET", {}), ("PUT", {"content": b"evil"})):
            wrong = await dut.request(method, f"{api_base(farm)}{base}{'x' * len(key)}/input.txt", **kwargs)
            assert wrong.status_code == 403 and "wrong key" in wrong.json()["error"]
        evil = await dut.put(f"{url}/..%2F..%2Fkey", content=b"evil")
        assert evil.status_code in (400, 403, 404) and "error" in evil.json()
        missing = await dut.get(f"{url}/nope.txt")
        assert missing.status_code == 404 and "no file" in missing.json()["error"]
        # another job's key does not open this share
        other = await http.post("/api/v1/jobs", json={"job": share_job("hang")})
        other_job = await wait_job(http, other.json()["id"], lambda j: j["status"] == "RUNNING")
        other_config = await boot_config(farm, other_job["machine"])
        other_key = re.search(r"share=(\S+)", other_config.cmdline).group(1).rsplit("/", 1)[1]
        assert (await dut.get(f"{api_base(farm)}{base}{other_key}/input.txt")).status_code == 403
    # not given back while running, nor after a cancel (valve-infra shares only a completed job)
    early = await http.get(f"/api/v1/job/{job_id}/share")
    assert early.status_code == 409 and "given back when it ends" in early.json()["error"]
    assert (await http.delete(f"/api/v1/job/{job_id}")).status_code == 200
    await http.delete(f"/api/v1/job/{other.json()['id']}")
    await wait_job(http, job_id)
    after = await http.get(f"/api/v1/job/{job_id}/share")
    assert after.status_code == 409 and "cancelled" in after.json()["error"]
    async with httpx.AsyncClient(timeout=10) as dut:
        closed = await dut.get(f"{url}/input.txt")
        assert closed.status_code == 409 and "only while it runs" in closed.json()["error"]
    # the share still exists on disk until the job leaves the history
    assert (farm.settings.data_dir / "jobs" / job_id / "share" / "out" / "results.txt").read_bytes() == b"answer\n"


async def boot_config(farm, mac: str):
    for _ in range(500):
        config = farm.jobs.boot_config(mac)
        if config is not None:
            return config
        await asyncio.sleep(0.01)
    raise AssertionError(f"no boot config for {mac}")


def api_base(farm) -> str:
    return "http://{}:{}".format(*farm.api_address)


async def test_a_job_whose_end_is_being_stored_gives_its_share_back(jobfarm):
    """Once the status says PASS the share is given back, also while the job's row is being stored (CI met
    a 409 'its share is given back when it ends' in that window)."""
    farm, http, macs, duts = jobfarm
    async with end_being_stored(farm) as held:
        r = await submit_with_share(http, share_job("pass"), tarball(("input.txt", "file", b"in")))
        assert r.status_code == 200, r.text
        await asyncio.wait_for(held.wait(), 30)
        job_id = r.json()["id"]
        assert (await http.get(f"/api/v1/job/{job_id}")).json()["status"] == "PASS"
        back = await http.get(f"/api/v1/job/{job_id}/share")
        assert back.status_code == 200, back.text


async def test_completed_job_gives_its_share_back_and_bad_uploads_are_refused(jobfarm, tmp_path):
    farm, http, macs, duts = jobfarm
    r = await submit_with_share(http, share_job("pass"), tarball(("input.txt", "file", b"in")))
    assert r.status_code == 200, r.text
    job = await wait_job(http, r.json()["id"])
    assert job["status"] == "PASS"
    back = await http.get(f"/api/v1/job/{job['id']}/share")
    assert back.status_code == 200 and back.headers["content-type"] == "application/gzip"
    out = tmp_path / "back"
    assert safe_extract(back.content, out, max_bytes=100) == ["input.txt"]
    # no token, no tarball
    async with httpx.AsyncClient(base_url=api_base(farm)) as anonymous:
        assert (await anonymous.get(f"/api/v1/job/{job['id']}/share")).status_code == 401
    # an unsafe upload is refused in words and nothing is queued
    before = len((await http.get("/api/v1/jobs")).json()["jobs"])
    bad = await submit_with_share(http, share_job("pass"), tarball(("../../etc/cron.d/x", "file", b"x")))
    assert bad.status_code == 400 and "'..' is not allowed" in bad.json()["error"]
    garbage = await submit_with_share(http, share_job("pass"), b"not a tarball" * 10)
    assert garbage.status_code == 400 and "not a readable tar" in garbage.json()["error"]
    assert len((await http.get("/api/v1/jobs")).json()["jobs"]) == before
    assert [p.name for p in (farm.settings.data_dir / "jobs").iterdir() if p.name.startswith(".")] == []


async def test_share_limits_and_history_trim(tmp_path):
    from tests.conftest import make_settings
    from valve_console.backend.jobs import executor as executor_module
    from valve_console.backend.farm import Farm

    farm = Farm(make_settings(tmp_path / "data", job_share_max_bytes=1000))
    await farm.start()
    try:
        async with httpx.AsyncClient(base_url=api_base(farm), headers={"Authorization": f"Bearer {farm.token}"}) as c:
            await farm.power.add_pdu("d1", "dummy", {"ports": 1})
            mac = "02:00:00:00:02:01"
            reg = {"base_name": "fake", "tags": ["gpu:fake"], "mac_address": mac, "ip_address": "10.0.0.9"}
            assert (await c.post("/api/v1/machine/", json=reg)).status_code == 200
            patch = {"pdu": "d1", "pdu_port_id": "0", "ready_for_service": True}
            assert (await c.patch(f"/api/v1/machine/{mac}/", json=patch)).status_code == 200
            big = await submit_with_share(c, share_job("hang"), tarball(("big.bin", "file", b"x" * 2000)))
            assert big.status_code == 413 and "larger than 1000 bytes" in big.json()["error"]
            ok = await submit_with_share(c, share_job("hang"), tarball(("a.txt", "file", b"a")))
            job_id = ok.json()["id"]
            await c.delete(f"/api/v1/job/{job_id}")
            await wait_job(c, job_id)
            share = farm.settings.data_dir / "jobs" / job_id
            assert share.is_dir()
            old = executor_module.HISTORY
            executor_module.HISTORY = 0  # every finished job leaves the history at the next submission
            try:
                nxt = await c.post("/api/v1/jobs", json={"job": share_job("hang")})
                assert nxt.status_code == 200
                for _ in range(100):
                    if not share.exists():
                        break
                    await asyncio.sleep(0.02)
                assert not share.exists()
                await c.delete(f"/api/v1/job/{nxt.json()['id']}")
            finally:
                executor_module.HISTORY = old
    finally:
        await farm.stop()


def test_share_tar_of_a_missing_dir_is_empty(tmp_path):
    assert tarfile.open(fileobj=io.BytesIO(pack_dir(Path(tmp_path / "none")))).getnames() == []


def test_vivian_reads_the_b2c_container_of_a_command_line():
    from vivian.dut import b2c_container, boot_hooks

    line = (
        'b2c.container="-ti docker://reg:8002/mesa:1 ./install/deqp-runner.sh --resume" b2c.pipefail '
        "vivian.share=http://h/api/v1/job/j/share/k vivian.share_put=a.txt:all_green"
    )
    assert b2c_container(line) == "-ti docker://reg:8002/mesa:1 ./install/deqp-runner.sh --resume"
    assert b2c_container("console=ttyS1") is None and b2c_container('b2c.container="unbalanced') is None
    hooks = boot_hooks(line)
    assert hooks["share"] == "http://h/api/v1/job/j/share/k" and hooks["share_put"] == "a.txt:all_green"
