"""Start failures of the real program under a low open-file limit: one line and exit 2, never a hang.

Before: with the consoles a marker flood left stored (one listening socket each) and the usual limit of
1,024 files, the next start died in ``socket()`` outside the error handling, with a traceback.
"""

from __future__ import annotations

import resource
import signal
import subprocess
import time
from pathlib import Path

import httpx

from tests.e2e.helpers import ROOT, VALVE, Backend, free_port
from tests.security.conftest_consoles import dut_network_farm, register

START_TIMEOUT = 20.0


def run_backend(data: Path, nofile: int) -> tuple[subprocess.Popen, str]:
    """The real backend with RLIMIT_NOFILE = ``nofile``; (process, its URL)."""
    port = free_port()
    env = Backend(data).env

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    proc = subprocess.Popen(
        [*VALVE, "--backend-only", "--data-dir", str(data), "--listen", f"127.0.0.1:{port}",
         "--netconsole", f"127.0.0.1:{free_port()}"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=limit,
    )
    return proc, f"http://127.0.0.1:{port}"


def outcome(proc: subprocess.Popen, url: str) -> str:
    """"up" once /api/v1/health answers, "exited" once the process ended; fails on a hang."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return "exited"
        try:
            if httpx.get(url + "/api/v1/health", timeout=1).status_code == 200:
                return "up"
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    proc.communicate()
    raise AssertionError(f"neither up nor exited after {START_TIMEOUT} s")


def stop(proc: subprocess.Popen) -> tuple[int, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError("SIGTERM ignored") from None
    return proc.returncode, err


def failure_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr[-2000:]
    return [line for line in stderr.splitlines() if line.startswith("valve-console:")]


async def stored_consoles(data: Path, registered: int = 0, flood: int = 0) -> None:
    """A data dir with consoles of ``registered`` machines and ``flood`` consoles a marker flood stored."""
    from valve_console.backend.models import MachineConsole

    async with dut_network_farm(data) as (farm, http):
        for i in range(registered):
            mac = f"52:54:00:22:00:{i:02x}"
            await register(http, mac, f"10.42.1.{i + 1}")
            farm.consoles.console(mac)

        def insert(session):
            for i in range(flood):
                mac = f"02:aa:00:00:{i >> 8:02x}:{i & 255:02x}"
                session.add(MachineConsole(mac_address=mac, tcp_index=1000 + i))

        await farm.store.run(insert)


async def test_a_data_dir_flooded_with_consoles_starts_under_1024_files(tmp_path):
    data = tmp_path / "data"
    await stored_consoles(data, registered=2, flood=1100)
    proc, url = run_backend(data, 1024)
    state = outcome(proc, url)
    if state == "up":
        consoles = httpx.get(url + "/api/v1/consoles", timeout=5).json()["consoles"]
        assert len(consoles) <= 64 + 2
    code, err = stop(proc)
    assert state == "up", err[-2000:]
    assert code == 0, err[-2000:]
    assert "removed 1036 stored consoles of machines that never registered" in err


async def test_too_few_files_for_the_consoles_is_one_line_and_exit_2(tmp_path):
    data = tmp_path / "data"
    await stored_consoles(data, registered=80)  # 80 registered machines: 80 console ports to listen on
    proc, url = run_backend(data, 64)
    state = outcome(proc, url)
    code, err = stop(proc)
    assert state == "exited" and code == 2, (state, code, err[-2000:])
    lines = failure_lines(err)
    assert len(lines) == 1 and "open-file limit" in lines[0] and "LimitNOFILE" in lines[0], err[-2000:]


def test_small_open_file_limits_start_or_fail_in_one_line(tmp_path):
    # 7: too few to import the backend; 9: its unix socket; 10: the token; 12: the database; 16: up.
    for nofile in (7, 9, 10, 12, 16):
        data = tmp_path / f"data-{nofile}"
        proc, url = run_backend(data, nofile)
        state = outcome(proc, url)
        code, err = stop(proc)
        lines = failure_lines(err)
        if state == "up":
            assert code == 0, (nofile, err[-2000:])
        else:
            assert code == 2 and len(lines) == 1, (nofile, code, err[-2000:])
