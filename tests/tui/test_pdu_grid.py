"""The PDU grid at a glance (issue 19, item 2): who is on each outlet (name and state word, in the state's
colour), free and reserved outlets, a read-back mismatch, and a grid as wide as the screen."""

from __future__ import annotations

import copy
from typing import Any

from rich.style import Style
from rich.text import Text
from textual.pilot import Pilot
from textual.widgets import Static

from valve_console.app import ConsoleApp, make_app
from valve_console.screens.pdus import PdusScreen
from valve_console.widgets.outlet_grid import MIN_CELL, OutletGrid, grid_layout
from valve_console.widgets.state_badge import MACHINE_STYLES

from .fake_farm import JOURNAL_EVENTS, FakeFarmClient, farm_data
from .helpers import screen_text, wait_for
from .test_snapshots import goto

MISMATCH = "read back OFF after switching ON"
VIRTIO_1 = "52:54:00:11:22:03"  # vivian-virtio-1, RUNNING, on vpdu1/3
VIRTIO_2 = "52:54:00:11:22:05"  # vivian-virtio-2, NOT_READY, on vpdu1/5


def data_with_mismatch() -> dict[str, Any]:
    data = farm_data()
    data["pdus"]["vpdu1"]["ports"]["5"]["mismatch"] = MISMATCH
    return data


def grid_app(later_events: list[dict[str, Any]] | None = None, linux_console: bool = False) -> ConsoleApp:
    client = FakeFarmClient(data_with_mismatch(), events=JOURNAL_EVENTS, later_events=later_events)
    return make_app(client, linux_console=linux_console)


async def open_grid(pilot: Pilot[Any]) -> PdusScreen:
    await goto(pilot, "3")
    screen = pilot.app.screen
    assert isinstance(screen, PdusScreen)
    await wait_for(pilot, lambda: screen.sections["vpdu1"].grid.ports, 5, "the vpdu1 grid")
    return screen


def grid(screen: PdusScreen, pdu: str = "vpdu1") -> OutletGrid:
    return screen.sections[pdu].grid


def cell(screen: PdusScreen, port: str, pdu: str = "vpdu1") -> Text:
    """The cell as the grid shows it (read back from the table, not from the grid's own cache)."""
    g = grid(screen, pdu)
    coordinate = g.coordinate_of(port)
    assert coordinate is not None
    return g.get_cell_at(coordinate)


def style_of(text: Text, word: str) -> Style:
    """The style ``word`` is drawn in (the spans covering its first character)."""
    start = text.plain.index(word)
    style = Style.parse(str(text.style)) if text.style else Style()
    for span in text.spans:
        if span.start <= start < span.end:
            style += Style.parse(span.style) if isinstance(span.style, str) else span.style
    return style


async def test_a_cell_names_the_machine_and_its_state_in_words_and_colour() -> None:
    app = grid_app()
    async with app.run_test(size=(140, 45)) as pilot:
        screen = await open_grid(pilot)
        busy = cell(screen, "3")
        lines = busy.plain.splitlines()
        assert lines[1].strip() == "vivian-virtio-1"
        assert lines[2].split()[0] == "RUNNING"  # a word, not only a colour
        running = Style.parse(MACHINE_STYLES["RUNNING"])
        assert style_of(busy, "vivian-virtio-1").color == running.color
        assert style_of(busy, "RUNNING").color == running.color
        retired = cell(screen, "12").plain.splitlines()
        assert retired[1] == "vivian-virtio-3" and retired[2].split()[0] == "RETIRED"
        assert "vivian-virtio-1" in screen_text(app) and "RUNNING" in screen_text(app)


async def test_free_and_reserved_outlets_say_so() -> None:
    app = grid_app()
    async with app.run_test(size=(140, 45)) as pilot:
        screen = await open_grid(pilot)
        assert cell(screen, "0").plain.splitlines()[1] == "free"
        assert cell(screen, "15").plain.splitlines()[1] == "reserved"  # vpdu1's reserved port
        assert cell(screen, "2", pdu="bench").plain.splitlines()[1] == "free"
        assert style_of(cell(screen, "15"), "reserved") != style_of(cell(screen, "0"), "free")


async def test_a_read_back_mismatch_is_marked_in_the_cell_and_said_on_the_detail_line() -> None:
    app = grid_app()
    async with app.run_test(size=(140, 45)) as pilot:
        screen = await open_grid(pilot)
        first = cell(screen, "5").plain.splitlines()[0]
        assert first.startswith("  5 [ON ] !"), first
        assert "! re" in cell(screen, "5").plain.splitlines()[2]  # the start of the words, as room allows
        assert "!" not in cell(screen, "3").plain  # only the outlet that read back wrong
        assert screen.select_outlet("vpdu1", "5")
        await pilot.pause()
        detail = str(screen.query_one("#outlet-detail", Static).render())
        assert "vpdu1/5" in detail and "vivian-virtio-2 NOT_READY" in detail
        assert f"! mismatch: {MISMATCH}" in detail
        await pilot.press("left")  # the keyboard moves the cursor, the detail line follows
        await wait_for(pilot, lambda: "vpdu1/4" in str(screen.query_one("#outlet-detail", Static).render()), 5,
                       "the detail of outlet 4")
        detail = str(screen.query_one("#outlet-detail", Static).render())
        assert "free" in detail and "mismatch" not in detail


async def test_the_grid_fills_the_screen_s_width() -> None:
    columns = {}
    for width, height in ((80, 24), (160, 50)):
        app = grid_app()
        async with app.run_test(size=(width, height)) as pilot:
            screen = await open_grid(pilot)
            g = grid(screen)
            columns[width] = g.per_row
            assert g.cell_width >= MIN_CELL  # names stay readable
            used = g.per_row * (g.cell_width + 2)
            assert g.size.width - used < g.cell_width + 2, (width, g.per_row, g.cell_width, g.size)  # no room left
            assert not g.show_horizontal_scrollbar  # nothing cut off to the right
            # keyboard navigation still reaches every outlet, across rows
            g.focus()
            g.cursor_coordinate = g.coordinate_of("0")  # type: ignore[assignment]
            await pilot.press(*["right"] * (g.per_row - 1))
            assert g.selected_port == str(g.per_row - 1)
            await pilot.press("down")
            assert g.selected_port == str(2 * g.per_row - 1)
    assert columns[160] > columns[80], columns
    assert columns[80] >= 4


async def test_the_grid_lays_itself_out_again_on_a_resize() -> None:
    app = grid_app()
    async with app.run_test(size=(160, 50)) as pilot:
        screen = await open_grid(pilot)
        g = grid(screen)
        wide = g.per_row
        assert screen.select_outlet("vpdu1", "13")
        await pilot.resize_terminal(80, 24)
        await wait_for(pilot, lambda: g.per_row < wide, 5, "fewer columns")
        assert g.selected_port == "13"  # the cursor stayed on its outlet
        assert "vivian-virtio-1" in cell(screen, "3").plain


def test_grid_layout_balances_rows_and_grows_for_long_names() -> None:
    assert grid_layout(152, 16) == (8, 17)  # 9 would fit: 8 + 8 rather than 9 + 7
    assert grid_layout(76, 16) == (4, 17)
    assert grid_layout(152, 4) == (4, 36)  # a small PDU: wide cells
    columns, cell_width = grid_layout(152, 16, longest=26)
    assert cell_width >= 26 and columns == 4
    assert grid_layout(10, 16)[0] == 1


async def test_a_machine_renamed_or_moved_repaints_its_cells() -> None:
    data = farm_data()
    renamed = copy.deepcopy(data["machines"][VIRTIO_1])
    renamed.update(full_name="bench-runner-7", state="IDLE")
    moved = copy.deepcopy(data["machines"][VIRTIO_2])
    moved["pdu"] = {"name": "vpdu1", "port_id": "7"}
    events = [
        {"type": "machine", "seq": 100, "ts": 0.0, "data": {"action": "updated", "mac": VIRTIO_1, "machine": renamed}},
        {"type": "machine", "seq": 101, "ts": 0.0, "data": {"action": "updated", "mac": VIRTIO_2, "machine": moved}},
    ]
    app = grid_app(later_events=events)
    async with app.run_test(size=(140, 45)) as pilot:
        screen = await open_grid(pilot)
        await wait_for(pilot, lambda: "bench-runner-7" in cell(screen, "3").plain, 5, "the new name")
        assert cell(screen, "3").plain.splitlines()[2].split()[0] == "IDLE"
        assert style_of(cell(screen, "3"), "IDLE").color == Style.parse(MACHINE_STYLES["IDLE"]).color
        await wait_for(pilot, lambda: "vivian-virtio-2" in cell(screen, "7").plain, 5, "the machine on outlet 7")
        assert cell(screen, "5").plain.splitlines()[1] == "free"


async def test_the_grid_on_the_linux_console_stays_ascii() -> None:
    app = grid_app(linux_console=True)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_grid(pilot)
        text = "".join(cell(screen, p).plain for p in grid(screen).ports)
        assert text.isascii(), [c for c in text if not c.isascii()]
        assert "~" in text  # a label cut short says so in ASCII


async def test_a_long_name_widens_the_cells_when_the_screen_has_room() -> None:
    name = "gpu-radeon-rx7900-bench-02"  # 26 cells
    renamed = copy.deepcopy(farm_data()["machines"][VIRTIO_1])
    renamed["full_name"] = name
    events = [{"type": "machine", "seq": 100, "ts": 0.0,
               "data": {"action": "updated", "mac": VIRTIO_1, "machine": renamed}}]
    app = grid_app(later_events=events)
    async with app.run_test(size=(140, 45)) as pilot:
        screen = await open_grid(pilot)
        g = grid(screen)
        await wait_for(pilot, lambda: name in cell(screen, "3").plain, 5, "the whole long name")
        short_names = grid_layout(g.scrollable_content_region.width, 16)[0]
        assert g.cell_width >= len(name) and g.per_row < short_names
        assert cell(screen, "3").plain.splitlines()[1] == name
