"""PDU screen: one outlet grid per PDU; switch the selected outlet, add and remove PDUs.

Outlet discovery: ``d`` powers the selected (free, off) outlet on and gives it to the next machine
that registers, ``D`` does that for every free outlet of the PDU in turn ("find outlets"), ``C`` or
``esc`` cancels (all confirmed first). A status line shows the outlet being discovered, the time
left and how many outlets are queued, kept up to date from ``discovery`` events.

The detail line under the grids says the selected outlet in words: its PDU and id, label, state, the machine on
it and that machine's state (or free / reserved), who holds its lock, and a read-back mismatch
(``! mismatch: read back OFF after switching ON``; the cell only has room for the ``!``).
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.widgets import DataTable, Static

from ..console_data import Changes, FarmModel, format_watts, outlet_of, pdu_watts
from ..contract import Pdu
from ..widgets.outlet_grid import FREE_STYLE, MISMATCH_STYLE, RESERVED_STYLE, OutletGrid
from ..widgets.state_badge import machine_state, outlet_badge
from .base import FarmScreen


class PduSection(Vertical):
    """Title line (name, driver, reachability, error) and the outlet grid of one PDU; a metered PDU's
    load (its own total, else the sum of its outlets) in its border title."""

    DEFAULT_CSS = """
    PduSection { height: auto; border: solid $primary; padding: 0 0; margin: 0 0 1 0; }
    PduSection:focus-within { border: double $accent; }
    PduSection .pdu-info { height: auto; padding: 0 1; }
    """

    def __init__(self, name: str) -> None:
        super().__init__(classes="pdu-section")
        self.pdu_name = name
        self.grid = OutletGrid(name)
        self.info = Static("", classes="pdu-info")

    def compose(self) -> ComposeResult:
        yield self.info
        yield self.grid

    def sync(self, pdu: Pdu, model: FarmModel) -> None:
        self.update_info(pdu)
        self.grid.sync(pdu, model)

    def update_info(self, pdu: Pdu) -> None:
        state = pdu.state or "unknown"
        title = f" {self.pdu_name} "
        if pdu.metered or any(o.metered for o in pdu.ports.values()):
            load = pdu_watts(pdu)
            dash = str(getattr(self.app, "dash", " - "))
            title = f" {self.pdu_name}{dash}{format_watts(load) if load is not None else 'no reading'} "
        if self.border_title != title:
            self.border_title = title
        info = Text()
        info.append(f"driver {pdu.driver or pdu.pdu_model or '?'}  ")
        config = pdu.config
        if "hostname" in config:
            info.append(f"at {config['hostname']}  ")
        style = {"reachable": "bold green", "unreachable": "bold red"}.get(state, "yellow")
        info.append(f"[{state}]", style=style)
        ports = pdu.ports
        on = sum(1 for p in ports.values() if str(p.state).upper() == "ON")
        info.append(f"  {len(ports)} outlets, {on} on")
        if pdu.error:
            info.append(f"  error: {pdu.error}", style="red")
        self.info.update(info)


class PdusScreen(FarmScreen):
    MODE = "pdus"

    BINDINGS = [
        Binding("o", "power('on')", "On"),
        Binding("f", "power('off')", "Off"),
        Binding("r", "power('reboot')", "Reboot"),
        Binding("a", "add_pdu", "Add PDU"),
        Binding("x,delete", "remove_pdu", "Remove PDU"),
        Binding("d", "discover", "Discover"),
        Binding("D", "find_outlets", "Find outlets"),
        Binding("C", "cancel_discovery", "Cancel discovery"),
        Binding("escape", "cancel_discovery", "Cancel discovery", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, PduSection] = {}
        self._current: str | None = None
        self._shown_discovery: bool | None = None

    def compose_body(self) -> ComposeResult:
        yield Static("", id="discovery-status", classes="status-line")
        with VerticalScroll(id="pdu-list", can_focus=False):
            yield Static("No PDU yet: press [b]a[/b] to add one.", id="no-pdus")
        yield Static("", id="outlet-detail", classes="status-line")

    def on_mount(self) -> None:
        super().on_mount()
        self.show_discovery(self.model)
        self.show_detail()
        self.set_interval(1, self._tick_discovery)

    # ---------------------------------------------------------------- discovery
    def _discovering(self) -> bool:
        discovery = self.model.discovery
        return bool(discovery.current or discovery.queue)

    def _tick_discovery(self) -> None:
        if self._discovering():
            self.show_discovery(self.model)

    def show_discovery(self, model: FarmModel) -> None:
        """The status line: the outlet being discovered, the time left, how many are queued."""
        status = self.query_one("#discovery-status", Static)
        discovery = model.discovery
        current = discovery.current
        queue = discovery.queue
        dash = self.console_app.dash
        text = Text()
        if current:
            remaining = model.discovery_remaining() or 0.0
            text.append(f"discovering {current.pdu}/{current.port_id}", style="bold")
            text.append(f"{dash}{remaining:.0f} s left")
            if queue:
                text.append(f", {len(queue)} more queued")
        elif queue:
            text.append(f"finding outlets{dash}{len(queue)} queued", style="bold")
        if current or queue:
            text.append("  (C or esc cancels)", style="dim")
        status.update(text)
        status.display = bool(current or queue)
        if status.display != self._shown_discovery:
            self._shown_discovery = status.display
            self.refresh_bindings()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "cancel_discovery":
            return self._discovering()
        return True

    # ---------------------------------------------------------------- the selected outlet
    def show_detail(self) -> None:
        """The detail line: the selected outlet in words (the mismatch too, which its cell only marks)."""
        detail = self.query_one("#outlet-detail", Static)
        selected = self.selected_outlet()
        text = Text()
        if selected is not None:
            pdu, port = selected
            model = self.model
            info = model.outlet(pdu, port)
            machine = model.machine_on(pdu, port)
            text.append(f"{pdu}/{port}", style="bold")
            if info and info.label:
                text.append(f" ({info.label})")
            # the state in words (the cells have the badges; one [off] per outlet on screen)
            state = str(info.state if info else "").upper()
            text.append(f"  power {state if state in ('ON', 'OFF', 'REBOOT') else '?'}",
                        style=outlet_badge(state).style)
            text.append("  ")
            if machine is not None:
                text.append(machine.full_name or machine.mac_address, style="bold")
                text.append(" ")
                text.append_text(machine_state(machine.state))
                if info and info.reserved:
                    text.append("  reserved outlet", style=RESERVED_STYLE)
            elif info and info.reserved:
                text.append("reserved", style=RESERVED_STYLE)
            else:
                text.append("free", style=FREE_STYLE)
            if info and info.locked_by:
                text.append(f"  locked by {info.locked_by}")
            if info and info.mismatch:
                text.append(f"  ! mismatch: {info.mismatch}", style=MISMATCH_STYLE)
        detail.update(text)
        detail.display = selected is not None

    def on_data_table_cell_highlighted(self, event: DataTable.CellHighlighted) -> None:
        if isinstance(event.data_table, OutletGrid):
            self._current = event.data_table.pdu
            self.show_detail()

    # ---------------------------------------------------------------- sync
    def farm_reset(self, model: FarmModel) -> None:
        self.show_discovery(model)
        for name in [n for n in self.sections if n not in model.pdus]:
            self._remove_section(name)
        for name, pdu in sorted(model.pdus.items()):
            self._sync_pdu(name, pdu, model)
        self._update_empty()
        self._focus_grid()
        self.show_detail()

    def on_screen_resume(self) -> None:
        self._focus_grid()

    def _focus_grid(self) -> None:
        if not isinstance(self.focused, OutletGrid) and self.sections:
            section = self.current_section()
            if section is not None:
                self.call_after_refresh(section.grid.focus)

    def farm_changes(self, changes: Changes, model: FarmModel) -> None:
        if changes.discovery:
            self.show_discovery(model)
        for name in changes.pdus:
            if name in model.pdus:
                self._sync_pdu(name, model.pdus[name], model)
            else:
                self._remove_section(name)
        dirty: set[tuple[str, str]] = set(changes.outlets)
        for mac in changes.machines:
            old = changes.old_outlets.get(mac, (None, None))
            new = outlet_of(model.machines.get(mac))
            if old != new:
                for pdu, port in (old, new):
                    if pdu is not None and port is not None:
                        dirty.add((pdu, port))
            elif new[0] is not None and new[1] is not None:
                dirty.add((new[0], new[1]))  # its name may have changed
        touched: set[str] = set()
        for pdu, port in dirty:
            section = self.sections.get(pdu)
            if section is not None and pdu not in changes.pdus:
                section.grid.refresh_port(port, model)
                touched.add(pdu)
        for pdu in touched:
            if pdu in model.pdus:
                self.sections[pdu].update_info(model.pdus[pdu])
        if changes.pdus:
            self._update_empty()
            self._focus_grid()
        if dirty or changes.pdus:
            self.show_detail()

    def _sync_pdu(self, name: str, pdu: Pdu, model: FarmModel) -> None:
        section = self.sections.get(name)
        if section is None:
            section = self.sections[name] = PduSection(name)
            later = sorted(n for n in self.sections if n > name)
            container = self.query_one("#pdu-list", VerticalScroll)
            if later:
                container.mount(section, before=self.sections[later[0]])
            else:
                container.mount(section)
        section.sync(pdu, model)

    def _remove_section(self, name: str) -> None:
        section = self.sections.pop(name, None)
        if section is not None:
            section.remove()
        if self._current == name:
            self._current = None

    def _update_empty(self) -> None:
        self.query_one("#no-pdus").display = not self.sections

    # ---------------------------------------------------------------- selection
    def on_descendant_focus(self, event: Any) -> None:
        widget = event.widget if hasattr(event, "widget") else None
        if isinstance(widget, OutletGrid):
            self._current = widget.pdu
            self.show_detail()

    def current_section(self) -> PduSection | None:
        focused = self.focused
        if isinstance(focused, OutletGrid):
            return self.sections.get(focused.pdu)
        if self._current in self.sections:
            return self.sections[self._current]
        return next(iter(sorted(self.sections.items())), (None, None))[1]

    def selected_outlet(self) -> tuple[str, str] | None:
        section = self.current_section()
        if section is None:
            return None
        port = section.grid.selected_port
        return None if port is None else (section.pdu_name, port)

    def select_outlet(self, pdu: str, port: str) -> bool:
        section = self.sections.get(pdu)
        if section is None:
            return False
        coordinate = section.grid.coordinate_of(port)
        if coordinate is None:
            return False
        section.grid.cursor_coordinate = coordinate
        section.grid.focus()
        self._current = pdu
        return True

    # ---------------------------------------------------------------- actions
    def action_power(self, state: str) -> None:
        selected = self.selected_outlet()
        if selected is None:
            self.console_app.report("no outlet selected: add a PDU first (a)", "warning")
            return
        self.console_app.power_outlet(*selected, state)

    def action_add_pdu(self) -> None:
        self.console_app.add_pdu()

    def action_remove_pdu(self) -> None:
        section = self.current_section()
        if section is None:
            self.console_app.report("no PDU to remove", "warning")
            return
        self.console_app.remove_pdu(section.pdu_name)

    def action_discover(self) -> None:
        selected = self.selected_outlet()
        if selected is None:
            self.console_app.report("no outlet selected: add a PDU first (a)", "warning")
            return
        self.console_app.discover_outlet(*selected)

    def action_find_outlets(self) -> None:
        section = self.current_section()
        if section is None:
            self.console_app.report("no PDU to find outlets on: add one first (a)", "warning")
            return
        self.console_app.find_outlets(section.pdu_name)

    def action_cancel_discovery(self) -> None:
        self.console_app.cancel_discovery()
