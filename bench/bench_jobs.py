"""Backend CPU while 16 jobs run, and the job latency of the executor.

Ours: the real ``--backend-only`` process and a vPDU with 16 simulated DUTs. 16 machines are
registered and ready; 16 jobs whose DUT prints nothing after booting (``vivian.script=hang``) run
at once, and the backend's CPU is measured over a quiet window from /proc/<pid>/stat: the cost of
16 executors waiting on their consoles and timeouts (each wakes at most 10 times a second).
Then 16 short ``pass`` jobs: submit → PASS wall time (power off, on, boot, patterns, teardown).
Peer, same run: the valve-infra-shaped process of bench_idle.py (a thread per DUT polling every
0.1 s, a 1 s select loop, a 5 s registry sync; no I/O: the floor of that design).
Reported: CPU % of one core for both and the ratio; job latency p50/max.

Latest (2026-11-25, 2-core dev machine): 16 running jobs 0.60 % of one core, peer 0.27 % (2.25x);
16 pass jobs at once: p50 1.99 s, max 2.02 s (each includes a 0.5 s console drain). Found on the
way: waking every executor at 10 Hz cost 1.73 %; the boot loop now sleeps until the next timeout
(0.1-1 s) or console bytes, and a cancel wakes it at once.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import Farm, cpu_seconds, peer_idle_cpu, percentile  # noqa: E402

WINDOW = 15.0
DUTS = 16
JOB = """version: 1
target: {{id: '{mac}'}}
timeouts: {{overall: {{minutes: 5}}}}
console_patterns:
  session_end: {{regex: "It's now safe to turn off your computer"}}
  job_success: {{regex: "Execution is over, pipeline status: 0"}}
deployment:
  start:
    kernel: {{url: 'http://127.0.0.1/kernel', cmdline: 'vivian.script={script} SALAD.machine_id={mac}'}}
    initramfs: {{url: 'http://127.0.0.1/initrd'}}
"""


def mac(i: int) -> str:
    return f"52:54:00:11:22:{i:02x}"


def wait_all(farm: Farm, ids: list[str], done, timeout: float = 120) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = {j["id"]: j for j in farm.http.get("/api/v1/jobs").json()["jobs"] if j["id"] in ids}
        if len(jobs) == len(ids) and all(done(j) for j in jobs.values()):
            return jobs
        time.sleep(0.2)
    raise SystemExit("the jobs did not get there in time")


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        farm = Farm(Path(tmp), outlets=DUTS)
        try:
            for i in range(DUTS):
                reg = {"base_name": "virtio", "tags": ["virtio"], "mac_address": mac(i)}
                reg["ip_address"] = f"10.42.0.{10 + i}"

                farm.http.post("/api/v1/machine/", json=reg).raise_for_status()
                patch = {"pdu": "vpdu1", "pdu_port_id": str(i), "ready_for_service": True, "pdu_off_delay": 0}
                farm.http.patch(f"/api/v1/machine/{mac(i)}/", json=patch).raise_for_status()
            hang = [farm.http.post("/api/v1/jobs", json={"job": JOB.format(mac=mac(i), script="hang")}).json()["id"]
                    for i in range(DUTS)]
            wait_all(farm, hang, lambda j: j["status"] == "RUNNING")
            time.sleep(5)  # the 16 boots are over: the DUTs are silent
            c0, t0 = cpu_seconds(farm.backend.pid), time.monotonic()
            time.sleep(WINDOW)
            ours = (cpu_seconds(farm.backend.pid) - c0) / (time.monotonic() - t0) * 100
            for job_id in hang:
                farm.http.delete(f"/api/v1/job/{job_id}")
            wait_all(farm, hang, lambda j: j["status"] == "INCOMPLETE")
            started = time.time()
            passing = [farm.http.post("/api/v1/jobs", json={"job": JOB.format(mac=mac(i), script="pass")}).json()["id"]
                       for i in range(DUTS)]
            jobs = wait_all(farm, passing, lambda j: j["status"] not in ("QUEUED", "RUNNING"))
            bad = [j["status"] for j in jobs.values() if j["status"] != "PASS"]
            if bad:
                raise SystemExit(f"jobs did not pass: {bad}")
            latency = [j["ended_at"] - j["submitted_at"] for j in jobs.values()]
            wall = max(j["ended_at"] for j in jobs.values()) - started
        finally:
            farm.close()
    theirs = peer_idle_cpu(WINDOW)
    print(f"valve-console backend, {DUTS} jobs running (silent DUTs): {ours:.2f} % of one core over {WINDOW:.0f} s")
    print(f"valve-infra-shaped peer (threads + polling), idle: {theirs:.2f} % of one core")
    print(f"ratio ours/peer: {ours / max(theirs, 1e-3):.2f}x")
    print(f"{DUTS} pass jobs at once: submit -> PASS p50 {percentile(latency, 50):.2f} s, "
          f"max {max(latency):.2f} s, all done in {wall:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
