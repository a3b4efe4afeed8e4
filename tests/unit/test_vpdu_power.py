"""Vivian's power meter (``vivian/power.py``): profiles per DUT phase, the energy counter, and the phases a
real ``vivian/dut.py`` reports through its ``--phase-file``."""

from __future__ import annotations

import asyncio
import random
import socket
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import eventually
from vivian.power import (
    BOOT_S,
    FIRMWARE_S,
    HUNG_WATTS,
    LEVELS,
    PowerMeter,
    format_report,
    parse_report,
    phase_by_time,
    profile_watts,
)
from vivian.vpdu import VirtualPDU

ROOT = Path(__file__).resolve().parents[2]
DUT = ROOT / "vivian" / "dut.py"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def meter_with(phases: dict[int, str], seed: int | None = 7, ports: int = 4) -> tuple[PowerMeter, FakeClock]:
    clock = FakeClock()
    return PowerMeter(ports, lambda i: phases.get(i, "off"), seed, clock), clock


@pytest.mark.parametrize(("phase", "low", "high"), [
    ("firmware", 30, 45), ("boot", 60, 90), ("idle", 25, 35), ("busy", 90, 140),
])
def test_each_phase_draws_in_its_band_with_noise(phase: str, low: float, high: float) -> None:
    rng = random.Random(1)
    readings = [profile_watts(phase, rng) for _ in range(500)]
    assert all(low <= w <= high for w in readings)
    assert len(set(readings)) > 20  # noise, not a constant
    mean = sum(readings) / len(readings)
    assert abs(mean - LEVELS[phase][0]) < (high - low) / 4


def test_boot_is_spiky_and_off_is_zero() -> None:
    rng = random.Random(2)
    boot = [profile_watts("boot", rng) for _ in range(500)]
    assert max(boot) > 85 and min(boot) < 65
    assert {profile_watts("off", rng) for _ in range(50)} == {0.0}
    assert profile_watts("no-such-phase", rng) == 0.0


def test_a_hung_dut_is_stuck_at_one_level() -> None:
    meter, clock = meter_with({1: "hung"})
    readings = []
    for _ in range(50):
        clock.now += 1.0
        readings.append(meter.read()[1].watts)
    assert set(readings) == {HUNG_WATTS}


def test_the_seed_makes_readings_deterministic_and_its_absence_does_not() -> None:
    phases = {0: "boot", 2: "busy"}

    def run(seed: int | None) -> list[tuple[float, float]]:
        meter, clock = meter_with(phases, seed)
        out = []
        for _ in range(20):
            clock.now += 0.5
            out += [(s.watts, s.volts) for s in meter.read()]
        return out

    assert run(42) == run(42)
    assert run(42) != run(43)
    assert run(None) != run(None)


def test_volts_amps_and_the_off_outlets() -> None:
    meter, clock = meter_with({0: "busy", 3: "idle"})
    for _ in range(100):
        clock.now += 1.0
        for s in meter.read():
            assert 227 <= s.volts <= 233
            assert s.amps == pytest.approx(s.watts / s.volts, abs=0.001)
            if s.outlet in (1, 2):
                assert (s.watts, s.amps, s.phase) == (0.0, 0.0, "off")
            else:
                assert s.watts > 0


def test_the_energy_counter_is_the_integral_of_the_draw_and_only_grows() -> None:
    phases = {0: "firmware"}
    meter, clock = meter_with(phases)
    expected = 0.0
    last = meter.read()[0]
    counters = []
    for step in range(200):
        phases[0] = ("firmware", "boot", "idle", "busy", "off", "hung")[step // 35]
        dt = 0.25 + (step % 7) * 0.5
        clock.now += dt
        expected += last.watts * dt / 3600.0
        last = meter.read()[0]
        counters.append(last.energy_wh)
        assert last.energy_wh == pytest.approx(expected, rel=1e-9)
    assert counters == sorted(counters)
    assert counters[-1] > 0
    # an OFF outlet keeps its counter and adds nothing
    phases[0] = "off"
    meter.read()
    held = meter.read()[0].energy_wh
    clock.now += 3600
    assert meter.read()[0].energy_wh == held


def test_a_dut_that_says_nothing_follows_its_on_time() -> None:
    assert phase_by_time(0) == "firmware"
    assert phase_by_time(FIRMWARE_S + 0.1) == "boot"
    assert phase_by_time(BOOT_S + 0.1) == "idle"


def test_the_report_format_round_trips() -> None:
    meter, clock = meter_with({1: "busy", 2: "idle"})
    clock.now += 10
    meter.read()
    clock.now += 10
    samples = meter.read()
    text = format_report(samples)
    assert text.startswith("vpdu-power 1\n0 0.0 0.000 ")
    outlets, total = parse_report(text)
    assert sorted(outlets) == [0, 1, 2, 3]
    assert outlets[1][0] == samples[1].watts
    assert total is not None
    assert total[0] == pytest.approx(sum(s.watts for s in samples), abs=0.05)
    assert total[1] == pytest.approx(sum(s.energy_wh for s in samples), abs=1e-3)
    for bad in ("", "power 1\n", "vpdu-power 1\n0 1 2 3\n", "vpdu-power 1\nx y z\n", "vpdu-power 1\n0 nan 1 1 1\n"):
        with pytest.raises(ValueError):
            parse_report(bad)


# -- the phases a real dut.py reports ------------------------------------------------------------


class BootServer:
    """The gateway's boot endpoint: every DUT gets ``kernel /k <cmdline>``."""

    def __init__(self, cmdline: str) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = f"#!ipxe\nkernel /k {server.cmdline}\nboot\n".encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                self.send_response(201)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: object) -> None:
                return None

        self.cmdline = cmdline
        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


class Sink:
    """A netconsole that takes whatever the DUTs print."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.address = "127.0.0.1:{}".format(self.sock.getsockname()[1])
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._drain, args=(conn,), daemon=True).start()

    @staticmethod
    def _drain(conn: socket.socket) -> None:
        with conn:
            while conn.recv(4096):
                pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink()
    yield s
    s.close()


async def run_dut(tmp_path: Path, api: str, console: str, *args: str) -> tuple[asyncio.subprocess.Process, Path]:
    phase = tmp_path / "phase"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(DUT), "--mac", "52:54:00:11:22:05", "--api", api, "--console", console,
        "--boot-delay=0.02", "--phase-file", str(phase), *args,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    return proc, phase


def phase_of(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


async def stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
    await proc.wait()


@pytest.mark.parametrize(("script", "last"), [("hang", "hung"), ("unfit", "hung"), ("pass", "idle")])
async def test_a_job_deployment_reports_its_phases(tmp_path: Path, sink: Sink, script: str, last: str) -> None:
    boot = BootServer(f"vivian.script={script} vivian.delay=1.5")
    proc, phase = await run_dut(tmp_path, boot.url, sink.address)
    try:
        seen: list[str] = []

        def watch() -> bool:
            word = phase_of(phase)
            if word and (not seen or seen[-1] != word):
                seen.append(word)
            return word == last and len(seen) > 1  # after firmware (boot may be too short to see)

        await eventually(watch, what=f"phase {last}", timeout=15, every=0.01)
        await asyncio.sleep(0.3)
        assert phase_of(phase) == last
        assert seen[0] == "firmware"
        if script == "pass":
            assert "busy" in seen  # the job's work (its vivian.delay) was busy
        assert not phase.with_name("phase.tmp").exists()
    finally:
        await stop(proc)
        boot.close()


async def test_a_registration_boot_ends_idle(tmp_path: Path, sink: Sink) -> None:
    proc, phase = await run_dut(tmp_path, "http://127.0.0.1:9", sink.address, "--no-register", "--no-boot-config")
    try:
        await eventually(lambda: phase_of(phase) == "idle", what="idle", timeout=15)
    finally:
        await stop(proc)


async def test_the_vpdu_follows_its_dut_phases(tmp_path: Path, sink: Sink) -> None:
    boot = BootServer("vivian.script=hang")
    vpdu = VirtualPDU(num_ports=3, api=boot.url, console=sink.address, dut_args=("--boot-delay=0",),
                      empty_outlets=[2], power_seed=1)
    await vpdu.start("127.0.0.1", 0)
    try:
        assert [vpdu.phase_of(i) for i in range(3)] == ["off", "off", "off"]
        await vpdu.set_outlet(1, True)
        await vpdu.set_outlet(2, True)
        assert vpdu.state(2) and 2 not in vpdu.running_duts  # nothing plugged in
        await eventually(lambda: vpdu.phase_of(1) == "hung", what="the hung DUT", timeout=15)
        readings = []
        for _ in range(5):
            report = vpdu.power_report()
            assert report is not None
            outlets, _total = parse_report(report)
            readings.append(outlets)
            await asyncio.sleep(0.2)
        assert {r[1][0] for r in readings} == {HUNG_WATTS}
        assert {r[2][0] for r in readings} == {0.0} and {r[0][0] for r in readings} == {0.0}
        await vpdu.set_outlet(1, False)
        assert vpdu.phase_of(1) == "off"
        assert vpdu._phase_dir is not None and not any(vpdu._phase_dir.iterdir())
    finally:
        await vpdu.stop()
        boot.close()
    assert vpdu._phase_dir is None


async def test_a_vpdu_without_metering_has_no_report() -> None:
    vpdu = VirtualPDU(num_ports=2, metering=False)
    assert vpdu.power_report() is None
    with pytest.raises(ValueError):
        VirtualPDU(num_ports=2, empty_outlets=[2])
