"""vivian/gitlab.py as a program: it serves (a real process), ``--list`` shows its runners as a table, and bad
input or a refused token is said in words with a non-zero exit."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.helpers import free_port

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = [sys.executable, str(ROOT / "vivian" / "gitlab.py")]
TOKEN = "glpat-test-admin-token"


def call(url: str, method: str, path: str, token: str | None = TOKEN, body: dict | None = None) -> tuple[int, object]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} | ({"PRIVATE-TOKEN": token} if token else {})
    req = urllib.request.Request(f"{url}/api/v4{path}", data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as answer:
            raw = answer.read()
            return answer.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def list_runners(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*SCRIPT, "--list", *args], capture_output=True, text=True, timeout=30, cwd=ROOT)


@pytest.fixture
def served():
    proc = subprocess.Popen([*SCRIPT, "--port", "0", "--token", TOKEN], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        first = proc.stdout.readline()
        assert first.startswith("Vivian GitLab on http://127.0.0.1:"), first + proc.stderr.read()
        assert TOKEN in first
        yield first.split()[3]
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


def test_list_shows_a_running_stand_ins_runners(served):
    url = served
    assert "(no runners)" in list_runners("--url", url, "--token", TOKEN).stdout
    body = {"runner_type": "instance_type", "description": "vivian-virtio-1",
            "tag_list": ["virtio:family:VIRTIO", "farm:vivian"]}
    status, made = call(url, "POST", "/user/runners", body=body)
    assert status == 201 and made["token"].startswith("glrt-")
    status, other = call(url, "POST", "/user/runners", body={"runner_type": "instance_type", "description": "other-2"})
    assert status == 201
    assert call(url, "PUT", f"/runners/{other['id']}", body={"paused": True})[0] == 200
    result = list_runners("--url", url, "--token", TOKEN)
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["ID", "DESCRIPTION", "TAGS", "STATE", "TYPE"]
    assert rows[0].split() == [str(made["id"]), "vivian-virtio-1", "virtio:family:VIRTIO,farm:vivian", "active",
                               "instance_type"]
    assert rows[1].split() == [str(other["id"]), "other-2", "paused", "instance_type"]  # no tags: an empty cell
    # deleted by its token (what a runner's unregistration does): gone from the list
    assert call(url, "DELETE", f"/runners?token={made['token']}", token=None)[0] == 204
    assert "vivian-virtio-1" not in list_runners("--url", url, "--token", TOKEN).stdout


def test_gitlabs_answers_and_errors(served):
    url = served
    assert call(url, "GET", "/version", token=None) == (401, {"message": "401 Unauthorized"})
    status, version = call(url, "GET", "/version")
    assert status == 200 and version["version"].endswith("-vivian")
    assert call(url, "GET", "/runners/999") == (404, {"message": "404 Runner Not Found"})
    assert call(url, "GET", "/nowhere") == (404, {"error": "404 Not Found"})
    assert call(url, "POST", "/user/runners", body={"runner_type": "mine"}) == (
        400, {"error": "runner_type does not have a valid value"})
    assert call(url, "POST", "/user/runners", body={}) == (400, {"error": "runner_type is missing"})
    assert call(url, "POST", "/runners/verify", body={"token": "glrt-unknown"}) == (403, {"message": "403 Forbidden"})


def test_list_errors_are_words_and_non_zero(served):
    refused = list_runners("--url", served, "--token", "glpat-wrong")
    assert refused.returncode != 0 and refused.stdout == ""
    assert "401" in refused.stderr and "token was refused" in refused.stderr
    down = list_runners("--url", f"http://127.0.0.1:{free_port()}", "--token", TOKEN)
    assert down.returncode != 0 and "cannot reach" in down.stderr
    missing = list_runners("--token", TOKEN)
    assert missing.returncode == 2 and "--url" in missing.stderr
    bad = list_runners("--url", "ftp://x", "--token", TOKEN)
    assert bad.returncode != 0 and "not an http(s) URL" in bad.stderr


def test_serving_refuses_a_port_in_use(served):
    port = served.rsplit(":", 1)[1]
    result = subprocess.run([*SCRIPT, "--port", port], capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert result.returncode == 2 and f"cannot serve on 127.0.0.1:{port}" in result.stderr
