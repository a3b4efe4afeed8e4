"""Machine detail: one machine's record and its Sgt. Hartman training (state, n/N, per-loop results,
failures), opened with ``i`` on the DUT table or "details <machine>" in the command palette.

Power (metered outlets): the outlet's watts now, the machine's power flag in words, and a plot of the last
hour (``FarmClient.power_series``) with marks for boots (the outlet switched ON) and the machine's jobs.

Keys: ``t`` start (or retrain), ``x`` stop, ``k`` skip the training (each asks first), ``e`` edit,
``escape`` closes. It follows the app's model, so progress shows as it happens.

A registration held for the operator (a DUT re-registering the machine from another address, or changing
its identity while it is ready for service) is shown on top, in red, field by field (now → asked), with
where it came from and why it waits; ``a`` applies it, ``r`` drops it (each asks first).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, cast

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Static

from ..client import FarmClientError
from ..console_data import format_watts, outlet_watts
from ..contract import Machine, Training
from ..widgets.power_plot import PlotMarks, PowerPlot

if TYPE_CHECKING:
    from ..app import ConsoleApp

STATE_STYLE = {
    "registering": "bold cyan",
    "looping": "bold cyan",
    "cooldown": "bold yellow",
    "qualified": "bold green",
    "stopped": "bold red",
    "skipped": "yellow",
}
STATUS_STYLE = {"PASS": "green", "WARN": "yellow"}

QUESTIONS = {
    "start": ("Train {name} now? It is taken out of service until it qualifies.", "Train", False),
    "stop": ("Stop the training of {name}? It stays not ready for service.", "Stop", True),
    "skip": ("Skip the training of {name}? It becomes ready for service without boot loops.", "Skip", True),
}
DONE = {"start": "training started", "stop": "training stopped", "skip": "training skipped: ready for service"}
HELD_QUESTIONS = {
    "approve": ("Apply the held registration of {name} from {source}? {changes}", "Apply", True),
    "reject": ("Drop the held registration of {name} from {source}? The machine stays as it is.", "Drop", False),
}


def held_lines(machine: Machine) -> Text:
    """A held registration in words: where from, when, why, and each field now → asked ('' when none)."""
    pending = machine.pending_registration
    text = Text()
    if pending is None:
        return text
    at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(pending.at or 0)))
    attempts = int(pending.attempts or 1)
    text.append(f"Registration held for you: from {pending.source} at {at}", style="bold red")
    if attempts > 1:
        text.append(f" ({attempts} attempts)", style="bold red")
    for reason in pending.reasons:
        text.append(f"\n  why: {reason}", style="red")
    changes = pending.changes
    for key, value in changes.items():
        text.append(f"\n  {key}: {_shown(getattr(machine, key, None))} -> {_shown(value)}")
    if not changes:
        text.append("\n  (it asks for no change)", style="dim")
    text.append("\n  a apply it   r drop it", style="bold")
    return text


def _shown(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return "-" if value is None else str(value)


def held_action(app: "ConsoleApp", mac: str, decision: str) -> None:
    """Approve or reject a machine's held registration after a confirmation; the outcome is reported."""
    machine = app.model.machines.get(mac)
    pending = machine.pending_registration if machine else None
    name = app.model.machine_name(mac)
    if pending is None:
        app.report(f"{name} has no held registration", "warning")
        return
    changes = ", ".join(f"{k} -> {_shown(v)}" for k, v in pending.changes.items()) or "No change."
    question, label, danger = HELD_QUESTIONS[decision]
    decided = "applied" if decision == "approve" else "dropped"
    call = app.client.approve_registration if decision == "approve" else app.client.reject_registration
    app.run_confirmed(
        question.format(name=name, source=pending.source, changes=changes), lambda: call(mac),
        label=label, danger=danger, group=f"held-{mac}",
        failed=f"{decision} the held registration of {name} failed", success=f"{name}: held registration {decided}",
    )


def training_summary(training: Training | None) -> str:
    """One line: the state and n/N, e.g. ``looping 2/20 (2 passed, 19 needed)``."""
    if training is None:
        return "never trained"
    state = training.state or "?"
    text = f"{state} {training.loop}/{training.loops} ({training.passes} passed, {training.qualify} needed)"
    if state == "cooldown" and training.next_attempt_at:
        left = max(0.0, float(training.next_attempt_at) - time.time())
        text += f", retried in {left:.0f} s"
    if training.attempt:
        text += f", failed trainings: {training.attempt}"
    return text


def training_action(app: "ConsoleApp", mac: str, action: str) -> None:
    """Start/stop/skip a machine's training after a confirmation; the outcome is reported."""
    name = app.model.machine_name(mac)
    question, label, danger = QUESTIONS[action]

    app.run_confirmed(
        question.format(name=name), lambda: app.client.training(mac, action), label=label, danger=danger,
        group=f"training-{mac}", failed=f"{action} training of {name} failed",
        success=lambda machine: f"{name}: {DONE[action]} (state {machine.state})",
    )


POWER_WINDOW = 3600.0  # the plot's window: the last hour
POWER_REFETCH = 60.0  # seconds between two fetches of the series while the details are open
FLAG_WORDS = {"no_draw": "no power draw", "silent": "powered but silent"}


def now() -> float:
    """The wall clock (the snapshot tests freeze it)."""
    return time.time()


def power_flag_words(machine: Machine) -> Text:
    """The machine's power flag in words (what, since when, why), '' without one."""
    flag = machine.power_flag
    text = Text()
    if flag is None:
        return text
    since = time.strftime("%H:%M:%S", time.localtime(float(flag.since or 0)))
    text.append(f"Power warning: {FLAG_WORDS.get(flag.kind, flag.kind)}", style="bold yellow")
    text.append(f" since {since}")
    if flag.reason:
        text.append(f": {flag.reason}")
    return text


def job_marks(app: "ConsoleApp", mac: str, start: float) -> list[tuple[float, float | None]]:
    """The machine's jobs that ran in the window, as (started, ended or None while running)."""
    marks = []
    for job in app.model.jobs.values():
        if job.machine != mac or not job.started_at:
            continue
        ended = float(job.ended_at) if job.ended_at else None
        if ended is not None and ended < start:
            continue
        marks.append((float(job.started_at), ended))
    return sorted(marks, key=lambda m: m[0])


def open_details(app: "ConsoleApp", mac: str) -> None:
    app.push_screen(MachineDetailScreen(mac))


class MachineDetailScreen(ModalScreen[None]):
    BINDINGS = [
        Binding("escape", "close", "Close"),
        Binding("i", "close", "Close", show=False),
        Binding("t", "training('start')", "Train"),
        Binding("x", "training('stop')", "Stop training"),
        Binding("k", "training('skip')", "Skip training"),
        Binding("e", "edit", "Edit"),
        Binding("a", "held('approve')", "Apply held registration", show=False),
        Binding("r", "held('reject')", "Drop held registration", show=False),
    ]

    DEFAULT_CSS = """
    MachineDetailScreen { align: center middle; }
    #detail-dialog { width: 96%; height: 90%; border: thick $accent; background: $surface; padding: 0 1; }
    #detail-held { height: auto; }
    #detail-head { height: auto; }
    #detail-power { height: auto; }
    #detail-plot { margin: 0 0 1 0; }
    #detail-results { height: 1fr; }
    #detail-failures { height: auto; max-height: 8; }
    #detail-keys { height: 1; color: $text-muted; }
    """

    def __init__(self, mac: str) -> None:
        super().__init__()
        self.mac = mac
        self._shown: Any = None
        self._power_shown: Any = None
        self._fetched_for: tuple[str, str] | None = None
        self.plot = PowerPlot(id="detail-plot")

    @property
    def console_app(self) -> "ConsoleApp":
        return cast("ConsoleApp", self.app)

    def compose(self) -> ComposeResult:
        with Vertical(id="detail-dialog"):
            yield Static("", id="detail-held")
            yield Static("", id="detail-head")
            yield Static("", id="detail-power")
            yield self.plot
            yield DataTable(id="detail-results", cursor_type="row", zebra_stripes=True)
            yield Static("", id="detail-failures")
            yield Static("t train  x stop training  k skip training  e edit  esc close", id="detail-keys")

    def on_mount(self) -> None:
        table = self.query_one("#detail-results", DataTable)
        for label, key in (("Loop", "loop"), ("Status", "status"), ("Job", "job"), ("Why", "why")):
            table.add_column(label, key=key)
        self.refresh_view()
        self.set_interval(0.25, self.refresh_view)
        self.set_interval(POWER_REFETCH, self.fetch_power)
        table.focus()

    # ---------------------------------------------------------------- power
    def outlet_key(self) -> tuple[str, str] | None:
        machine = self.console_app.model.machines.get(self.mac)
        if machine is None or not machine.pdu.name or machine.pdu.port_id is None:
            return None
        return (machine.pdu.name, str(machine.pdu.port_id))

    def show_power(self) -> None:
        """The power line (watts now, the flag in words) and the plot's state; fetches the series when the
        machine got a metered outlet."""
        model = self.console_app.model
        machine = model.machines.get(self.mac)
        key = self.outlet_key()
        outlet = model.outlet(*key) if key else None
        memo = (id(machine), id(outlet))
        if memo == self._power_shown:
            return
        self._power_shown = memo
        text = Text()
        if machine is not None:
            text.append("Power: ", style="bold")
            if key is None:
                text.append("no outlet", style="dim")
            elif outlet is None or not outlet.metered:
                text.append(f"outlet {key[0]}/{key[1]} is not metered", style="dim")
            else:
                watts = outlet_watts(outlet)
                text.append(f"{format_watts(watts)} now" if watts is not None else "no reading yet")
                text.append(f" on {key[0]}/{key[1]}", style="dim")
            flag = power_flag_words(machine)
            if flag:
                text.append("\n")
                text.append_text(flag)
        self.query_one("#detail-power", Static).update(text)
        metered = outlet is not None and outlet.metered
        self.plot.display = metered
        if metered and key != self._fetched_for:
            self.fetch_power()

    def fetch_power(self) -> None:
        key = self.outlet_key()
        outlet = self.console_app.model.outlet(*key) if key else None
        if key is None or outlet is None or not outlet.metered:
            return
        self._fetched_for = key
        self.run_worker(self._read_power(key), group="detail-power", exclusive=True, exit_on_error=False)

    async def _read_power(self, key: tuple[str, str]) -> None:
        end = now()
        start = end - POWER_WINDOW
        try:
            series = await self.console_app.client.power_series(key[0], key[1], since=start)
        except FarmClientError as exc:
            self.plot.set_note(f"cannot read the power of {key[0]}/{key[1]}: {exc}")
            return
        app = self.console_app
        outlet = app.model.outlet(*key)
        # boots: the backend's outlet log (before this console opened too) and the ON changes seen since
        boots = sorted({*(float(t) for t in series.boots), *app.model.power.boots(key[0], key[1], outlet)})
        marks = PlotMarks(boots=boots, jobs=job_marks(app, self.mac, start))
        self.plot.set_series([(float(t), float(w)) for t, w in series.points], start, end, marks)

    def refresh_view(self) -> None:
        self.show_power()
        machine = self.console_app.model.machines.get(self.mac)
        cooling = machine is not None and machine.training is not None and machine.training.state == "cooldown"
        key = (id(machine), time.time() // 1 if cooling else 0)
        if key == self._shown:
            return
        self._shown = key
        head = Text()
        if machine is None:
            self.query_one("#detail-held", Static).display = False
            head.append(f"{self.mac}: this machine is gone", style="bold red")
            self.query_one("#detail-head", Static).update(head)
            return
        pdu = machine.pdu
        held = self.query_one("#detail-held", Static)
        held.update(held_lines(machine))
        held.display = bool(machine.pending_registration)
        head.append(f"{machine.full_name or self.mac}", style="bold")
        head.append(f"  {self.mac}  {machine.ip_address or '-'}  state ")
        head.append(str(machine.state), style="bold")
        head.append(f"\noutlet {pdu.name or '-'}/{pdu.port_id or '-'}"
                    f"  tty {machine.local_tty_device or '-'}"
                    f"  ready {'yes' if machine.ready_for_service else 'no'}"
                    f"  retired {'yes' if machine.is_retired else 'no'}")
        head.append(f"\ntags {', '.join(machine.tags) or '-'}", style="dim")
        training = machine.training
        head.append("\nTraining: ")
        state = training.state if training is not None else None
        head.append(training_summary(training), style=STATE_STYLE.get(state or "", ""))
        if training is not None:
            if training.reason:
                head.append(f"\nwhy: {training.reason}", style="dim")
            if training.job:
                head.append(f"\nrunning job {training.job}", style="dim")
            override = (machine.training_loops, machine.training_qualify)
            if override != (None, None):
                head.append(f"\nper-machine override: loops {override[0] or 'default'}, "
                            f"qualify {override[1] or 'default'}", style="dim")
        self.query_one("#detail-head", Static).update(head)
        table = self.query_one("#detail-results", DataTable)
        table.clear()
        results = training.results if training is not None else []
        for index, result in enumerate(results):
            loop = result.loop
            status = str(result.status)
            table.add_row(
                "registration" if loop == 0 else str(loop),
                Text(status, style=STATUS_STYLE.get(status, "bold red")),
                result.job or "-",
                result.why or "",
                key=str(index),
            )
        failures = training.failures if training is not None else []
        text = Text()
        if failures:
            text.append(f"Failures ({len(failures)}):\n", style="bold red")
            for failure in failures[-6:]:
                loop = failure.loop
                where = "registration" if loop == 0 else f"loop {loop}"
                text.append(f"  {where}: {failure.status} {failure.job or ''}: {failure.why}\n")
        elif training is not None:
            text.append("No failures.", style="green")
        self.query_one("#detail-failures", Static).update(text)

    def action_close(self) -> None:
        self.dismiss(None)

    def action_training(self, action: str) -> None:
        training_action(self.console_app, self.mac, action)

    def action_held(self, decision: str) -> None:
        held_action(self.console_app, self.mac, decision)

    def action_edit(self) -> None:
        self.dismiss(None)
        self.console_app.edit_machine(self.mac)
