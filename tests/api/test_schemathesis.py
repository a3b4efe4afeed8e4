"""Schemathesis over the published OpenAPI: a bounded, seeded run with every check (no 5xx, and the
answers conform to the schema: status codes, content types, bodies, headers, 405s with Allow; the API
takes what the schema allows and refuses what it does not). tests/api/schemathesis.toml lists the few
operations whose bodies need more than a schema to be valid, and why."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.security.conftest_http import LoggedBackend

ST = Path(sys.executable).with_name("st")
CONFIG = Path(__file__).with_name("schemathesis.toml")


@pytest.mark.skipif(not ST.exists() and shutil.which("st") is None, reason="schemathesis is not installed")
def test_the_api_conforms_to_its_openapi(tmp_path):
    # Generated PDUs point at hosts that do not exist: keep each attempt short.
    backend = LoggedBackend(tmp_path / "data", tmp_path / "backend.log", env={"VALVE_CONSOLE_PDU_TIMEOUT": "0.3"})
    backend.start()
    try:
        with backend.http() as http:
            http.post("/api/v1/pdu/", json={"name": "d1", "driver": "dummy", "config": {"ports": 4}})
            http.post(
                "/api/v1/machine/",
                json={"base_name": "b", "mac_address": "02:00:00:00:00:01", "ip_address": "10.0.0.1"},
            )
        proc = subprocess.run(
            [
                str(ST) if ST.exists() else "st",
                "--config-file",
                str(CONFIG),
                "run",
                f"{backend.url}/openapi.json",
                "--checks",
                "all",
                "--max-examples",
                "100",  # with every check: about a minute here, 15 on a loaded 2-core machine
                "--seed",
                "20261125",
                "--phases",
                "examples,coverage,fuzzing",
                "--exclude-path-regex",
                r"/(events|stream)$",  # endless SSE streams
                "--request-timeout",
                "20",
                "-H",
                f"Authorization: Bearer {backend.token}",
                "--no-color",
            ],
            capture_output=True,
            text=True,
            timeout=1500,
        )
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, output[-6000:]
        # every generated case passed every check (warnings, such as operations that mostly answered 404
        # for want of data, are not failures)
        assert re.search(r"(\d+) generated, \1 passed", output), output[-6000:]
        with backend.http() as http:
            assert http.get("/api/v1/health").json()["status"] in ("ok", "degraded")
    finally:
        backend.stop()
