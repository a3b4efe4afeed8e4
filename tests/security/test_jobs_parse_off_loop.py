"""Issue 15, reproduction 9: job templates are rendered and parsed off the event loop.

The backend runs as a real process (tests/e2e/helpers.Backend). A template with nested ``range()`` loops,
a 1 MB YAML flow list and a template that doubles a string until it is 512 MiB used to be rendered and
parsed on the loop (at submission, and again when the job runs): the whole farm stopped answering for
seconds (or minutes, with bigger loops). Now they go to a worker process with a CPU budget (2 s) and a
memory limit (512 MiB): each is refused with a 400 that says why, and ``/api/v1/health`` answers
within 1 s meanwhile.

RSS bounds: the backend process stays under ``BACKEND_RSS_MIB``; a worker under its RLIMIT_DATA
(512 MiB) plus the interpreter (``WORKER_RSS_MIB``).
"""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.helpers import Backend
from tests.security.conftest_offloop import HealthProbe

BACKEND_RSS_MIB = 250
WORKER_RSS_MIB = 640

HEAD = "version: 1\ntarget:\n  tags: ['gpu:ready']\n"
NESTED_LOOPS = HEAD + (  # 9 million iterations: ~5 s of CPU when rendered in-process
    "{% for i in range(3000) %}{% for j in range(3000) %}{% set x = i * j %}{% endfor %}{% endfor %}\n"
)
MACHINE_ONLY_LOOPS = HEAD + (  # cheap while its target is read (no machine yet), heavy for the machine
    "{% if machine_id %}{% for i in range(3000) %}{% for j in range(3000) %}{% set x = i * j %}"
    "{% endfor %}{% endfor %}{% endif %}\n"
)
YAML_FLOW_LIST = HEAD + "x: [" + ",".join(["1"] * 500_000) + "]\n"  # 1 MB, 500,000 nodes: ~12 s to compose
STRING_DOUBLING = HEAD + (  # a 512 MiB string (and its 256 MiB half) built by a namespace
    "{% set ns = namespace(s='a') %}{% for i in range(29) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}\n"
)
NORMAL = HEAD + """console_patterns:
  session_end: {regex: 'done'}
deployment:
  start:
    kernel: {url: 'http://127.0.0.1/kernel', cmdline: 'SALAD.machine_id={{ machine_id }}'}
"""


def submit(backend: Backend, text: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {backend.token}"}
    return httpx.post(backend.url + "/api/v1/jobs", json={"job": text}, headers=headers, timeout=120)


@pytest.fixture
def backend(tmp_path: Path):
    """The backend with one machine ready for service, tagged ``gpu:ready``, on a dummy PDU: a job for it
    is rendered twice (its target first, then the whole job for the machine)."""
    server = Backend(tmp_path / "data").start()
    try:
        with server.http() as http:
            assert http.post("/api/v1/pdu/", json={"name": "d1", "driver": "dummy",
                                                   "config": {"ports": 1}}).status_code == 201
            mac = "02:00:00:00:15:09"
            r = http.post("/api/v1/machine/", json={"base_name": "dut", "tags": ["gpu:ready"],
                                                    "mac_address": mac, "ip_address": "10.0.0.9"})
            assert r.status_code == 200, r.text
            r = http.patch(f"/api/v1/machine/{mac}/", json={"pdu": "d1", "pdu_port_id": "0",
                                                             "ready_for_service": True})
            assert r.status_code == 200, r.text
        yield server
    finally:
        server.stop()


def test_heavy_templates_are_refused_in_words_while_the_farm_answers(backend: Backend) -> None:
    assert backend.proc is not None
    with HealthProbe(backend.url, backend.proc.pid) as probe:
        started = time.monotonic()
        nested = submit(backend, NESTED_LOOPS)
        assert nested.status_code == 400, nested.text
        assert "the job template took more than 2 s of CPU to render (Jinja2)" in nested.json()["error"]

        second = submit(backend, MACHINE_ONLY_LOOPS)
        assert second.status_code == 400, second.text
        assert "the job template took more than 2 s of CPU to render (Jinja2)" in second.json()["error"]

        flow = submit(backend, YAML_FLOW_LIST)
        assert flow.status_code == 400, flow.text
        error = flow.json()["error"]
        assert "took more than 2 s of CPU to parse (YAML)" in error or "more than 100000 YAML nodes" in error, error

        doubling = submit(backend, STRING_DOUBLING)
        assert doubling.status_code == 400, doubling.text
        assert "needed more than 512 MiB of memory to render (Jinja2)" in doubling.json()["error"]
        attack = time.monotonic() - started

        # A normal job is still parsed and queued.
        normal = submit(backend, NORMAL)
        assert normal.status_code == 200 and normal.json()["status"] == "QUEUED", normal.text
    print(f"refusals {attack:.1f} s; health worst {probe.worst:.3f} s over {len(probe.latencies)} requests; "
          f"RSS backend {probe.peak_rss:.0f} MiB, worker {probe.peak_child_rss:.0f} MiB")
    probe.check()
    assert attack < 60, f"the four refusals took {attack:.1f} s"
    assert probe.peak_rss < BACKEND_RSS_MIB, f"backend RSS {probe.peak_rss:.0f} MiB"
    assert probe.peak_child_rss < WORKER_RSS_MIB, f"worker RSS {probe.peak_child_rss:.0f} MiB"


def test_parallel_heavy_submissions_wait_for_the_workers(backend: Backend) -> None:
    """Four heavy templates at once: two workers take them in turn; each is refused, the farm answers."""
    assert backend.proc is not None
    with HealthProbe(backend.url, backend.proc.pid) as probe:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: submit(backend, NESTED_LOOPS), range(4)))
        normal = submit(backend, NORMAL)
    print(f"health worst {probe.worst:.3f} s over {len(probe.latencies)} requests; "
          f"RSS backend {probe.peak_rss:.0f} MiB, worker {probe.peak_child_rss:.0f} MiB")
    probe.check()
    for answer in answers:
        assert answer.status_code == 400 and "more than 2 s of CPU" in answer.json()["error"], answer.text
    assert normal.status_code == 200, normal.text
    assert probe.peak_rss < BACKEND_RSS_MIB, f"backend RSS {probe.peak_rss:.0f} MiB"
    workers = [p for p in Path("/proc").glob("[0-9]*") if _parent(p) == backend.proc.pid]
    assert len(workers) <= 2, f"{len(workers)} parse workers (at most 2)"


def _parent(proc: Path) -> int | None:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None
