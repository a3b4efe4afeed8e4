"""OutletGrid: one PDU's outlets as a grid of cells (a DataTable with a cell cursor).

Each cell shows three lines: the outlet id and its state as text and colour (``[ON ]``,
``[off]``, ``[ ? ]``), its label, and the machine plugged into it; on a metered PDU a fourth line: the
outlet's recent watts as a sparkline and its latest reading (``143 W``; nothing on an unmetered outlet).
Cells are updated in place.
"""

from __future__ import annotations

from rich.text import Text
from textual.coordinate import Coordinate
from textual.widgets import DataTable

from ..console_data import FarmModel, format_watts, outlet_watts, port_sort_key
from ..contract import Machine, Outlet, Pdu
from .power_plot import sparkline
from .state_badge import outlet_badge

PER_ROW = 8
CELL_WIDTH = 15
WATTS_WIDTH = 7  # "1.25 kW"
SPARK_WIDTH = CELL_WIDTH - WATTS_WIDTH - 1


def is_metered(pdu: Pdu) -> bool:
    return pdu.metered or any(o.metered for o in pdu.ports.values())


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
        self._ready = False
        self._metered = False

    def on_mount(self) -> None:
        for col in range(PER_ROW):
            self.add_column("", key=f"c{col}", width=CELL_WIDTH)
        self._ready = True
        if self._pending is not None:
            self.sync(*self._pending)
            self._pending = None

    # ---------------------------------------------------------------- content
    @staticmethod
    def cell_text(port: str, info: Outlet | None, machine: Machine | None, *, metered: bool = False,
                  recent: list[float] | None = None, ascii: bool = False) -> Text:
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append(f"{port:>3} ", style="bold")
        text.append_text(outlet_badge(info.state if info else None))
        if info and info.reserved:
            text.append(" res", style="dim")
        text.append("\n")
        text.append(((info.label if info else None) or "")[:CELL_WIDTH], style="dim")
        text.append("\n")
        if machine is not None:
            text.append((machine.full_name or machine.mac_address)[:CELL_WIDTH], style="cyan")
        else:
            text.append("-", style="dim")
        if metered:
            text.append("\n")
            if info is not None and info.metered:
                watts = outlet_watts(info)
                text.append(sparkline(recent or [], SPARK_WIDTH, ascii=ascii), style="green")
                text.append(" ")
                text.append((format_watts(watts) if watts is not None else "- W").rjust(WATTS_WIDTH), style="bold")
        return text

    def coordinate_of(self, port: str) -> Coordinate | None:
        try:
            index = self.ports.index(port)
        except ValueError:
            return None
        return Coordinate(index // PER_ROW, index % PER_ROW)

    def port_at(self, coordinate: Coordinate) -> str | None:
        index = coordinate.row * PER_ROW + coordinate.column
        return self.ports[index] if 0 <= index < len(self.ports) else None

    @property
    def selected_port(self) -> str | None:
        if not self.ports:
            return None
        return self.port_at(self.cursor_coordinate)

    def sync(self, pdu: Pdu, model: FarmModel) -> None:
        """Show ``pdu``'s outlets: rebuild only when the set of outlets changed, else update cells."""
        if not self._ready:
            self._pending = (pdu, model)
            return
        ports = sorted(pdu.ports, key=port_sort_key)
        metered = is_metered(pdu)
        if ports != self.ports or metered != self._metered:
            self._metered = metered
            cursor = self.selected_port
            self.clear()
            self.ports = ports
            self._cells.clear()
            for row_start in range(0, len(ports), PER_ROW):
                cells = [self._render(port, model) for port in ports[row_start : row_start + PER_ROW]]
                cells += [Text("")] * (PER_ROW - len(cells))
                self.add_row(*cells, height=4 if metered else 3, key=f"r{row_start // PER_ROW}")
            if cursor is not None and (coord := self.coordinate_of(cursor)) is not None:
                self.cursor_coordinate = coord
            return
        for port in ports:
            self.refresh_port(port, model)

    def _cell(self, port: str, model: FarmModel) -> Text:
        return self.cell_text(port, model.outlet(self.pdu, port), model.machine_on(self.pdu, port),
                              metered=self._metered, recent=model.power.recent_watts(self.pdu, port),
                              ascii=bool(getattr(self.app, "linux_console", False)))

    def _render(self, port: str, model: FarmModel) -> Text:
        text = self._cell(port, model)
        self._cells[port] = text
        return text

    def refresh_port(self, port: str, model: FarmModel) -> None:
        if not self._ready:
            return
        coordinate = self.coordinate_of(port)
        if coordinate is None:
            return
        old = self._cells.get(port)
        new = self._cell(port, model)
        if old is None or old.plain != new.plain or old.spans != new.spans:
            self._cells[port] = new
            self.update_cell_at(coordinate, new)
