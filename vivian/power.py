"""The vPDU's power meter: a realistic power profile per outlet that follows the DUT behind it.

Each outlet's draw depends on the phase of its DUT (``PHASES``):

    off       0 W (outlet OFF, or ON with nothing drawing: no DUT plugged in, or its process exited)
    firmware  ~30-45 W      (SeaBIOS / iPXE)
    boot      ~60-90 W, spiky (kernel and userspace start)
    idle      ~25-35 W      (shell prompt, registration done, job over)
    busy      ~90-140 W     (a job's work phase: its delay, container, output)
    hung      one flat level, no noise at all (``vivian.script=hang`` / ``unfit``: the DUT stopped answering)

volts ~230 V with small noise, amps = W / V, and a cumulative energy counter (Wh) per outlet, integrated
from the draw over time (it counts across OFF/ON, like a PDU's meter; it only grows).

The sim DUT (``vivian/dut.py --phase-file PATH``) writes its phase as one word into a small file the vPDU
owns; a DUT without that channel (QEMU) or before its first word follows the outlet's on time
(``phase_by_time``). ``seed`` makes the noise deterministic (tests); without it the noise is random.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

PHASES = ("off", "firmware", "boot", "idle", "busy", "hung")
LINE_VOLTS = 230.0
HUNG_WATTS = 58.0
# (mean W, noise sigma W, lowest, highest)
LEVELS: dict[str, tuple[float, float, float, float]] = {
    "firmware": (37.5, 2.5, 30.0, 45.0),
    "boot": (72.0, 6.0, 60.0, 90.0),
    "idle": (30.0, 1.6, 25.0, 35.0),
    "busy": (115.0, 9.0, 90.0, 140.0),
}
# a DUT that reports no phase (QEMU): firmware for FIRMWARE_S after power on, booting until BOOT_S, then idle
FIRMWARE_S = 3.0
BOOT_S = 20.0


def phase_by_time(on_for: float) -> str:
    """The phase of a DUT that says nothing, from how long its outlet has been ON."""
    if on_for < FIRMWARE_S:
        return "firmware"
    if on_for < BOOT_S:
        return "boot"
    return "idle"


def profile_watts(phase: str, rng: random.Random) -> float:
    """One reading of the draw in ``phase`` (noise from ``rng``); 0 for ``off`` and unknown phases."""
    if phase == "hung":
        return HUNG_WATTS
    level = LEVELS.get(phase)
    if level is None:
        return 0.0
    mean, sigma, low, high = level
    watts = rng.gauss(mean, sigma)
    if phase == "boot" and rng.random() < 0.2:  # the spikes of a booting machine (disks, GPU init, fans)
        watts += rng.uniform(8.0, 18.0)
    return round(min(max(watts, low), high), 1)


def line_volts(rng: random.Random) -> float:
    return round(min(max(rng.gauss(LINE_VOLTS, 0.6), LINE_VOLTS - 3), LINE_VOLTS + 3), 1)


@dataclass
class OutletMeter:
    """One outlet's meter: the draw since the last update and the integrated counter."""

    rng: random.Random
    watts: float = 0.0
    volts: float = LINE_VOLTS
    energy_wh: float = 0.0
    phase: str = "off"
    updated: float | None = None

    @property
    def amps(self) -> float:
        return round(self.watts / self.volts, 3) if self.volts > 0 else 0.0


@dataclass(frozen=True)
class OutletSample:
    outlet: int
    watts: float
    amps: float
    volts: float
    energy_wh: float
    phase: str


@dataclass
class PowerMeter:
    """The meters of ``num_ports`` outlets. ``phase_of(outlet)`` says what each DUT does now ("off" when the
    outlet draws nothing); ``update()`` integrates every counter up to now with the draw held since the last
    update, then takes a new reading. ``clock`` is monotonic seconds (a fake one in tests)."""

    num_ports: int
    phase_of: Callable[[int], str]
    seed: int | None = None
    clock: Callable[[], float] = time.monotonic
    meters: list[OutletMeter] = field(init=False)

    def __post_init__(self) -> None:
        self.meters = [
            OutletMeter(random.Random(f"{self.seed}:{i}") if self.seed is not None else random.Random())
            for i in range(self.num_ports)
        ]

    def update(self) -> None:
        now = self.clock()
        for index, meter in enumerate(self.meters):
            if meter.updated is not None and now > meter.updated:
                meter.energy_wh += meter.watts * (now - meter.updated) / 3600.0
            meter.updated = now
            phase = self.phase_of(index)
            meter.phase = phase if phase in PHASES else "off"
            meter.watts = profile_watts(meter.phase, meter.rng)
            meter.volts = line_volts(meter.rng)

    def read(self) -> list[OutletSample]:
        """Every outlet's reading, up to date."""
        self.update()
        return [
            OutletSample(i, m.watts, m.amps, m.volts, m.energy_wh, m.phase) for i, m in enumerate(self.meters)
        ]


def format_report(samples: list[OutletSample]) -> str:
    """The body of the vPDU protocol's power answer (see ``vivian/vpdu.py``)."""
    lines = ["vpdu-power 1"]
    for s in samples:
        lines.append(f"{s.outlet} {s.watts:.1f} {s.amps:.3f} {s.volts:.1f} {s.energy_wh:.4f}")
    total_w = sum(s.watts for s in samples)
    total_wh = sum(s.energy_wh for s in samples)
    lines.append(f"total {total_w:.1f} {total_wh:.4f}")
    return "\n".join(lines) + "\n"


def parse_report(text: str) -> tuple[dict[int, tuple[float, float, float, float]], tuple[float, float] | None]:
    """A well-formed report's outlets {n: (W, A, V, Wh)} and total (W, Wh); raises ValueError on anything else.
    (For Vivian's own tools; the gateway's driver has its own tolerant parser.)"""
    lines = text.splitlines()
    if not lines or lines[0].strip() != "vpdu-power 1":
        raise ValueError("not a vpdu-power 1 report")
    outlets: dict[int, tuple[float, float, float, float]] = {}
    total = None
    for line in lines[1:]:
        words = line.split()
        if words and words[0] == "total" and len(words) == 3:
            total = (float(words[1]), float(words[2]))
        elif len(words) == 5 and words[0].isdigit():
            values = tuple(float(w) for w in words[1:])
            if not all(math.isfinite(v) for v in values):
                raise ValueError(f"bad line {line!r}")
            outlets[int(words[0])] = (values[0], values[1], values[2], values[3])
        elif words:
            raise ValueError(f"bad line {line!r}")
    return outlets, total
