"""The seed's step 12 in the demo: ``valve-console demo --headless`` serves Vivian's GitLab stand-in as the
farm's GitLab; a DUT that trains to ready gets its runner there (``python vivian/gitlab.py --list`` shows it),
loses it when retired; a reopened demo points the instance at its new stand-in; ``--no-gitlab`` has none."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx

from tests.conftest import poll_until
from tests.e2e.helpers import ROOT, VALVE

MAC = "52:54:00:11:22:03"


class Demo:
    """``valve-console demo --headless`` as a child process; what it printed, parsed."""

    def __init__(self, data: Path, *extra: str) -> None:
        env = {k: v for k, v in os.environ.items() if k != "TEXTUAL_DRIVER"}
        # stderr to a file, not a pipe nobody reads (a full pipe would block the demo's logging)
        self.err_path = data.parent / f"demo-{id(self)}.err"
        with open(self.err_path, "w") as err:
            self.proc = subprocess.Popen([*VALVE, "demo", "--headless", "--data-dir", str(data), "--vpdu-port", "0",
                                          *extra], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                                         text=True, env=env, cwd=ROOT)
        self.data = data
        self.lines: list[str] = []
        while not any("power a DUT on" in line for line in self.lines):
            line = self.proc.stdout.readline()
            assert line, "the demo ended: " + self.err_path.read_text()[-3000:]
            self.lines.append(line)
        text = "".join(self.lines)
        self.api = re.search(r"API (http://\S+)", text).group(1)
        self.vport = re.search(r"--port (\d+) --outlet", text).group(1)
        if not extra:  # the GitLab lines come right after
            self.lines += [self.proc.stdout.readline(), self.proc.stdout.readline()]
            text = "".join(self.lines)
        found = re.search(r"--list --url (\S+) --token (\S+)", text)
        self.gitlab_url, self.gitlab_token = (found.group(1), found.group(2)) if found else (None, None)

    def http(self) -> httpx.Client:
        token = (self.data / "token").read_text().strip()
        return httpx.Client(base_url=self.api, headers={"Authorization": f"Bearer {token}"}, timeout=10)

    def runners(self) -> str:
        """``python vivian/gitlab.py --list`` against the demo's stand-in: its table (exit 0 asserted)."""
        result = subprocess.run([sys.executable, "vivian/gitlab.py", "--list", "--url", self.gitlab_url,
                                 "--token", self.gitlab_token], capture_output=True, text=True, timeout=30, cwd=ROOT)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError("the demo did not stop on SIGINT: " + self.err_path.read_text()[-3000:]) from None


def instance(http: httpx.Client) -> dict | None:
    return http.get("/api/v1/gitlab").json()["instances"].get("vivian")


def test_demo_reaches_step_12_with_vivian_gitlab(tmp_path):
    data = tmp_path / "data"
    demo = Demo(data)
    try:
        assert demo.gitlab_url and demo.gitlab_url != demo.api
        with demo.http() as http:
            # the farm's GitLab is the stand-in, and says so through the instance's answer
            inst = poll_until(lambda: (i := instance(http)) and i["state"] == "ok" and i, "the instance synced", 30)
            assert inst["url"] == demo.gitlab_url and inst["version"].endswith("-vivian")
            assert "(no runners)" in demo.runners()
            # 5-6. outlet 3 on: the DUT boots and registers; not ready: no runner
            on = subprocess.run([sys.executable, "vivian/client.py", "--port", demo.vport, "--outlet", "3", "--on"],
                                capture_output=True, text=True, timeout=30, cwd=ROOT)
            assert on.returncode == 0, on.stderr
            poll_until(lambda: MAC in http.get("/api/v1/machines").json()["machines"], "the DUT registered", 30)
            assert "(no runners)" in demo.runners()
            # 9-11. only its outlet is given: Sgt. Hartman trains it (3 boot loops in the demo), then it is ready
            assert http.patch(f"/api/v1/machine/{MAC}/", json={"pdu": "vpdu1", "pdu_port_id": 3}).status_code == 200
            machine = poll_until(lambda: (m := http.get(f"/api/v1/machine/{MAC}/").json())["ready_for_service"] and m,
                                 "the DUT trained to ready", 240, every=0.5)
            assert machine["training"]["state"] == "qualified"
            # 12. its runner on the stand-in: id, description <farm>-<name>, tags
            table = poll_until(lambda: machine["full_name"] in (t := demo.runners()) and t,
                               "the runner on Vivian's GitLab", 60, every=0.5)
            row = next(line.split() for line in table.splitlines() if machine["full_name"] in line)
            assert row[1] == machine["full_name"] and machine["full_name"].startswith("vivian-")
            assert "virtio:family:VIRTIO" in row[2].split(",") and "farm:vivian" in row[2].split(",")
            assert row[3:] == ["active", "instance_type"]
            runner = poll_until(lambda: http.get(f"/api/v1/machine/{MAC}/").json()["runners"], "runner stored", 30)
            assert runner[0]["runner_id"] == int(row[0]) and runner[0]["state"] == "ok"
            # retired: its runner goes
            assert http.post(f"/api/v1/machine/{MAC}/retire").status_code == 200
            poll_until(lambda: machine["full_name"] not in demo.runners(), "the runner deleted", 60, every=0.5)
        old_url = demo.gitlab_url
    finally:
        assert demo.stop() == 0
    # stopped with the demo
    port = int(old_url.rsplit(":", 1)[1])
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0

    # reopened: a stand-in on a new port, and the stored instance follows it
    again = Demo(data)
    try:
        with again.http() as http:
            inst = poll_until(lambda: (i := instance(http)) and i["url"] == again.gitlab_url and i["state"] == "ok"
                              and i["version"] and i, "the instance on the new stand-in", 30)
            assert inst["version"].endswith("-vivian")
    finally:
        assert again.stop() == 0

    # --no-gitlab: no stand-in, no instance (the reopened farm's is removed: its stand-in is gone)
    bare = Demo(data, "--no-gitlab")
    try:
        assert bare.gitlab_url is None and "GitLab" not in "".join(bare.lines)
        with bare.http() as http:
            assert http.get("/api/v1/gitlab").json()["instances"] == {}
    finally:
        assert bare.stop() == 0
