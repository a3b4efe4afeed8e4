"""Jobs: the backend's jobs in a DataTable keyed by job id (newest first), updated in place from
``job`` events; ``enter`` shows a job's console, ``x``/``delete`` cancels it (asks first).

The console of a job (``JobConsoleScreen``) starts with ``client.job_console(id)``; while the job
runs, the ``console`` events of its machine are appended (without the part the fetch already holds).
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Static

from ..client import FarmClientError
from ..console_data import Changes, FarmModel, format_joules, format_wh
from ..contract import Job
from ..widgets.console_view import ConsoleView
from ..widgets.keyed_table import cursor_key, select_key
from .base import FarmScreen
from .consoles import without_overlap

if TYPE_CHECKING:
    from ..app import ConsoleApp

COLUMNS = (
    ("ID", "id"),
    ("Machine", "machine"),
    ("Status", "status"),
    ("State", "state"),
    ("Queue", "position"),
    ("Submitted", "submitted"),
    ("Duration", "duration"),
    ("Energy", "energy"),
)
COLUMN_KEYS = tuple(key for _, key in COLUMNS)

STATUS_STYLES = {
    "QUEUED": "bold yellow",
    "RUNNING": "bold cyan",
    "PASS": "bold green",
    "WARN": "yellow",
    "COMPLETE": "green",
    "FAIL": "bold red",
    "INCOMPLETE": "red",
    "SETUP_FAIL": "bold red",
    "UNKNOWN": "dim",
}
ACTIVE = ("QUEUED", "RUNNING")


def now() -> float:
    """The wall clock (the snapshot tests freeze it)."""
    return time.time()


def format_when(stamp: Any) -> str:
    if not stamp:
        return "-"
    try:
        return datetime.fromtimestamp(float(stamp)).strftime("%Y-%m-%d %H:%M:%S")
    except (TypeError, ValueError, OverflowError, OSError):
        return "?"


def format_duration(job: Job) -> str:
    """How long the job ran (runs, for a running one); '-' before it started."""
    start = job.started_at
    if not start:
        return "-"
    end = job.ended_at or (now() if job.status == "RUNNING" else None)
    if end is None:
        return "-"
    seconds = max(0, int(float(end) - float(start)))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def status_badge(status: Any) -> Text:
    text = str(status or "?")
    return Text(text, style=STATUS_STYLES.get(text, ""))


def job_cells(job: Job, model: FarmModel) -> tuple[Any, ...]:
    position = job.position
    queue = str(position) if job.status == "QUEUED" and position is not None else "-"
    return (
        job.id or "?",
        model.job_machine_name(job),
        status_badge(job.status),
        job.state or "-",
        queue,
        format_when(job.submitted_at),
        format_duration(job),
        energy_text(job),
    )


def energy_text(job: Job) -> Text:
    """The Energy cell: what the machine's outlet drew during the job (``12.3 kJ``), '-' when not metered."""
    shown = format_joules(job.energy_j)
    return Text(shown or "-", style="" if shown else "dim", justify="right")


def energy_words(job: Job) -> str:
    """The energy in the job's details: ``12.3 kJ (3.42 Wh)``, '' when not metered."""
    joules = format_joules(job.energy_j)
    return f"{joules} ({format_wh(job.energy_j)})" if joules else ""


def unknown_job(job_id: str) -> Job:
    """A job the console has not heard of (yet): only its id."""
    return Job.model_construct(
        id=job_id, machine="", status=None, state="", position=0, submitted_at=0.0, started_at=None, ended_at=None,
        target=None, result=None, console_start=None, console_end=None, training=None, job=None, energy_j=None,
    )


def plain(value: Any) -> str:
    return value.plain if isinstance(value, Text) else str(value)


def newest_first(jobs: dict[str, Job]) -> list[str]:
    return sorted(jobs, key=lambda i: (float(jobs[i].submitted_at or 0), i), reverse=True)


class JobTable(DataTable[Any]):
    BINDINGS = [Binding("enter", "select_cursor", "Console", show=True, key_display="enter")]


class JobsScreen(FarmScreen):
    MODE = "jobs"

    BINDINGS = [
        Binding("x,delete", "cancel_job", "Cancel job"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, tuple[Any, ...]] = {}

    def compose_body(self) -> ComposeResult:
        yield Static("", id="job-status", classes="status-line")
        yield JobTable(id="job-table", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        table = self.table
        for label, key in COLUMNS:
            table.add_column(label, key=key)
        super().on_mount()
        self._update_status()
        table.focus()
        self.set_interval(1, self._tick)

    @property
    def table(self) -> JobTable:
        return self.query_one("#job-table", JobTable)

    # ---------------------------------------------------------------- sync
    def farm_reset(self, model: FarmModel) -> None:
        table = self.table
        for job_id in [j for j in self.rows if j not in model.jobs]:
            del self.rows[job_id]
            if job_id in table.rows:
                table.remove_row(job_id)
        self._apply(model, list(model.jobs))

    def farm_changes(self, changes: Changes, model: FarmModel) -> None:
        ids = [j for j in changes.jobs if j in model.jobs]
        if changes.machines:  # machine names in the Machine column
            ids += [j for j, job in model.jobs.items() if job.machine in changes.machines and j not in ids]
        if ids:
            self._apply(model, ids)

    def _apply(self, model: FarmModel, ids: list[str]) -> None:
        table = self.table
        added = False
        for job_id in ids:
            cells = job_cells(model.jobs[job_id], model)
            old = self.rows.get(job_id)
            self.rows[job_id] = cells
            if job_id not in table.rows:
                added = True
            elif old is not None:
                self._update_row(job_id, old, cells)
        if added:
            self._rebuild(model)
        self._update_status()

    def _update_row(self, job_id: str, old: tuple[Any, ...], cells: tuple[Any, ...]) -> None:
        for index, (before, after) in enumerate(zip(old, cells, strict=True)):
            if plain(before) != plain(after):
                self.table.update_cell(job_id, COLUMN_KEYS[index], after)

    def _rebuild(self, model: FarmModel) -> None:
        """New jobs: lay the rows out newest first again, the cursor staying on its job."""
        table = self.table
        cursor = self.cursor_job()
        table.clear()
        for job_id in newest_first({j: model.jobs.get(j) or unknown_job(j) for j in self.rows}):
            table.add_row(*self.rows[job_id], key=job_id)
        select_key(table, cursor)

    def _tick(self) -> None:
        """The durations of running jobs go on."""
        for job_id, job in self.model.jobs.items():
            if job.status == "RUNNING" and job_id in self.rows:
                old = self.rows[job_id]
                cells = job_cells(job, self.model)
                self.rows[job_id] = cells
                if job_id in self.table.rows:
                    self._update_row(job_id, old, cells)

    def _update_status(self) -> None:
        jobs = self.model.jobs
        counts: dict[str, int] = {}
        for job in jobs.values():
            status = job.status or "?"
            counts[status] = counts.get(status, 0) + 1
        text = Text()
        text.append(f"{len(jobs)} job{'s' if len(jobs) != 1 else ''}")
        for status in ("RUNNING", "QUEUED"):
            if counts.get(status):
                text.append(f"  {counts[status]} {status.lower()}", style=STATUS_STYLES[status])
        if not jobs:
            text.append("  (no job yet: submit one with 'valve-console job run JOB.yml')", style="dim")
        else:
            text.append("  newest first", style="dim")
        self.query_one("#job-status", Static).update(text)

    def cursor_job(self) -> str | None:
        return cursor_key(self.table)

    def select_job(self, job_id: str) -> bool:
        return select_key(self.table, job_id)

    # ---------------------------------------------------------------- actions
    def action_cancel_job(self) -> None:
        job_id = self.cursor_job()
        if job_id is None:
            self.console_app.report("no job selected", "warning")
            return
        self.console_app.cancel_job(job_id)

    @on(DataTable.RowSelected, "#job-table")
    def _open_console(self, event: DataTable.RowSelected) -> None:
        job_id = event.row_key.value
        if job_id:
            self.app.push_screen(JobConsoleScreen(job_id))


class JobConsoleView(ConsoleView):
    """A job's console: read-only; escape closes the dialog once nothing else is open."""

    def action_type(self) -> None:
        cast("ConsoleApp", self.app).report("a job's console is read-only here", "warning")

    def _update_status(self) -> None:
        super()._update_status()
        title = f"{self.mac} | read-only"
        if self.border_title != title:
            self.border_title = title

    def action_escape(self) -> None:
        if self.query_one("#search-bar").has_class("-open") or self._search_term:
            super().action_escape()
        else:
            self.screen.dismiss(None)


class JobConsoleScreen(ModalScreen[None]):
    """The console of one job, with its status on top; live while the job runs."""

    BINDINGS = [
        Binding("escape", "close", "Close"),
        Binding("x,delete", "cancel_job", "Cancel job"),
    ]

    def __init__(self, job_id: str) -> None:
        super().__init__()
        self.job_id = job_id
        self.view = JobConsoleView(f"job {job_id}", max_lines=20000, id="job-console")
        self._loading: list[str] | None = []  # console events held while the log is fetched

    @property
    def console_app(self) -> "ConsoleApp":
        return cast("ConsoleApp", self.app)

    @property
    def job(self) -> Job:
        return self.console_app.model.jobs.get(self.job_id) or unknown_job(self.job_id)

    def compose(self) -> ComposeResult:
        with Vertical(id="job-console-dialog"):
            yield Static("", id="job-console-info")
            yield self.view

    def on_mount(self) -> None:
        self.view.dash = self.console_app.dash
        self._update_info()
        self.console_app.register_view(self)  # type: ignore[arg-type]
        self.view.focus()
        self.run_worker(self._load(), group="job-console", exit_on_error=False)

    def on_unmount(self) -> None:
        self.console_app.unregister_view(self)  # type: ignore[arg-type]

    async def _load(self) -> None:
        try:
            text = await self.console_app.client.job_console(self.job_id)
        except FarmClientError as exc:
            text = f"[cannot read the job's console: {exc}]\n"
        held = "".join(self._loading or [])
        self._loading = None
        if not isinstance(text, str):
            text = str(text)
        if text:
            self.view.write(text)
        rest = without_overlap(text, held)
        if rest:
            self.view.write(rest)
        if not text and not rest:
            self._update_info("no console output yet")

    def _update_info(self, note: str = "") -> None:
        job = self.job
        model = self.console_app.model
        text = Text()
        text.append(f" {self.job_id} ", style="bold")
        text.append(f" on {model.job_machine_name(job)}  ")
        text.append_text(status_badge(job.status))
        text.append(f" ({job.state or '-'})")
        if job.status == "QUEUED":
            text.append(f"  {job.position or 0} job(s) ahead")
        text.append(f"  submitted {format_when(job.submitted_at)}  duration {format_duration(job)}")
        if energy := energy_words(job):
            text.append(f"\n energy drawn: {energy}")
        if job.result:
            text.append(f"\n {job.result}", style="dim")
        if note:
            text.append(f"\n {note}", style="dim")
        text.append(f"\n esc: close{self.console_app.dash}x: cancel the job{self.console_app.dash}/: search",
                    style="dim")
        self.query_one("#job-console-info", Static).update(text)

    # the app hands the modal its batches like a FarmScreen
    def farm_reset(self, model: FarmModel) -> None:
        self._update_info()

    def farm_changes(self, changes: Changes, model: FarmModel) -> None:
        job = model.jobs.get(self.job_id)
        mac = job.machine if job else None
        if job and mac and mac in changes.console_text and job.status == "RUNNING":
            text = "".join(changes.console_text[mac])
            if self._loading is not None:
                self._loading.append(text)
            else:
                self.view.write(text)
        if self.job_id in changes.jobs:
            self._update_info()

    def action_close(self) -> None:
        self.dismiss(None)

    def action_cancel_job(self) -> None:
        self.console_app.cancel_job(self.job_id)

    @on(ConsoleView.Input)
    def _typed(self, event: Any) -> None:
        event.stop()
