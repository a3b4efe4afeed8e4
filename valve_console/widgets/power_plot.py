"""Power drawn as text: a one-line sparkline (the PDU grid's cells) and a small block plot with marks for
boots and jobs (the machine details), both width-adaptive.

The Linux console's fonts (CP437) have the full and lower-half blocks (``█ ▄``) and box lines, but not the
eighth blocks (``▁▂▃▄▅▆▇``): with ``ascii=True`` the sparkline uses ``_.-=#`` and the plot half blocks.
Heights carry the value, so colour is never the only signal. The rendering functions are pure (unit
tested on odd input: None, NaN, empty series, one point, huge values); ``PowerPlot`` is the widget.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from rich.text import Text
from textual.widget import Widget

from ..console_data import finite, format_watts

SPARK_LEVELS = "▁▂▃▄▅▆▇█"
SPARK_LEVELS_ASCII = "_.-=#"
PLOT_EIGHTHS = " ▁▂▃▄▅▆▇█"
PLOT_HALVES = " ▄█"
ZERO = "_"  # a reading of 0 W on the plot's bottom row (no reading: blank)
BOOT, JOB_START, JOB_END, JOB_SPAN = "^", "[", "]", "-"


def sparkline(values: Sequence[float | None], width: int, *, ascii: bool = False, top: float | None = None) -> str:
    """The last ``width`` values as one character each, scaled from 0 to ``top`` (default: their maximum),
    right-aligned in ``width`` characters; a missing or non-finite value is a blank."""
    if width <= 0:
        return ""
    levels = SPARK_LEVELS_ASCII if ascii else SPARK_LEVELS
    shown = [finite(v) for v in list(values)[-width:]]
    numbers = [max(0.0, v) for v in shown if v is not None]
    peak = finite(top) if top is not None else None
    if peak is None or peak <= 0:
        peak = max(numbers, default=0.0)
    chars = []
    for value in shown:
        if value is None:
            chars.append(" ")
        elif peak <= 0:
            chars.append(levels[0])
        else:
            index = int(round(min(1.0, max(0.0, value) / peak) * (len(levels) - 1)))
            chars.append(levels[index])
    return "".join(chars).rjust(width)


@dataclass
class PlotMarks:
    """What to mark under the plot: boots (times) and jobs (start, end or None while it runs)."""

    boots: list[float] = field(default_factory=list)
    jobs: list[tuple[float, float | None]] = field(default_factory=list)


def columns_of(points: Sequence[tuple[float, float]], width: int, start: float, end: float,
               max_gap: float | None = None) -> list[float | None]:
    """``points`` (``(t, watts)``) bucketed into ``width`` columns over ``[start, end]``: each column the
    largest reading in it; an empty column carries the previous reading on for ``max_gap`` seconds
    (default three times the median spacing of the points), then is None (no reading)."""
    if width <= 0:
        return []
    span = end - start
    clean = sorted((t, max(0.0, w)) for t, w in ((finite(p[0]), finite(p[1])) for p in points
                                                   if len(p) >= 2) if t is not None and w is not None)
    if not clean or not math.isfinite(span) or span <= 0:
        return [None] * width
    if max_gap is None:
        gaps = sorted(b[0] - a[0] for a, b in zip(clean, clean[1:], strict=False))
        max_gap = 3 * gaps[len(gaps) // 2] if gaps else 0.0
    step = span / width
    cols: list[float | None] = [None] * width
    stamp: list[float | None] = [None] * width
    for t, w in clean:
        if t < start or t > end:
            continue
        index = min(width - 1, int((t - start) / step))
        current = cols[index]
        cols[index] = w if current is None else max(current, w)
        stamp[index] = t
    last: tuple[float, float] | None = None
    for t, w in clean:  # the reading in force when the window starts
        if t < start:
            last = (t, w)
    for index in range(width):
        if cols[index] is not None:
            last = (float(stamp[index] or 0.0), float(cols[index] or 0.0))
            continue
        column_start = start + index * step
        if last is not None and column_start - last[0] < max(max_gap, step):
            cols[index] = last[1]
    return cols


def plot_rows(points: Sequence[tuple[float, float]], width: int, height: int, start: float, end: float, *,
              ascii: bool = False, top: float | None = None, max_gap: float | None = None) -> tuple[list[str], float]:
    """The plot's ``height`` rows of ``width`` characters (top row first) and the value of its top."""
    if width <= 0 or height <= 0:
        return [], 0.0
    cols = columns_of(points, width, start, end, max_gap)
    values = [v for v in cols if v is not None]
    peak = finite(top) if top is not None else None
    if peak is None or peak <= 0:
        peak = max(values, default=0.0)
    glyphs = PLOT_HALVES if ascii else PLOT_EIGHTHS
    steps = len(glyphs) - 1
    rows = [[" "] * width for _ in range(height)]
    for x, value in enumerate(cols):
        if value is None:
            continue
        if peak <= 0 or value <= 0:
            rows[-1][x] = ZERO
            continue
        units = max(1, int(round(min(1.0, value / peak) * height * steps)))
        for r in range(height):
            level = units - (height - 1 - r) * steps
            rows[r][x] = glyphs[max(0, min(steps, level))]
    return ["".join(row) for row in rows], peak


def marks_row(marks: PlotMarks, width: int, start: float, end: float) -> str:
    """One line under the plot: ``[---]`` over each job's run, ``^`` at each boot (boots win)."""
    if width <= 0:
        return ""
    span = end - start
    row = [" "] * width
    if not math.isfinite(span) or span <= 0:
        return "".join(row)

    def column(t: float) -> int:
        return min(width - 1, max(0, int((t - start) / span * width)))

    for job_start, job_end in marks.jobs:
        began, ended = finite(job_start), finite(job_end)
        if began is None or began > end or (ended is not None and ended < start):
            continue
        first = column(began)
        last = column(ended) if ended is not None else width - 1
        for x in range(first, last + 1):
            row[x] = JOB_SPAN
        if began >= start:
            row[first] = JOB_START
        if ended is not None and ended <= end:
            row[last] = JOB_END
    for boot in marks.boots:
        at = finite(boot)
        if at is not None and start <= at <= end:
            row[column(at)] = BOOT
    return "".join(row)


def clock(stamp: float) -> str:
    try:
        return time.strftime("%H:%M", time.localtime(stamp))
    except (OverflowError, OSError, ValueError):
        return "?"


def render_plot(points: Sequence[tuple[float, float]], width: int, height: int, start: float, end: float,
                marks: PlotMarks | None = None, *, ascii: bool = False) -> list[str]:
    """The whole plot as lines of at most ``width`` characters: a watts axis on the left, the bars, the
    marks line, the time axis, and a legend. Too narrow (under 21 columns): one line saying so."""
    label_width = 8
    plot_width = width - label_width - 1
    if plot_width < 12 or height < 1:
        return ["too narrow"[:max(0, width)]]
    rows, peak = plot_rows(points, plot_width, height, start, end, ascii=ascii)
    lines = []
    for index, row in enumerate(rows):
        label = format_watts(peak) if index == 0 else ("0 W" if index == height - 1 else "")
        lines.append(f"{label:>{label_width}}│{row}")
    if not any(r.strip() for r in rows):
        lines[len(lines) // 2] = f"{'':>{label_width}}│" + "no reading in this window".center(plot_width)
    lines.append(f"{'':>{label_width}}│{marks_row(marks or PlotMarks(), plot_width, start, end)}")
    left, right = clock(start), clock(end)
    axis = left + right.rjust(plot_width - len(left)) if plot_width > len(left) + len(right) else left
    lines.append(f"{'':>{label_width}}└{axis}")
    lines.append(f"{'':>{label_width}} {BOOT} boot (outlet ON)  {JOB_START}{JOB_SPAN}{JOB_END} job"
                 f"  {ZERO} 0 W  blank: no reading")
    return [line[:width] for line in lines]


class PowerPlot(Widget):
    """A block plot of one outlet's watts over a window, redrawn at whatever width it gets."""

    DEFAULT_CSS = """
    PowerPlot { height: 11; width: 1fr; }
    """

    PLOT_HEIGHT = 7  # rows of bars; + marks, time axis and legend

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.points: list[tuple[float, float]] = []
        self.start = 0.0
        self.end = 0.0
        self.marks = PlotMarks()
        self.note = "reading the power..."

    def set_series(self, points: Sequence[tuple[float, float]], start: float, end: float,
                   marks: PlotMarks | None = None, note: str = "") -> None:
        self.points = list(points)
        self.start, self.end = start, end
        self.marks = marks or PlotMarks()
        self.note = note
        self.refresh()

    def set_note(self, note: str) -> None:
        self.note = note
        self.refresh()

    def render(self) -> Text:
        width = self.content_region.width or self.size.width
        if self.note:
            return Text(self.note, style="dim")
        ascii = bool(getattr(self.app, "linux_console", False))
        lines = render_plot(self.points, width, self.PLOT_HEIGHT, self.start, self.end, self.marks, ascii=ascii)
        text = Text(no_wrap=True, overflow="crop")
        for index, line in enumerate(lines):
            if index:
                text.append("\n")
            if index < self.PLOT_HEIGHT:
                text.append(line[:9], style="dim")
                text.append(line[9:], style="green")
            else:
                text.append(line, style="dim" if index > self.PLOT_HEIGHT else "bold")
        return text
