"""Schemathesis over the published OpenAPI: a bounded, seeded run that must find no 5xx."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.helpers import Backend

ST = Path(sys.executable).with_name("st")


@pytest.mark.skipif(not ST.exists() and shutil.which("st") is None, reason="schemathesis is not installed")
def test_no_server_errors_over_the_openapi(tmp_path):
    # Generated PDUs point at hosts that do not exist: keep each attempt short.
    backend = Backend(tmp_path / "data", env={"VALVE_CONSOLE_PDU_TIMEOUT": "0.3"}).start()
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
                "run",
                f"{backend.url}/openapi.json",
                "--checks",
                "not_a_server_error",
                "--max-examples",
                "200",
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
            timeout=900,
        )
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, output[-6000:]
        assert "No issues found" in output or "passed" in output.lower(), output[-3000:]
        with backend.http() as http:
            assert http.get("/api/v1/health").json()["status"] in ("ok", "degraded")
    finally:
        backend.stop()
