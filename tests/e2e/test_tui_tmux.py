"""End to end: the real ``valve-console demo`` in tmux with TERM=linux, driven by keys only.

Power outlet 3 on from the PDU screen, see the DUT register in the DUT table, read its boot log
in its console tab, then give it vpdu1/3 and "ready for service" in the machine form; its runner on the
demo's GitLab (Vivian's stand-in) shows in the Runner column, the overview names the stand-in, and
retiring the DUT takes the runner away.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
PROGRAM = Path(sys.executable).parent / "valve-console"
MAC = "52:54:00:11:22:03"

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Tmux:
    """A tmux server of our own (``-L``): nothing shared with other tmux users on the machine."""

    def __init__(self, name: str) -> None:
        self.name = name

    def run(self, *args: str) -> str:
        result = subprocess.run(["tmux", "-L", self.name, *args], capture_output=True, text=True, timeout=10,
                                check=False)
        return result.stdout

    def start(self, command: str) -> None:
        subprocess.run(["tmux", "-L", self.name, "-f", "/dev/null", "new-session", "-d", "-s", self.name,
                        "-x", "160", "-y", "50", "-e", "TERM=linux", command], check=True, timeout=10)

    def keys(self, *keys: str, pause: float = 0.15) -> None:
        for key in keys:
            self.run("send-keys", "-t", self.name, key)
            time.sleep(pause)

    def type(self, text: str) -> None:
        self.run("send-keys", "-t", self.name, "-l", text)
        time.sleep(0.2)

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", self.name)

    def wait(self, *texts: str, timeout: float = 20.0) -> str:
        """Poll the pane until one of ``texts`` shows; fail with the pane's content otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if any(text in screen for text in texts):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"none of {texts} on screen after {timeout} s:\n{screen}")
            time.sleep(0.2)

    def kill(self) -> None:
        socket_path = self.run("display", "-p", "#{socket_path}").strip()
        self.run("kill-server")  # our private server only
        if socket_path.endswith(self.name):
            Path(socket_path).unlink(missing_ok=True)


def stop_leftover_duts(tmp_path: Path) -> None:
    """End simulated DUTs this test started (their log is under ``tmp_path``) if the demo did not."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if b"vivian/dut.py" not in (proc / "cmdline").read_bytes():
                continue
            if not os.readlink(proc / "fd" / "2").startswith(str(tmp_path)):
                continue
            os.kill(int(proc.name), signal.SIGTERM)
        except OSError:
            continue


def gitlab_list(data: Path) -> str:
    """``python vivian/gitlab.py --list --data-dir DATA``: the runners the demo's GitLab stand-in holds."""
    out = subprocess.run([sys.executable, str(ROOT / "vivian" / "gitlab.py"), "--list", "--data-dir", str(data)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout


def wait_row(tmux: Tmux, good, timeout: float = 60.0) -> str:
    """Poll the DUT table until the DUT's row is ``good``; the row (good or not, when the deadline passed)."""
    deadline = time.monotonic() + timeout
    while True:
        screen = tmux.screen()
        row = next((line for line in screen.splitlines() if MAC in line and "sorted by" in screen), "")
        if (row and good(row)) or time.monotonic() > deadline:
            return row or screen
        time.sleep(0.2)


@contextlib.contextmanager
def demo_in_tmux(tmp_path: Path, *args: str) -> Iterator[tuple[Tmux, Path]]:
    """``valve-console demo`` (extra ``args``) in a private tmux (160x50, TERM=linux); quit with ctrl+q at the
    end, the simulated DUTs stopped and the demo's log printed, whatever happened."""
    assert PROGRAM.exists(), f"{PROGRAM} is missing: install the package in the venv"
    tmux = Tmux(f"valve-e2e-{uuid.uuid4().hex[:8]}")
    data = tmp_path / "data"
    # Textual draws on stderr: leave it on the pane. The demo's own log goes to <data>/valve-console.log.
    # COLUMNS/LINES (set in pytest's environment) would override the pane's real size.
    command = (f"cd {ROOT} && env -u COLUMNS -u LINES TERM=linux {PROGRAM} demo --data-dir {data} "
               f"--vpdu-port {free_port()} {' '.join(args)}; echo VALVE-EXIT=$?; sleep 30")
    tmux.start(command)
    try:
        yield tmux, data
    finally:
        tmux.keys("C-q")
        try:
            tmux.wait("VALVE-EXIT=", timeout=15)
        except AssertionError:
            pass
        tmux.kill()
        stop_leftover_duts(tmp_path)
        log = data / "valve-console.log"
        if log.exists():
            print(log.read_text()[-3000:], file=sys.stderr)


def wait_all_off(tmux: Tmux) -> str:
    """On the PDU screen: wait until vpdu1's 16 outlets read off."""
    screen = tmux.wait("vpdu1")
    deadline = time.monotonic() + 20
    while screen.count("[off]") < 16 and time.monotonic() < deadline:
        time.sleep(0.2)
        screen = tmux.screen()
    return screen


def test_demo_in_tmux_on_a_linux_console(tmp_path: Path) -> None:
    with demo_in_tmux(tmp_path) as (tmux, data):
        tmux.wait("Backend services", timeout=30)
        # PDU screen: 16 outlets off; select outlet 3 and switch it on (confirmed)
        tmux.keys("3")
        screen = wait_all_off(tmux)
        assert screen.count("[off]") == 16, screen
        tmux.keys("Right", "Right", "Right", "o")
        tmux.wait("Switch outlet vpdu1/3")
        tmux.keys("y")
        tmux.wait("[ON ]")
        # the DUT boots and registers: it appears in the DUT table
        tmux.keys("4")
        tmux.wait(MAC, timeout=30)
        # its console, with the boot log
        tmux.keys("Enter")
        tmux.wait("SALAD.machine_id", "MaRS: Registration complete")
        # the machine form: PDU vpdu1, port 3, ready for service; save
        tmux.keys("4")
        tmux.wait("sorted by")
        tmux.keys("e")
        tmux.wait("Off delay")
        tmux.keys("Enter")
        tmux.type("vpdu1")
        tmux.keys("Enter", "Tab", "Enter")
        tmux.type("3")
        tmux.keys("Enter")
        tmux.wait("(current)", "outlet 3")
        tmux.keys("Tab", "Tab", "Tab", "Tab", "Tab", "Space")
        tmux.keys("C-s")
        # back in the DUT table (the status line may already name vpdu1/3: wait for the row itself)
        deadline = time.monotonic() + 20
        while True:
            screen = tmux.screen()
            row = next((line for line in screen.splitlines() if MAC in line and "sorted by" in screen), "")
            if ("vpdu1/3" in row and " yes " in row) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert "vpdu1/3" in row and " yes " in row, screen
        assert "NOT_READY" not in row
        # step 12: ready, so the demo's GitLab (Vivian's stand-in) gives it a runner: the Runner column's #<id>
        row = wait_row(tmux, lambda row: re.search(r"#\d+", row))
        found = re.search(r"#(\d+)", row)
        assert found, row
        runner_id = found.group(1)
        # ... on the GitLab screen (8), with the machine, and in the stand-in's own list of its runners
        tmux.keys("8")
        screen = tmux.wait("config.toml", timeout=30)
        deadline = time.monotonic() + 30
        shown = re.compile(rf"vivian-virtio.*\b{runner_id}\b|\b{runner_id}\b.*vivian-virtio")
        while not shown.search(screen) and time.monotonic() < deadline:
            time.sleep(0.3)
            screen = tmux.screen()
        assert shown.search(screen), screen
        assert re.search(rf"^\s*{runner_id}\s", gitlab_list(data), re.M), gitlab_list(data)
        # the overview says where the farm's GitLab is: a Vivian stand-in (from the instance's own answer)
        tmux.keys("1")
        tmux.wait("Vivian stand-in", timeout=30)
        # retired (confirmed): its runner goes
        tmux.keys("4")
        tmux.wait("sorted by")
        tmux.keys("R")
        tmux.wait(f"({MAC})?")
        tmux.keys("y")
        row = wait_row(tmux, lambda row: not re.search(r"#\d+", row), timeout=30)
        assert not re.search(r"#\d+", row), row
        deadline = time.monotonic() + 30  # gone from GitLab too
        while re.search(rf"^\s*{runner_id}\s", gitlab_list(data), re.M) and time.monotonic() < deadline:
            time.sleep(0.3)
        assert not re.search(rf"^\s*{runner_id}\s", gitlab_list(data), re.M), gitlab_list(data)
        # ctrl+q quits; the demo then stops its vPDU, which powers the simulated DUTs off
        tmux.keys("C-q")
        tmux.wait("VALVE-EXIT=0", timeout=20)


def test_overview_follows_a_dut_and_a_lost_pdu_in_tmux(tmp_path: Path) -> None:
    """The Overview (issue 19) on the real demo: a DUT discovered behind outlet 3 appears as a tile, trains
    (the tile says ``train: register`` / ``train n/3``) and ends IDLE; then a second vPDU, added by the API
    and killed, becomes an attention item and raises a notification on the screen the operator is on."""
    api = f"http://127.0.0.1:{free_port()}"
    with demo_in_tmux(tmp_path, "--listen", api.removeprefix("http://")) as (tmux, data), \
            contextlib.ExitStack() as stack:
        tmux.wait("nothing needs you", timeout=30)
        # outlet 3: discovered (powered on, given to the machine that registers next)
        tmux.keys("3")
        wait_all_off(tmux)
        tmux.keys("Right", "Right", "Right", "d")
        tmux.wait("give it to the next machine")
        tmux.keys("y")
        tmux.keys("1")
        tmux.wait("DUTs (1)", timeout=60)
        seen: list[str] = []
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            screen = tmux.screen()
            tiles = screen.split("DUTs (1)", 1)[1]  # below the summary: the tile itself
            step = ("register" if "train: register" in tiles else
                    (f"loop {m.group(1)}" if (m := re.search(r"train (\d)/3", tiles)) else
                     ("IDLE" if re.search(r"^IDLE\s", tiles, re.M) else None)))
            if step and (not seen or seen[-1] != step):
                seen.append(step)
            if step == "IDLE":
                break
            time.sleep(0.2)
        assert seen and seen[-1] == "IDLE" and any(s.startswith(("register", "loop")) for s in seen), (seen, screen)
        assert "DUTs 1 IDLE 1" in screen
        # a second PDU, a vPDU of our own: added by the API, then stopped while the operator is on the journal
        port = free_port()
        vpdu2 = subprocess.Popen([sys.executable, str(ROOT / "vivian" / "vpdu.py"), "--port", str(port),
                                  "--num-ports", "4"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stack.callback(vpdu2.kill)  # a no-op once it was killed and reaped below
        token = (data / "token").read_text().strip()
        headers = {"Authorization": f"Bearer {token}"}
        r = httpx.post(f"{api}/api/v1/pdu/", headers=headers, timeout=10,
                       json={"name": "vpdu2", "driver": "vpdu", "config": {"hostname": f"127.0.0.1:{port}"}})
        assert r.status_code == 201, r.text
        deadline = time.monotonic() + 30  # reachable first (the vPDU may still be starting): then it is lost
        while httpx.get(f"{api}/api/v1/pdu/vpdu2", headers=headers, timeout=10).json()["state"] != "reachable":
            assert time.monotonic() < deadline, "vpdu2 never became reachable"
            time.sleep(0.3)
        tmux.keys("2")
        tmux.wait("priority ")
        vpdu2.kill()
        vpdu2.wait(timeout=10)
        # the notification, where the operator is (the journal), then the item on the Overview
        screen = tmux.wait("PDU vpdu2 unreachable", timeout=90)
        assert "needs you" in screen, screen
        tmux.keys("1")
        screen = tmux.wait("Attention (1)", timeout=10)
        assert re.search(r"A +PDU +PDU vpdu2 unreachable", screen), screen
        tmux.keys("A")  # its key: the PDU screen, on vpdu2
        tmux.wait("vpdu2", timeout=10)
        tmux.keys("C-q")
        tmux.wait("VALVE-EXIT=0", timeout=20)
