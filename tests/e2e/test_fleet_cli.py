"""The fleet from the command line: bad fleet files and --attach lists refused in words (exit 2, never a
traceback), ``demo --farms 2 --headless`` runs two farms that both answer, ``demo --farms 2`` opens the
fleet console in tmux (enter shows a farm, 0 comes back), and ``serve --fleet`` builds its tabs' command."""

from __future__ import annotations

import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import poll_until
from tests.e2e.helpers import VALVE, free_port
from tests.e2e.test_tui_tmux import ROOT, demo_in_tmux, stop_leftover_duts
from valve_console.serve import fleet_command


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*VALVE, *args], capture_output=True, text=True, timeout=60, cwd=cwd or ROOT)


def refused(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


def test_bad_fleet_files_are_refused_in_words(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.toml"
    fleet.write_text("""
[[gateway]]
name = "rack1"
url = "htp:/rack1"
token = "t"
[[gateway]]
name = "rack1"
url = "http://127.0.0.1:9"
token_file = "rack1.token"
[[gateway]]
name = "rack3"
url = "http://127.0.0.1:9"
password = "x"
""")
    refused(run("fleet", str(fleet)),
            "has 4 problems", "gateway 1 (rack1) has a bad url 'htp:/rack1'",
            "the name 'rack1' is already gateway 1's", "rack1.token: No such file or directory",
            "gateway 3 (rack3) has unknown key(s) password")
    refused(run("fleet", str(tmp_path / "missing.toml")), "cannot read the fleet file", "No such file")
    fleet.write_text("[[gateway]\n")
    refused(run("fleet", str(fleet)), "is not valid TOML")


def test_bad_attach_lists_are_refused_in_words() -> None:
    refused(run("--attach", "http://127.0.0.1:9", "--attach", "127.0.0.1:10"),
            "gateway 2 (127.0.0.1:10) has a bad url", "http:// or https://")
    refused(run("--attach", "http://127.0.0.1:9", "--attach", "http://127.0.0.1:9"), "already gateway 1's")
    refused(run("--attach", "http://a:9", "--attach", "http://b:9", "--token", "1", "--token", "2", "--token", "3"),
            "2 --attach URLs and 3 --token values")
    refused(run("--attach", "http://a:9", "--token", "1", "--token", "2"), "one --attach URL takes one --token")
    refused(run("demo", "--farms", "0"), "--farms must be between 1 and 50")


def test_serve_fleet_runs_the_fleet_console_in_each_tab(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.toml"
    fleet.write_text('[[gateway]]\nurl = "http://127.0.0.1:9"\n')
    command = shlex.split(fleet_command(fleet))
    assert command == [sys.executable, "-m", "valve_console.cli", "fleet", str(fleet.resolve())]
    # a bad fleet file is said once at start, not in every tab
    fleet.write_text('[[gateway]]\nurl = "ftp://x"\n')
    result = run("serve", "--fleet", str(fleet), "--token", "t", "--listen", f"127.0.0.1:{free_port()}",
                 "--data-dir", str(tmp_path / "data"))
    refused(result, "valve-console serve: the fleet file", "bad url 'ftp://x'")


def test_demo_two_farms_headless(tmp_path: Path) -> None:
    data = tmp_path / "demo"
    err = tmp_path / "demo.err"
    with err.open("w") as errors:
        proc = subprocess.Popen([*VALVE, "demo", "--farms", "2", "--headless", "--no-gitlab", "--duts", "4",
                                 "--vpdu-port", "0", "--data-dir", str(data)],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=errors, text=True)
    try:
        apis = {}
        while len(apis) < 2:
            line = proc.stdout.readline()
            assert line, "the demo ended: " + err.read_text()[-3000:]
            if " API " in line:
                name = line.split("valve-console demo ")[1].split(":")[0]
                apis[name] = (line.split(" API ")[1].split()[0], Path(line.split(" token ")[1].strip()))
        assert set(apis) == {"vivian-1", "vivian-2"}
        for name, (url, token_path) in apis.items():
            assert token_path == data / name / "token"  # each farm its own data dir
            auth = {"Authorization": f"Bearer {token_path.read_text().strip()}"}
            health = httpx.get(f"{url}/api/v1/health", headers=auth, timeout=10).json()
            assert health["farm_name"] == name
            pdus = httpx.get(f"{url}/api/v1/pdus", headers=auth, timeout=10).json()["pdus"]
            assert list(pdus) == ["vpdu1"] and len(pdus["vpdu1"]["ports"]) == 4
        assert apis["vivian-1"][0] != apis["vivian-2"][0]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            assert proc.wait(30) == 0, err.read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
            stop_leftover_duts(tmp_path)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_demo_two_farms_opens_the_fleet_console(tmp_path: Path) -> None:
    with demo_in_tmux(tmp_path, "--farms", "2", "--no-gitlab", "--duts", "4") as (tmux, _data):
        screen = tmux.wait("2 of 2 gateways up", timeout=40)
        assert "vivian-1" in screen and "vivian-2" in screen and "fleet vivian" in screen
        tmux.keys("Down", "Enter")
        screen = tmux.wait("Backend services", timeout=20)  # vivian-2's Overview
        assert "gateway vivian-2" in screen and "farm vivian-2" in screen
        tmux.keys("3")
        tmux.wait("driver vpdu")
        tmux.keys("0")
        tmux.wait("the screens 1-9 show vivian-2")
        tmux.keys("q")
        screen = poll_until(lambda: "VALVE-EXIT=" in (s := tmux.screen()) and s, "the demo to end", 30)
        assert "VALVE-EXIT=0" in screen and "Traceback" not in screen
