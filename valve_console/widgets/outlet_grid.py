"""OutletGrid: one PDU's outlets as a grid of cells (a DataTable with a cell cursor).

Each cell shows three lines:

1. the outlet id and its state as text and colour (``[ON ]``, ``[off]``, ``[ ? ]``), a ``!`` when its
   last switch read back another state (``Outlet.mismatch``), ``res`` when a machine sits on a reserved
   outlet;
2. the machine on it, its name in its state's colour, or ``free`` / ``reserved``;
3. the machine's state as a word (colour is never the only signal), the mismatch in words, the outlet's
   label, as much as fits.

On a metered PDU a fourth line: the outlet's recent watts as a sparkline and its latest reading (``143 W``;
nothing on an unmetered outlet). Cells are updated in place.

The grid fills its width: as many columns as cells of at least ``MIN_CELL`` (or the longest machine name
on the PDU, up to ``MAX_NAME``) fit, balanced over the rows (16 outlets in 8 + 8, not 9 + 7), the cells
stretched to the full width; a resize lays it out again (the cursor stays on its outlet).
"""

from __future__ import annotations

from rich.text import Text
from textual import events
from textual.coordinate import Coordinate
from textual.widgets import DataTable

from ..console_data import FarmModel, format_watts, outlet_of, outlet_watts, port_sort_key
from ..contract import Machine, Outlet, Pdu
from .power_plot import sparkline
from .state_badge import MACHINE_STYLES, outlet_badge

MIN_CELL = 15  # "vivian-virtio-1"; "  3 [ON ] !" + a label's start
MAX_NAME = 30  # cells grow up to this to show a long machine name whole
GAP = 2  # DataTable cell_padding=1 on each side
WATTS_WIDTH = 7  # "1.25 kW"
# kept for callers that size things from the default cell
CELL_WIDTH = MIN_CELL
SPARK_WIDTH = CELL_WIDTH - WATTS_WIDTH - 1

FREE_STYLE = "dim"
RESERVED_STYLE = "bold magenta"
MISMATCH_STYLE = "bold red"


def is_metered(pdu: Pdu) -> bool:
    return pdu.metered or any(o.metered for o in pdu.ports.values())


def grid_layout(width: int, outlets: int, longest: int = 0) -> tuple[int, int]:
    """(columns, cell width) for ``outlets`` cells in ``width`` columns of the screen.

    Cells are at least ``MIN_CELL`` wide, wider for a long machine name (up to ``MAX_NAME``); as many
    columns as fit, then as few as keep the same number of rows (balanced rows), stretched to ``width``.
    """
    want = max(MIN_CELL, min(MAX_NAME, longest))
    columns = max(1, min(max(outlets, 1), width // (want + GAP)))
    rows = -(-max(outlets, 1) // columns)
    columns = -(-max(outlets, 1) // rows)
    cell = max(MIN_CELL if width >= MIN_CELL + GAP else 4, width // columns - GAP)
    return columns, cell


def fit(text: str, width: int, ascii: bool = False) -> str:
    """``text`` cut to ``width`` cells, a cut shown by an ellipsis (``~`` on the Linux console)."""
    if len(text) <= width:
        return text
    return text[: max(width - 1, 0)] + ("~" if ascii else "…")


class OutletGrid(DataTable[Text]):
    DEFAULT_CSS = """
    OutletGrid { height: auto; max-height: 100%; }
    """

    def __init__(self, pdu: str, *, id: str | None = None) -> None:
        super().__init__(id=id, show_header=False, cursor_type="cell", zebra_stripes=False,
                         cell_padding=1)
        self.pdu = pdu
        self.ports: list[str] = []
        self._cells: dict[str, Text] = {}
        self._pending: tuple[Pdu, FarmModel] | None = None
        self._last: tuple[Pdu, FarmModel] | None = None
        self._ready = False
        self._metered = False
        self.per_row = 8
        self.cell_width = MIN_CELL
        self._longest = 0  # the longest machine name the layout made room for

    def on_mount(self) -> None:
        self._ready = True
        if self._pending is not None:
            self.sync(*self._pending)
            self._pending = None

    def on_resize(self, event: events.Resize) -> None:
        if self._last is not None and self._layout_for(*self._last) != (self.per_row, self.cell_width):
            self._rebuild(*self._last)

    # ---------------------------------------------------------------- content
    @staticmethod
    def cell_text(port: str, info: Outlet | None, machine: Machine | None, *, metered: bool = False,
                  recent: list[float] | None = None, ascii: bool = False, width: int = CELL_WIDTH) -> Text:
        text = Text(no_wrap=True, overflow="crop")
        # 1: id, state, marks, label
        text.append(f"{port:>3} ", style="bold")
        text.append_text(outlet_badge(info.state if info else None))
        used = 4 + 5
        mismatch = info.mismatch if info else None
        if mismatch:
            text.append(" !", style=MISMATCH_STYLE)
            used += 2
        if info and info.reserved and machine is not None:
            text.append(" res", style=RESERVED_STYLE)
        text.append("\n")
        # 2: who is on it
        if machine is not None:
            style = MACHINE_STYLES.get(machine.state, "")
            text.append(fit(machine.full_name or machine.mac_address, width, ascii), style=f"bold {style}".strip())
        elif info and info.reserved:
            text.append("reserved", style=RESERVED_STYLE)
        else:
            text.append("free", style=FREE_STYLE)
        text.append("\n")
        # 3: the machine's state in words, the mismatch in words, the label: as much as fits
        parts: list[tuple[str, str]] = []
        if machine is not None:
            parts.append((machine.state, MACHINE_STYLES.get(machine.state, "")))
        if mismatch:
            parts.append((f"! {mismatch}", MISMATCH_STYLE))
        label = (info.label if info else None) or ""
        if label:
            parts.append((label, "dim"))
        used = 0
        for word, style in parts:
            gap = 1 if used else 0
            if width - used - gap < 4:
                break
            shown = fit(word, width - used - gap, ascii)
            text.append(" " * gap + shown, style=style)
            used += gap + len(shown)
        if metered:
            text.append("\n")
            if info is not None and info.metered:
                watts = outlet_watts(info)
                text.append(sparkline(recent or [], max(width - WATTS_WIDTH - 1, 1), ascii=ascii), style="green")
                text.append(" ")
                text.append((format_watts(watts) if watts is not None else "- W").rjust(WATTS_WIDTH), style="bold")
        return text

    def coordinate_of(self, port: str) -> Coordinate | None:
        try:
            index = self.ports.index(port)
        except ValueError:
            return None
        return Coordinate(index // self.per_row, index % self.per_row)

    def port_at(self, coordinate: Coordinate) -> str | None:
        index = coordinate.row * self.per_row + coordinate.column
        return self.ports[index] if 0 <= index < len(self.ports) and coordinate.column < self.per_row else None

    @property
    def selected_port(self) -> str | None:
        if not self.ports:
            return None
        return self.port_at(self.cursor_coordinate)

    def _layout_for(self, pdu: Pdu, model: FarmModel) -> tuple[int, int]:
        width = self.scrollable_content_region.width or self.size.width
        if width <= 0:
            width = (self.per_row * (self.cell_width + GAP)) if self.ports else 8 * (MIN_CELL + GAP)
        return grid_layout(width, len(pdu.ports), self._longest_name(model))

    def _longest_name(self, model: FarmModel) -> int:
        return max((len(m.full_name or m.mac_address) for m in model.machines.values()
                    if outlet_of(m)[0] == self.pdu), default=0)

    def sync(self, pdu: Pdu, model: FarmModel) -> None:
        """Show ``pdu``'s outlets: rebuild only when the set of outlets or the layout changed, else update
        cells."""
        if not self._ready:
            self._pending = (pdu, model)
            return
        self._last = (pdu, model)
        ports = sorted(pdu.ports, key=port_sort_key)
        metered = is_metered(pdu)
        if ports != self.ports or metered != self._metered or self._layout_for(pdu, model) != (
                self.per_row, self.cell_width):
            self._rebuild(pdu, model)
            return
        for port in ports:
            self.refresh_port(port, model)

    def _rebuild(self, pdu: Pdu, model: FarmModel) -> None:
        self._last = (pdu, model)
        cursor = self.selected_port
        self._metered = is_metered(pdu)
        self.per_row, self.cell_width = self._layout_for(pdu, model)
        self._longest = self._longest_name(model)
        self.clear(columns=True)
        for col in range(self.per_row):
            self.add_column("", key=f"c{col}", width=self.cell_width)
        ports = self.ports = sorted(pdu.ports, key=port_sort_key)
        self._cells.clear()
        for row_start in range(0, len(ports), self.per_row):
            cells = [self._render(port, model) for port in ports[row_start : row_start + self.per_row]]
            cells += [Text("")] * (self.per_row - len(cells))
            self.add_row(*cells, height=4 if self._metered else 3, key=f"r{row_start // self.per_row}")
        if cursor is not None and (coord := self.coordinate_of(cursor)) is not None:
            self.cursor_coordinate = coord

    def _cell(self, port: str, model: FarmModel) -> Text:
        return self.cell_text(port, model.outlet(self.pdu, port), model.machine_on(self.pdu, port),
                              metered=self._metered, recent=model.power.recent_watts(self.pdu, port),
                              ascii=bool(getattr(self.app, "linux_console", False)), width=self.cell_width)

    def _render(self, port: str, model: FarmModel) -> Text:
        text = self._cell(port, model)
        self._cells[port] = text
        return text

    def refresh_port(self, port: str, model: FarmModel) -> None:
        if not self._ready:
            return
        if self._last is not None and model.pdus.get(self.pdu) is not None:
            self._last = (model.pdus[self.pdu], model)
            machine = model.machine_on(self.pdu, port)
            name = len(machine.full_name or machine.mac_address) if machine is not None else 0
            if name > max(self.cell_width, self._longest):
                self._longest = name  # once per longer name, not at every reading of its outlet
                if self._layout_for(*self._last) != (self.per_row, self.cell_width):
                    self._rebuild(*self._last)  # a longer name than the cells hold: wider cells if they fit
                    return
        coordinate = self.coordinate_of(port)
        if coordinate is None:
            return
        old = self._cells.get(port)
        new = self._cell(port, model)
        if old is None or old.plain != new.plain or old.spans != new.spans:
            self._cells[port] = new
            self.update_cell_at(coordinate, new)
