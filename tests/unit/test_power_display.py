"""The console's power helpers: watts and energy in words, loads, the recent-watts buffer, the sparkline and
the plot, on odd input too (None, NaN, infinities, empty series, one point, huge values)."""

from __future__ import annotations

import math

import pytest

from valve_console.console_data import PowerHistory, farm_watts, format_joules, format_watts, format_wh, pdu_watts
from valve_console.contract import Outlet, OutletPower, Pdu
from valve_console.widgets.power_plot import (
    PlotMarks,
    columns_of,
    marks_row,
    plot_rows,
    render_plot,
    sparkline,
)


def outlet(watts: float | None, metered: bool = True, at: float = 100.0, state: str = "ON",
           changed_at: float | None = None) -> Outlet:
    power = None if watts is None and not metered else OutletPower(watts=watts, at=at)
    return Outlet(state=state, reserved=False, min_off_time=5.0, metered=metered, power=power if metered else None,
                  changed_at=changed_at)


def pdu(ports: dict[str, Outlet], total: float | None = None) -> Pdu:
    return Pdu(name="p", driver="dummy", pdu_model="dummy", config={}, reserved_ports=[], state="reachable",
               ports=ports, metered=True, total_watts=total)


@pytest.mark.parametrize(("watts", "shown"), [
    (143, "143 W"), (143.4, "143 W"), (4.2, "4.20 W"), (12.34, "12.3 W"), (0, "0 W"), (0.0, "0 W"),
    (999.9, "1.00 kW"), (1250, "1.25 kW"), (3.1e6, "3.10 MW"), (1e15, "1000000000 MW"), (-5, "-5.00 W"),
    (None, ""), (math.nan, ""), (math.inf, ""), (-math.inf, ""), ("x", ""), (True, ""),
])
def test_format_watts(watts: object, shown: str) -> None:
    assert format_watts(watts) == shown


@pytest.mark.parametrize(("joules", "si", "wh"), [
    (12_300, "12.3 kJ", "3.42 Wh"), (1476, "1.48 kJ", "0.41 Wh"), (850, "850 J", "0.24 Wh"), (0, "0 J", "0 Wh"),
    (4.5e6, "4.50 MJ", "1.25 kWh"), (1.2e9, "1.20 GJ", "333 kWh"), (1e20, "100000000000 GJ", "27777777778 MWh"),
    (None, "", ""), (math.nan, "", ""), (math.inf, "", ""),
])
def test_format_energy(joules: object, si: str, wh: str) -> None:
    assert format_joules(joules) == si
    assert format_wh(joules) == wh


def test_loads_prefer_the_pdus_total_and_skip_the_unmetered() -> None:
    ports = {"1": outlet(100.0), "2": outlet(40.0), "3": outlet(None, metered=False), "4": outlet(math.nan)}
    assert pdu_watts(pdu(ports)) == 140.0
    assert pdu_watts(pdu(ports, total=151.5)) == 151.5
    assert pdu_watts(pdu({"1": outlet(None, metered=False)})) is None
    assert farm_watts({"a": pdu(ports), "b": pdu({"1": outlet(None, metered=False)})}) == 140.0
    assert farm_watts({}) is None


def test_history_is_bounded_ordered_and_notes_boots() -> None:
    history = PowerHistory(points=5, seconds=100.0, max_outlets=2)
    for i in range(10):
        history.add("p", "1", outlet(float(i), at=1000.0 + i))
    assert history.recent_watts("p", "1") == [5.0, 6.0, 7.0, 8.0, 9.0]
    assert not history.add("p", "1", outlet(99.0, at=1000.0))  # older than the newest: dropped
    assert not history.add("p", "1", outlet(99.0, at=1009.0))  # the same reading again
    assert not history.add("p", "1", outlet(math.nan, at=2000.0))
    assert not history.add("p", "1", None)
    history.add("p", "1", outlet(1.0, at=1200.0))  # the old ones are past the age bound
    assert history.recent_watts("p", "1") == [1.0]
    history.add("p", "2", outlet(1.0, at=1.0))
    history.add("p", "3", outlet(1.0, at=1.0))  # a third outlet pushes the oldest out
    assert history.recent_watts("p", "1") == []
    history.add("p", "2", outlet(1.0, at=2.0, state="OFF"))
    history.add("p", "2", outlet(1.0, at=3.0, state="ON", changed_at=3.0))
    assert history.boots("p", "2") == [3.0]
    assert history.boots("p", "9", outlet(1.0, changed_at=50.0)) == [50.0]
    history.forget_pdu("p")
    assert history.recent_watts("p", "2") == [] and history.boots("p", "2") == []


def test_sparkline() -> None:
    assert sparkline([0, 50, 100], 5) == "  ▁▅█"
    assert sparkline([0, 50, 100], 5, ascii=True) == "  _-#"
    assert sparkline([], 4) == "    "
    assert sparkline([7.0], 3) == "  █"
    assert sparkline([0.0, 0.0], 2) == "▁▁"
    assert sparkline([None, math.nan, math.inf, 10.0], 4) == "   █"
    assert sparkline([1e300, 1.0], 2) == "█▁"
    assert sparkline(list(range(100)), 3) == "███"
    assert sparkline([5.0, -5.0], 2, top=10.0) == "▅▁"
    assert sparkline([1.0], 0) == "" and sparkline([1.0], -3) == ""
    assert all(c in " _.-=#" for c in sparkline([3, 1, 4, 1, 5, 9, 2, 6], 8, ascii=True))


def test_columns_and_rows_of_odd_series() -> None:
    assert columns_of([], 4, 0, 100) == [None] * 4
    assert columns_of([(50.0, 10.0)], 4, 0, 100) == [None, None, 10.0, None]
    assert columns_of([(0, 1.0), (100, 2.0)], 4, 100, 100) == [None] * 4  # an empty window
    assert columns_of([(math.nan, 1.0), (10.0, math.nan), (10.0, 3.0)], 2, 0, 100) == [3.0, 3.0]
    # readings 10 s apart carry across 25-s columns; a long silence does not
    cols = columns_of([(0, 5.0), (10, 5.0), (20, 5.0), (200, 8.0)], 10, 0, 250)
    assert cols[0] == 5.0 and cols[3] is None and cols[8] == 8.0
    rows, peak = plot_rows([(0, 0.0), (50, 100.0), (99, 1e12)], 3, 2, 0, 100)
    assert peak == 1e12 and rows == ["  █", "_▁█"]
    assert plot_rows([], 3, 2, 0, 100) == (["   ", "   "], 0.0)
    assert plot_rows([(1, 1.0)], 0, 2, 0, 100) == ([], 0.0)
    rows, _ = plot_rows([(0, 4.0), (60, 8.0)], 2, 1, 0, 100, ascii=True)
    assert rows == ["▄█"]


def test_marks_and_the_whole_plot() -> None:
    marks = PlotMarks(boots=[10.0, 500.0], jobs=[(20.0, 60.0), (80.0, None), (-50.0, -10.0)])
    assert marks_row(marks, 10, 0, 100) == " ^[---] [-"
    assert marks_row(PlotMarks(), 0, 0, 100) == ""
    assert marks_row(marks, 5, 100, 100) == "     "
    lines = render_plot([(t, 100.0) for t in range(0, 3600, 30)], 60, 4, 0, 3600, marks, ascii=True)
    assert len(lines) == 4 + 3 and all(len(line) <= 60 for line in lines)
    assert lines[0].lstrip().startswith("100 W") and "█" in lines[0]
    empty = render_plot([], 60, 4, 0, 3600)
    assert any("no reading in this window" in line for line in empty)
    assert render_plot([(0, 1.0)], 10, 4, 0, 3600) == ["too narrow"]
