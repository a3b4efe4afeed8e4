"""The operator console (TUI) in a real pty: first paint, CPU and keypress-to-repaint latency.

Farm: the real ``--backend-only`` process and a vPDU with 16 outlets whose simulated DUTs print
continuously (``--chatty 11520``: 115200 baud ≈ 11.5 KB/s each). The farm holds 100 machines:
the 16 DUTs behind the outlets (registered up front, as they register themselves, and put on
their outlets) and 84 more registered through ``POST /api/v1/machine/``.

The TUI under test is ``valve-console --attach URL --token T`` in a pseudo-terminal (160x50,
``TERM=xterm-256color``, ``COLORTERM=truecolor``); a reader thread drains the master side all the
time and timestamps the bytes. Two conditions in the same run, each with a fresh TUI:

A. idle farm: the same 100 machines, every outlet off, nothing streams;
B. loaded farm: the 16 outlets on, 16 consoles streaming at 115200 baud.

In each: first paint (spawn → first output with "Overview", and → the farm name from the API);
the Overview with its 100 DUT tiles (issue 19): the TUI's CPU over the same window while the operator
watches it, keypress → repaint for keys 4/1 (DUT table ↔ Overview: wait for "Training" / "Attention")
and for the arrow key moving the tile cursor (wait for the next tile's name, repainted under the
cursor);
the Consoles screen (key 5) showing a DUT's console (in B a streaming one); the TUI's CPU over a
20 s window from /proc/<pid>/stat (all its threads); then keypress → repaint latency: keys 4 (DUT
table, wait for its "Training" column header) and 5 (consoles, wait for the console's
"read-only" title) alternate, 0.25 s apart; the output buffer is cleared right before each key
and only the bytes after it are searched; then '[' / ']' (previous/next console tab, wait for the
new tab's "read-only" title). Peer, same run, same pty and keys 4/5: a minimal Textual app with a
100-row DataTable screen and a one-line screen (Textual's floor for a screen switch on this machine).
Reported: the figures, the ratios B/A and ours/peer. Every process is stopped on exit, also on
errors and on SIGTERM/SIGINT/SIGHUP.
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, Farm, cpu_seconds, percentile  # noqa: E402

OUTLETS = 16
MACHINES = 100
CHATTY = 11520  # bytes/s per DUT: 115200 baud, 8N1
COLS, ROWS = 160, 50
CPU_WINDOW = 20.0
KEYS = 40
KEY_GAP = 0.25
KEY_TIMEOUT = 3.0
TAB_KEYS = 20
TARGET_PAINT, TARGET_CPU, TARGET_P95 = 1.5, 25.0, 100.0

FIRST_PAINT = b"Overview"  # the top bar, on the first frame
OVERVIEW_TEXT = b"Attention"  # the Overview's attention list title
ARROW_KEYS = 30
RIGHT = b"\x1b[C"
DUTS_TEXT = b"Training"  # the DUT table's column header
CONSOLE_TEXT = b"read-only"  # the console view's title: "<mac> | read-only - t to type"
DUT_MAC_PREFIX = "52:54:00:11:22:"  # vivian's outlet MACs

PEER_APP = """
from textual.app import App
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

class Table(Screen):
    def compose(self):
        table = DataTable()
        table.add_columns("Name", "MAC", "IP", "State", "Training", "PDU/port", "TTY", "Ready", "Retired")
        for i in range(100):
            table.add_row(f"valve-bench-{i}", f"02:00:00:00:00:{i:02x}", f"10.1.0.{i}", "NOT_READY", "-", "-",
                          "ttyS0", "no", "no")
        yield table
        yield Footer()

class Line(Screen):
    def compose(self):
        yield Static("52:54:00:11:22:0f | read-only - t to type")
        yield Footer()

class Peer(App):
    MODES = {"table": Table, "line": Line}
    DEFAULT_MODE = "line"
    BINDINGS = [Binding("4", "switch_mode('table')", "DUTs"), Binding("5", "switch_mode('line')", "Consoles")]

Peer().run()
"""


def dut_mac(outlet: int) -> str:
    return f"{DUT_MAC_PREFIX}{outlet:02x}"


def bench_mac(i: int) -> str:
    return f"02:00:00:00:{i // 256:02x}:{i % 256:02x}"


class BenchFarm(Farm):
    """``--backend-only`` + a vPDU whose DUTs are chatty, with ``vpdu1`` registered."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir, outlets=OUTLETS, dut_args=[f"--chatty={CHATTY}"])

    def populate(self) -> None:
        """The 16 outlet DUTs (as they register themselves, then put on their outlets) + 84 more."""
        for outlet in range(OUTLETS):
            mac = dut_mac(outlet)
            self.http.post("/api/v1/machine/", json={
                "base_name": "virtio", "tags": ["virtio:pciid:0x1af4:0x1050", "virtio:family:VIRTIO"],
                "mac_address": mac, "ip_address": f"10.42.0.{10 + outlet}", "local_tty_device": "ttyS1",
            }).raise_for_status()
            self.http.patch(f"/api/v1/machine/{mac}/", json={"pdu": "vpdu1", "pdu_port_id": outlet}).raise_for_status()
        for i in range(MACHINES - OUTLETS):
            self.http.post("/api/v1/machine/", json={
                "base_name": "bench", "tags": ["bench"], "mac_address": bench_mac(i),
                "ip_address": f"10.1.{i // 256}.{i % 256}", "local_tty_device": "ttyS0",
            }).raise_for_status()
        count = len(self.http.get("/api/v1/machines").json()["machines"])
        if count != MACHINES:
            raise RuntimeError(f"the farm has {count} machines, not {MACHINES}")

    def power_all_on(self, timeout: float = 60.0) -> None:
        for outlet in range(OUTLETS):
            self.http.post(f"/api/v1/pdu/vpdu1/port/{outlet}/state", json={"state": "on"}).raise_for_status()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            consoles = self.http.get("/api/v1/consoles").json()["consoles"]
            if sum(1 for c in consoles.values() if c.get("connected")) >= OUTLETS:
                return
            time.sleep(0.25)
        raise RuntimeError(f"the {OUTLETS} consoles did not connect within {timeout:.0f} s")

    def console_bytes(self) -> int:
        """Bytes in the DUTs' console logs (to check that they stream)."""
        return sum(len(self.http.get(f"/api/v1/console/{dut_mac(o)}/log", params={"raw": "true"}).content)
                   for o in range(OUTLETS))


def _controlling_tty() -> None:  # runs in the child, after setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class PtyTui:
    """The TUI in a pseudo-terminal; a thread drains the master and timestamps the output."""

    KEEP = 256 * 1024  # bytes kept while nobody is watching for a text

    def __init__(self, argv: list[str]) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        env.update(TERM="xterm-256color", COLORTERM="truecolor")
        self.master = master
        self.cond = threading.Condition()
        self.buf = bytearray()
        self.chunks: list[tuple[int, float]] = []  # (end offset in buf, arrival time)
        self.total = 0
        self.watching = False
        self.closed = False
        self.started = time.monotonic()
        try:
            self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=slave, stdout=slave, stderr=slave,
                                         start_new_session=True, preexec_fn=_controlling_tty)
        finally:
            os.close(slave)
        self.thread = threading.Thread(target=self._drain, name="pty-reader", daemon=True)
        self.thread.start()

    def _drain(self) -> None:
        while True:
            try:
                ready, _, _ = select.select([self.master], [], [], 0.2)
                if not ready:
                    if self.proc.poll() is not None:
                        break
                    continue
                data = os.read(self.master, 65536)
            except OSError:  # EIO: the slave side is gone
                break
            if not data:
                break
            now = time.monotonic()
            with self.cond:
                self.total += len(data)
                self.buf += data
                if not self.watching and len(self.buf) > self.KEEP:
                    del self.buf[: len(self.buf) - self.KEEP]
                    self.chunks.clear()
                self.chunks.append((len(self.buf), now))
                self.cond.notify_all()
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def clear(self) -> None:
        with self.cond:
            self.buf.clear()
            self.chunks.clear()
            self.watching = True

    def wait_for(self, text: bytes, timeout: float) -> float | None:
        """Arrival time of the output chunk that completed ``text`` (searched since the last clear)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            self.watching = True
            try:
                while True:
                    pos = self.buf.find(text)
                    if pos >= 0:
                        end = pos + len(text)
                        return next(t for off, t in self.chunks if off >= end)
                    left = deadline - time.monotonic()
                    if left <= 0 or self.closed:
                        return None
                    self.cond.wait(left)
            finally:
                self.watching = False

    def key(self, data: bytes) -> float:
        """Clear the output buffer, send ``data`` as typed keys; returns the send time."""
        self.clear()
        sent = time.monotonic()
        os.write(self.master, data)
        return sent

    def press(self, data: bytes, text: bytes, timeout: float = KEY_TIMEOUT) -> float | None:
        """Send a key and return the seconds until ``text`` appeared in the output (None: never)."""
        sent = self.key(data)
        seen = self.wait_for(text, timeout)
        return None if seen is None else seen - sent

    def output_bytes(self) -> int:
        with self.cond:
            return self.total

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.thread.join(2)
        os.close(self.master)


def show_dut_console(tui: PtyTui) -> bool:
    """On the Consoles screen, step back through the tabs ('[') until a DUT behind an outlet shows."""
    for _ in range(8):
        if tui.press(b"[", DUT_MAC_PREFIX.encode(), 2.0) is not None:
            time.sleep(0.5)
            tui.clear()
            return True
    return False


def key_series(tui: PtyTui, keys: list[tuple[bytes, bytes]], count: int,
               gap: float = KEY_GAP) -> tuple[list[float], int]:
    """Press the keys in turn, ``gap`` seconds apart; latencies in ms of the repaints seen, and the misses."""
    lat: list[float] = []
    misses = 0
    for i in range(count):
        key, text = keys[i % len(keys)]
        start = time.monotonic()
        dt = tui.press(key, text)
        if dt is None:
            misses += 1
        else:
            lat.append(dt * 1000)
        time.sleep(max(0.0, start + gap - time.monotonic()))
    return lat, misses


def measure_peer() -> dict[str, object]:
    """The floor: a minimal Textual app switching between a 100-row DataTable screen and a one-line one."""
    tui = PtyTui([sys.executable, "-c", PEER_APP])
    try:
        if tui.wait_for(CONSOLE_TEXT, 15) is None:
            raise RuntimeError("peer: no first paint within 15 s")
        time.sleep(1)
        tui.press(b"4", DUTS_TEXT, 10)
        time.sleep(0.5)
        tui.press(b"5", CONSOLE_TEXT, 10)
        time.sleep(0.5)
        lat, misses = key_series(tui, [(b"4", DUTS_TEXT), (b"5", CONSOLE_TEXT)], KEYS)
    finally:
        tui.close()
    return {"lat": lat, "misses": misses}


def tile_names(farm: BenchFarm) -> list[str]:
    """The Overview's tiles in order (by name, then MAC), as the TUI sorts them."""
    machines = farm.http.get("/api/v1/machines").json()["machines"].values()
    return [m["full_name"] or m["mac_address"]
            for m in sorted(machines, key=lambda m: (m["full_name"] or m["mac_address"], m["mac_address"]))]


def measure_overview(farm: BenchFarm, tui: PtyTui) -> tuple[float, list[float], int, list[float], int]:
    """On the Overview (100 tiles): CPU over CPU_WINDOW, keys 4/1 → repaint, the tile cursor → repaint."""
    if tui.press(b"1", OVERVIEW_TEXT, 10) is None:
        raise RuntimeError("the Overview did not show")
    time.sleep(2)
    c0, t0 = cpu_seconds(tui.proc.pid), time.monotonic()
    time.sleep(CPU_WINDOW)
    cpu = (cpu_seconds(tui.proc.pid) - c0) / (time.monotonic() - t0) * 100
    lat, misses = key_series(tui, [(b"4", DUTS_TEXT), (b"1", OVERVIEW_TEXT)], KEYS)
    time.sleep(0.5)
    names = tile_names(farm)
    arrows: list[float] = []
    arrow_misses = 0
    for i in range(1, ARROW_KEYS + 1):  # the cursor starts on the first tile: right moves it to tile i
        start = time.monotonic()
        dt = tui.press(RIGHT, names[i].encode())
        if dt is None:
            arrow_misses += 1
        else:
            arrows.append(dt * 1000)
        time.sleep(max(0.0, start + KEY_GAP - time.monotonic()))
    return cpu, lat, misses, arrows, arrow_misses


def measure(farm: BenchFarm, label: str) -> dict[str, object]:
    """One condition: a fresh TUI; first paint, CPU over CPU_WINDOW on the Consoles screen, key latency."""
    res: dict[str, object] = {"label": label}
    tui = PtyTui([sys.executable, "-m", "valve_console.cli", "--attach", farm.url, "--token", farm.token])
    try:
        seen = tui.wait_for(FIRST_PAINT, 15)
        if seen is None:
            raise RuntimeError(f"{label}: no first paint within 15 s")
        res["first_paint"] = seen - tui.started
        seen = tui.wait_for(b"farm valve", 15)  # the top bar once the API answered
        res["data_paint"] = None if seen is None else seen - tui.started
        time.sleep(2)  # let the first fetch settle
        # first visits build the DUT table (100 rows) and the Consoles screen (100 tabs)
        res["first_duts"] = tui.press(b"4", DUTS_TEXT, 10)
        time.sleep(1)
        res["first_consoles"] = tui.press(b"5", CONSOLE_TEXT, 10)
        time.sleep(3)  # 100 tabs: each fetches its console log
        if not show_dut_console(tui):
            raise RuntimeError(f"{label}: could not show a DUT's console tab")
        time.sleep(2)
        out0, be0 = tui.output_bytes(), cpu_seconds(farm.backend.pid)  # type: ignore[union-attr]
        c0, t0 = cpu_seconds(tui.proc.pid), time.monotonic()
        time.sleep(CPU_WINDOW)
        c1, t1 = cpu_seconds(tui.proc.pid), time.monotonic()
        res["cpu"] = (c1 - c0) / (t1 - t0) * 100
        res["backend_cpu"] = (cpu_seconds(farm.backend.pid) - be0) / (t1 - t0) * 100  # type: ignore[union-attr]
        res["pty_rate"] = (tui.output_bytes() - out0) / (t1 - t0)
        res["lat"], res["misses"] = key_series(tui, [(b"4", DUTS_TEXT), (b"5", CONSOLE_TEXT)], KEYS)
        # back on the DUT's console: previous tab, next tab (in B both stream)
        res["tab_lat"], res["tab_misses"] = key_series(tui, [(b"[", CONSOLE_TEXT), (b"]", CONSOLE_TEXT)], TAB_KEYS)
        res["overview_cpu"], res["overview_lat"], res["overview_misses"], res["arrow_lat"], res["arrow_misses"] = \
            measure_overview(farm, tui)
        if tui.proc.poll() is not None:
            raise RuntimeError(f"{label}: the TUI exited with code {tui.proc.returncode}")
    finally:
        tui.close()
    return res


def fmt_ms(seconds: object) -> str:
    return "-" if seconds is None else f"{float(seconds) * 1000:.0f} ms"  # type: ignore[arg-type]


def report(a: dict[str, object], b: dict[str, object], peer: dict[str, object]) -> None:
    print(f"farm: {MACHINES} machines, vPDU {OUTLETS} outlets, DUTs --chatty {CHATTY} B/s; "
          f"TUI --attach in a {COLS}x{ROWS} pty (xterm-256color, truecolor)")
    print()
    head = f"{'':44} {'A idle':>12} {'B loaded':>12} {'B/A':>7}"
    print(head)
    print("-" * len(head))

    def row(name: str, va: str, vb: str, ratio: str = "") -> None:
        print(f"{name:44} {va:>12} {vb:>12} {ratio:>7}")

    row("first paint ('Overview')", fmt_ms(a["first_paint"]), fmt_ms(b["first_paint"]))
    row("first paint with the farm's data", fmt_ms(a["data_paint"]), fmt_ms(b["data_paint"]))
    row("first visit of DUTs (4), key to paint", fmt_ms(a["first_duts"]), fmt_ms(b["first_duts"]))
    row("first visit of Consoles (5), key to paint", fmt_ms(a["first_consoles"]), fmt_ms(b["first_consoles"]))
    ca, cb = float(a["cpu"]), float(b["cpu"])  # type: ignore[arg-type]
    row(f"TUI CPU on Consoles, {CPU_WINDOW:.0f} s, % of one core", f"{ca:.2f} %", f"{cb:.2f} %",
        f"{cb / max(ca, 1e-3):.1f}x")
    row("backend CPU in the same window", f"{float(a['backend_cpu']):.2f} %",  # type: ignore[arg-type]
        f"{float(b['backend_cpu']):.2f} %")  # type: ignore[arg-type]
    row("TUI output to the terminal, KB/s", f"{float(a['pty_rate']) / 1000:.1f}",  # type: ignore[arg-type]
        f"{float(b['pty_rate']) / 1000:.1f}")  # type: ignore[arg-type]
    la, lb = list(a["lat"]), list(b["lat"])  # type: ignore[call-overload]
    for p in (50, 95):
        pa, pb = percentile(la, p), percentile(lb, p)
        row(f"key 4/5 → repaint, p{p} ({KEYS} keys)", f"{pa:.1f} ms", f"{pb:.1f} ms", f"{pb / max(pa, 1e-3):.1f}x")
    row("key 4/5 → repaint, max", f"{max(la, default=float('nan')):.1f} ms", f"{max(lb, default=float('nan')):.1f} ms")
    row("keys whose repaint was not seen in 3 s", str(a["misses"]), str(b["misses"]))
    ta, tb = list(a["tab_lat"]), list(b["tab_lat"])  # type: ignore[call-overload]
    for p in (50, 95):
        pa, pb = percentile(ta, p), percentile(tb, p)
        row(f"key [/] (console tab) → repaint, p{p} ({TAB_KEYS})", f"{pa:.1f} ms", f"{pb:.1f} ms",
            f"{pb / max(pa, 1e-3):.1f}x")
    row("key [/] → repaint, max; not seen", f"{max(ta, default=float('nan')):.0f} ms; {a['tab_misses']}",
        f"{max(tb, default=float('nan')):.0f} ms; {b['tab_misses']}")
    oa, ob = float(a["overview_cpu"]), float(b["overview_cpu"])  # type: ignore[arg-type]
    row(f"TUI CPU on the Overview (100 tiles), {CPU_WINDOW:.0f} s", f"{oa:.2f} %", f"{ob:.2f} %",
        f"{ob / max(oa, 1e-3):.1f}x")
    oal, obl = list(a["overview_lat"]), list(b["overview_lat"])  # type: ignore[call-overload]
    for p in (50, 95):
        pa, pb = percentile(oal, p), percentile(obl, p)
        row(f"key 4/1 (DUTs/Overview) → repaint, p{p}", f"{pa:.1f} ms", f"{pb:.1f} ms", f"{pb / max(pa, 1e-3):.1f}x")
    row("key 4/1 → repaint, not seen", str(a["overview_misses"]), str(b["overview_misses"]))
    aal, abl = list(a["arrow_lat"]), list(b["arrow_lat"])  # type: ignore[call-overload]
    for p in (50, 95):
        pa, pb = percentile(aal, p), percentile(abl, p)
        row(f"arrow (tile cursor) → repaint, p{p} ({ARROW_KEYS})", f"{pa:.1f} ms", f"{pb:.1f} ms",
            f"{pb / max(pa, 1e-3):.1f}x")
    row("arrow → repaint, not seen", str(a["arrow_misses"]), str(b["arrow_misses"]))
    lp = list(peer["lat"])  # type: ignore[call-overload]
    print()
    print(f"peer, same pty and keys 4/5 ({KEYS}): a minimal Textual app, a 100-row DataTable screen and a one-line "
          f"screen: p50 {percentile(lp, 50):.1f} ms, p95 {percentile(lp, 95):.1f} ms, max {max(lp, default=0):.1f} ms"
          f" ({peer['misses']} not seen)")
    print(f"ratio ours/peer at p95: idle {percentile(la, 95) / max(percentile(lp, 95), 1e-3):.1f}x, "
          f"loaded {percentile(lb, 95) / max(percentile(lp, 95), 1e-3):.1f}x")
    print()
    p95b = percentile(lb, 95)
    paint = float(a["first_paint"])  # type: ignore[arg-type]
    po = max(percentile(obl, 95), percentile(abl, 95))
    verdict = "met" if ob <= cb * 1.1 and po <= p95b * 1.1 else "MISSED"
    print(f"Overview (issue 19), loaded, against the DUT table in the same run: CPU {ob:.1f} % vs {cb:.1f} % "
          f"({ob / max(cb, 1e-3):.2f}x), p95 {po:.1f} ms vs {p95b:.1f} ms ({po / max(p95b, 1e-3):.2f}x): "
          f"{verdict} (no worse, 10 % noise allowed)")
    print(f"targets: first paint (idle) {paint:.2f} s < {TARGET_PAINT} s: {'met' if paint < TARGET_PAINT else 'MISSED'}"
          f"; CPU (loaded) {cb:.1f} % < {TARGET_CPU:.0f} %: {'met' if cb < TARGET_CPU else 'MISSED'}"
          f"; p95 latency (loaded) {p95b:.1f} ms < {TARGET_P95:.0f} ms: {'met' if p95b < TARGET_P95 else 'MISSED'}")


def _stop(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks: TUI, vPDU (and DUTs), backend


def main() -> int:
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):  # SIGINT too: a background job inherits SIG_IGN
        signal.signal(sig, _stop)
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-tui-") as tmp:
        farm: BenchFarm | None = None
        try:
            farm = BenchFarm(Path(tmp))
            farm.populate()
            idle = measure(farm, "A idle")
            farm.power_all_on()
            time.sleep(3)  # boot logs done, registration answered, streaming
            before = farm.console_bytes()
            time.sleep(1)
            rate = (farm.console_bytes() - before) / 1.0
            loaded = measure(farm, "B loaded")
            print(f"console output into the backend before B: {rate / 1000:.0f} KB/s over {OUTLETS} DUTs "
                  f"(nominal {OUTLETS * CHATTY / 1000:.0f} KB/s)")
        finally:
            if farm is not None:
                farm.close()
    peer = measure_peer()
    report(idle, loaded, peer)
    print(f"(whole run: {time.monotonic() - began:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
