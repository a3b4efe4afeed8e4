"""``GET /metrics``: the farm in the Prometheus text exposition format 0.0.4.

Everything is read at scrape time from the services' own state (machines, PDUs, consoles, health)
or from the database (jobs, GitLab runners), so the figures survive restarts where the data does.
The one thing measured as it happens is PDU command latency: ``PowerService`` owns a
``PduCommandStats`` and records each queued PDU operation into it.

Metric names and labels are listed in the README ("Metrics").
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

if TYPE_CHECKING:
    from sqlmodel import Session

    from .farm import Farm

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds. PDU commands: a vPDU answers in ms, SNMP in tens of ms, a set with read-back in seconds.
PDU_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Seconds. Jobs: from a minute to a day.
JOB_BUCKETS = (10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0, 14400.0, 21600.0, 86400.0)

MACHINE_STATES = ("WAIT_FOR_CONFIG", "NOT_READY", "TRAINING", "IDLE", "QUEUED", "RUNNING", "RETIRED")
OUTLET_STATES = ("on", "off", "unknown")


# --------------------------------------------------------------------------- text format
def format_value(value: float) -> str:
    """A number as the text format writes it (``le`` bounds: the same text as prometheus-client's own
    histograms, e.g. ``0.01``, ``30.0``, ``+Inf``)."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


FAMILY_TYPES = {"gauge": GaugeMetricFamily, "counter": CounterMetricFamily}


class Exposition:
    """Collects the figures of a scrape by family and renders them with prometheus-client: the families
    are its metric families (``GaugeMetricFamily``, ``CounterMetricFamily``, ``HistogramMetricFamily``),
    given by ``collect()`` (a custom collector) to a registry made for the scrape, and written by
    ``generate_latest`` (text format 0.0.4: label values and help texts escaped, one HELP/TYPE per family,
    before its samples). Families keep the order they were first named in; a family named but given no
    sample is still described."""

    def __init__(self) -> None:
        # name -> (type, help, samples: (labels, value) for gauges and counters,
        #          (labels, buckets, cumulative counts, sum, count) for histograms)
        self._families: dict[str, tuple[str, str, list[tuple[Any, ...]]]] = {}

    def family(self, name: str, kind: str, help_text: str) -> None:
        if kind not in (*FAMILY_TYPES, "histogram"):
            raise ValueError(f"unknown metric type {kind!r}")
        self._families.setdefault(name, (kind, help_text, []))

    def sample(self, family: str, value: float, labels: dict[str, Any] | None = None) -> None:
        self._families[family][2].append((labels or {}, value))

    def add(self, name: str, kind: str, help_text: str, value: float, labels: dict[str, Any] | None = None) -> None:
        self.family(name, kind, help_text)
        self.sample(name, value, labels)

    def histogram(
        self,
        name: str,
        help_text: str,
        labels: dict[str, Any],
        buckets: Sequence[float],
        cumulative: Sequence[int],
        total: float,
        count: int,
    ) -> None:
        self.family(name, "histogram", help_text)
        self._families[name][2].append((labels, tuple(buckets), tuple(cumulative), total, count))

    def collect(self) -> Iterator[Metric]:
        for name, (kind, help_text, samples) in self._families.items():
            names = list(samples[0][0]) if samples else []
            if kind == "histogram":
                hist = HistogramMetricFamily(name, help_text, labels=names)
                for labels, buckets, cumulative, total, count in samples:
                    # le as format_value writes it (0.01, 30.0); +Inf holds every observation
                    les = [(format_value(float(b)), float(n)) for b, n in zip(buckets, cumulative, strict=True)]
                    hist.add_metric([str(labels[k]) for k in names], [*les, ("+Inf", float(count))], float(total))
                yield hist
                continue
            metric = FAMILY_TYPES[kind](name, help_text, labels=names)
            for labels, value in samples:
                metric.add_metric([str(labels[k]) for k in names], float(value))
            yield metric

    def render(self) -> str:
        registry = CollectorRegistry(auto_describe=False)  # one per scrape: the figures are read now
        registry.register(self)
        return generate_latest(registry).decode("utf-8")


# --------------------------------------------------------------------------- live observations
class Histogram:
    """A cumulative histogram per label tuple, kept in memory (observations are O(buckets))."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(sorted(buckets))
        self.series: dict[tuple[str, ...], list[Any]] = {}  # labels -> [bucket counts, sum, count]

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        entry = self.series.get(labels)
        if entry is None:
            entry = self.series[labels] = [[0] * len(self.buckets), 0.0, 0]
        counts = entry[0]
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                counts[i] += 1
        entry[1] += value
        entry[2] += 1


class PduCommandStats:
    """PDU command latency (one queued operation: a set with its read-back, a poll, a read) and errors."""

    def __init__(self) -> None:
        self.latency = Histogram(PDU_BUCKETS)
        self.errors: dict[str, int] = {}

    def observe(self, pdu: str, seconds: float, ok: bool) -> None:
        self.latency.observe((pdu,), seconds)
        if not ok:
            self.errors[pdu] = self.errors.get(pdu, 0) + 1
        else:
            self.errors.setdefault(pdu, 0)


# --------------------------------------------------------------------------- collection
def _job_aggregates(session: Session) -> tuple[list[tuple[str, int]], list[tuple[Any, ...]]]:
    """Jobs per status, and per finished status the duration histogram (cumulative buckets, sum, count)."""
    from sqlalchemy import case, func
    from sqlmodel import col, select

    from .models import JobRow

    counts = [(str(s), int(n)) for s, n in session.exec(select(JobRow.status, func.count()).group_by(JobRow.status))]
    duration = col(JobRow.ended_at) - col(JobRow.started_at)
    columns = [func.sum(case((duration <= bound, 1), else_=0)) for bound in JOB_BUCKETS]
    query = (
        select(JobRow.status, func.count(), func.sum(duration), *columns)
        .where(col(JobRow.started_at).is_not(None), col(JobRow.ended_at).is_not(None))
        .group_by(JobRow.status)
    )
    return counts, [tuple(row) for row in session.exec(query)]


def _gitlab_runners(session: Session) -> list[tuple[str, int]]:
    from sqlalchemy import func
    from sqlmodel import select

    from .models import GitlabRunner

    query = select(GitlabRunner.instance, func.count()).group_by(GitlabRunner.instance)
    return [(str(i), int(n)) for i, n in session.exec(query)]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _machines(exp: Exposition, machines: Iterable[tuple[str, dict[str, Any]]], now: float) -> None:
    counts = dict.fromkeys(MACHINE_STATES, 0)
    training: list[tuple[str, float, float | None, float | None]] = []
    attempts: list[tuple[str, float, str]] = []
    in_state: list[tuple[dict[str, str], float]] = []
    for mac, data in machines:
        state = str(data.get("state") or "UNKNOWN")
        counts[state] = counts.get(state, 0) + 1
        since = _number(data.get("state_since"))
        if since is not None:
            in_state.append(({"mac": mac, "name": str(data.get("full_name") or ""), "state": state},
                             max(0.0, now - since)))
        info = data.get("training")
        if isinstance(info, dict):  # {loop, loops, passes, ...} when training.py fills it; else nothing
            loop = _number(info.get("loop"))
            if loop is not None:
                training.append((mac, loop, _number(info.get("loops")), _number(info.get("passes"))))
            attempt = _number(info.get("attempt"))
            if attempt is not None:
                attempts.append((mac, attempt, str(info.get("state") or "")))
    exp.family("valve_console_machines", "gauge", "Machines known to the farm, by state.")
    for state, n in counts.items():
        exp.sample("valve_console_machines", n, {"state": state})
    # One series per machine, labelled with the state it is in: a "stuck" alert compares the seconds with
    # a bound per state. Seconds (not the state_since timestamp) so that the gateway's clock is the only one.
    exp.family("valve_console_machine_state_seconds", "gauge",
               "Seconds a machine has been in its current state (as far as this backend saw: at most its uptime).")
    for labels, seconds in in_state:
        exp.sample("valve_console_machine_state_seconds", seconds, labels)
    if training:
        exp.family("valve_console_training_loop", "gauge", "The Sgt. Hartman training loop a machine is at.")
        exp.family("valve_console_training_loops", "gauge", "The training loops a machine must go through.")
        exp.family("valve_console_training_passes", "gauge", "Training loops a machine passed in its current run.")
        for mac, loop, loops, passes in training:
            exp.sample("valve_console_training_loop", loop, {"mac": mac})
            if loops is not None:
                exp.sample("valve_console_training_loops", loops, {"mac": mac})
            if passes is not None:
                exp.sample("valve_console_training_passes", passes, {"mac": mac})
    if attempts:
        exp.family("valve_console_training_failed_attempts", "gauge",
                   "Trainings of a machine that failed in a row (0 once it qualifies).")
        exp.family("valve_console_training_state", "gauge",
                   "1 for the state a machine's training is in (registering, looping, cooldown, qualified, ...).")
        for mac, attempt, state in attempts:
            exp.sample("valve_console_training_failed_attempts", attempt, {"mac": mac})
            if state:
                exp.sample("valve_console_training_state", 1, {"mac": mac, "state": state})


def _pdus(exp: Exposition, farm: "Farm") -> None:
    power = farm.power
    if power is None:
        return
    exp.family("valve_console_pdu_outlets", "gauge", "Outlets per PDU by state (on, off, unknown).")
    exp.family("valve_console_pdu_reachable", "gauge", "1 if the PDU answered its last command, 0 if not or not yet.")
    exp.family("valve_console_pdu_failures", "gauge", "Consecutive failed commands of a PDU.")
    for name, rt in sorted(power.pdus.items()):
        counts = dict.fromkeys(OUTLET_STATES, 0)
        for info in rt.outlets.values():
            state = info.state.value.lower()
            counts[state if state in counts else "unknown"] += 1
        for state, n in counts.items():
            exp.sample("valve_console_pdu_outlets", n, {"pdu": name, "state": state})
        exp.sample("valve_console_pdu_reachable", 1 if rt.reachable else 0, {"pdu": name, "driver": rt.driver_name})
        exp.sample("valve_console_pdu_failures", rt.failures, {"pdu": name})
    _mismatches(exp, farm)
    stats = getattr(power, "command_stats", None)
    if isinstance(stats, PduCommandStats):
        help_text = "Time a PDU took for one command (a set with its read-back, a poll of its outlets, a read)."
        exp.family("valve_console_pdu_command_seconds", "histogram", help_text)
        hist = stats.latency
        for labels, (counts, total, count) in sorted(hist.series.items()):
            exp.histogram("valve_console_pdu_command_seconds", help_text, {"pdu": labels[0]}, hist.buckets, counts,
                          total, count)
        exp.family("valve_console_pdu_command_errors_total", "counter", "PDU commands that failed (no answer, error).")
        for pdu, n in sorted(stats.errors.items()):
            exp.sample("valve_console_pdu_command_errors_total", n, {"pdu": pdu})


def _mismatches(exp: Exposition, farm: "Farm") -> None:
    """Per outlet: 1 while its last switch read back another state (until a switch reads back right),
    and how many switches read back wrong since the start (0 for those that never did, for ``increase``)."""
    power = farm.power
    machines = getattr(farm, "machines", None)
    exp.family("valve_console_outlet_readback_mismatch", "gauge",
               "1 while an outlet's last switch read back another state than it was switched to.")
    exp.family("valve_console_outlet_readback_mismatches_total", "counter",
               "Switches of an outlet that read back another state, since the backend started.")
    for name, rt in sorted(power.pdus.items()):
        ports = sorted({*rt.outlets, *rt.mismatch, *rt.mismatches}, key=_port_key)
        for port in ports:
            owner = machines.machine_on(name, port) if machines is not None else None
            machine = owner.mac_address if owner is not None else ""
            exp.sample("valve_console_outlet_readback_mismatch", 1 if port in rt.mismatch else 0,
                       {"pdu": name, "port": port, "machine": machine})
            exp.sample("valve_console_outlet_readback_mismatches_total", rt.mismatches.get(port, 0),
                       {"pdu": name, "port": port})


def _port_key(port: str) -> tuple[int, str]:
    """Outlets in their numeric order (2 before 10), names after numbers."""
    return (int(port), "") if port.isdigit() else (1 << 62, port)


def _power(exp: Exposition, farm: "Farm") -> None:
    """Metered outlets: the latest watts, the joules drawn since the start (a counter); PDUs' own totals."""
    meter = getattr(farm, "meter", None)
    power = farm.power
    if meter is None or power is None:
        return
    exp.family("valve_console_outlet_power_watts", "gauge", "An outlet's latest power reading (metered outlets).")
    exp.family("valve_console_outlet_energy_joules_total", "counter",
               "Energy an outlet drew since the backend started (the meter's counter, else W x dt).")
    exp.family("valve_console_pdu_power_watts", "gauge", "A PDU's own total power reading, where it reports one.")
    exp.family("valve_console_pdu_power_problems_total", "counter",
               "Power readings refused or failed (garbage, negative, absurd, counter resets, failed reads).")
    for (pdu, port), outlet in sorted(meter.outlets.items()):
        owner = farm.machines.machine_on(pdu, port) if getattr(farm, "machines", None) is not None else None
        labels = {"pdu": pdu, "port": port, "machine": owner.mac_address if owner is not None else ""}
        watts = outlet.latest.watts if outlet.latest is not None else None
        if watts is not None:
            exp.sample("valve_console_outlet_power_watts", watts, labels)
        exp.sample("valve_console_outlet_energy_joules_total", outlet.energy_j, labels)
    for pdu, pm in sorted(meter.pdus.items()):
        if pm.total_watts is not None and pdu in power.pdus:
            exp.sample("valve_console_pdu_power_watts", pm.total_watts, {"pdu": pdu})
    for pdu, n in sorted(meter.problem_counts().items()):
        exp.sample("valve_console_pdu_power_problems_total", n, {"pdu": pdu})


def _consoles(exp: Exposition, farm: "Farm", now: float) -> None:
    hub = farm.consoles
    if hub is None:
        return
    exp.family("valve_console_console_bytes_total", "counter", "Bytes received on a machine's console.")
    exp.family("valve_console_console_lines_total", "counter", "Lines received on a machine's console since start.")
    exp.family("valve_console_console_connected", "gauge", "1 if a byte source (netconsole, serial) feeds the console.")
    exp.family("valve_console_console_viewers", "gauge", "Viewers of a machine's console (API streams, TCP port).")
    exp.family("valve_console_console_silent_seconds", "gauge",
               "Seconds since a machine's console received a byte (since the backend started if none came since).")
    for mac, console in sorted(hub.consoles.items()):
        exp.sample("valve_console_console_bytes_total", console.total, {"mac": mac})
        lines = getattr(console, "lines", None)
        if isinstance(lines, int):
            exp.sample("valve_console_console_lines_total", lines, {"mac": mac})
        exp.sample("valve_console_console_connected", 1 if console.stream is not None else 0, {"mac": mac})
        exp.sample("valve_console_console_viewers", len(console.viewers) + len(console.subscribers), {"mac": mac})
        last = console.last_activity if console.last_activity is not None else farm.started_at
        exp.sample("valve_console_console_silent_seconds", max(0.0, now - last), {"mac": mac})


async def _jobs(exp: Exposition, farm: "Farm") -> None:
    if farm.store is None:
        return
    counts, durations = await farm.store.run(_job_aggregates)
    exp.family("valve_console_jobs_total", "counter", "Jobs that ended, by status (PASS, FAIL, INCOMPLETE...).")
    exp.family("valve_console_jobs_active", "gauge", "Jobs queued or running now.")
    active = {"QUEUED": 0, "RUNNING": 0}
    for status, n in sorted(counts):
        if status in active:
            active[status] = n
        else:
            exp.sample("valve_console_jobs_total", n, {"status": status})
    for status, n in active.items():
        exp.sample("valve_console_jobs_active", n, {"status": status})
    help_text = "Time from a job's start on its machine to its end, by status."
    exp.family("valve_console_job_duration_seconds", "histogram", help_text)
    for status, count, total, *cumulative in sorted(durations, key=lambda row: str(row[0])):
        exp.histogram(
            "valve_console_job_duration_seconds",
            help_text,
            {"status": status},
            JOB_BUCKETS,
            [int(n or 0) for n in cumulative],
            float(total or 0.0),
            int(count),
        )


GITLAB_STATES = ("starting", "ok", "not exposing", "unreachable")
# GitlabApi.classify's words for a 401: the instance's access token itself was refused
TOKEN_REFUSED = "token was refused"


async def _gitlab(exp: Exposition, farm: "Farm") -> None:
    service = getattr(farm, "gitlab", None)
    if service is None or farm.store is None:
        return
    rows = await farm.store.run(_gitlab_runners)
    exp.family("valve_console_gitlab_runners", "gauge", "GitLab runners registered (machines' and gateway).")
    for instance, n in sorted(rows):
        exp.sample("valve_console_gitlab_runners", n, {"instance": instance})
    # The label is `gitlab`, not `instance`: Prometheus gives `instance` to the scraped target.
    status: dict[str, dict[str, Any]] = getattr(service, "status", None) or {}
    errors: dict[tuple[str, str], str] = getattr(service, "runner_errors", None) or {}
    runners: dict[tuple[str, str], Any] = getattr(service, "runners", None) or {}
    exp.family("valve_console_gitlab_instance_state", "gauge",
               "1 for the state a GitLab instance is in (starting, ok, not exposing, unreachable), 0 for the others.")
    exp.family("valve_console_gitlab_instance_failures", "gauge", "Consecutive failed syncs with a GitLab instance.")
    exp.family("valve_console_gitlab_token_refused", "gauge",
               "1 while a GitLab instance refuses the farm's access token (HTTP 401).")
    for name, st in sorted(status.items()):
        state = str(st.get("state") or "")
        for known in dict.fromkeys((*GITLAB_STATES, state)):
            exp.sample("valve_console_gitlab_instance_state", 1 if known == state else 0,
                       {"gitlab": name, "state": known})
        exp.sample("valve_console_gitlab_instance_failures", _number(st.get("failures")) or 0, {"gitlab": name})
        refused = state == "unreachable" and TOKEN_REFUSED in str(st.get("reason") or "")
        exp.sample("valve_console_gitlab_token_refused", 1 if refused else 0, {"gitlab": name})
    exp.family("valve_console_gitlab_runner_error", "gauge",
               "1 while GitLab refuses a runner (its token, creating or updating it); mac `gateway`: the gateway's.")
    for instance, mac in sorted({*runners, *errors}):
        exp.sample("valve_console_gitlab_runner_error", 1 if (instance, mac) in errors else 0,
                   {"gitlab": instance, "mac": mac})


async def render(farm: "Farm") -> str:
    """The whole exposition. SQL runs in the store thread; the rest reads in-memory state."""
    from .. import __version__

    exp = Exposition()
    exp.add("valve_console_info", "gauge", "The gateway's version and farm name.", 1,
            {"version": __version__, "farm": farm.settings.farm_name})
    exp.add("valve_console_uptime_seconds", "gauge", "Seconds since the backend started.",
            time.time() - farm.started_at)
    health = farm.health()
    exp.family("valve_console_service_ok", "gauge", "1 if a backend service reports ok.")
    for service, info in sorted(health["services"].items()):
        exp.sample("valve_console_service_ok", 1 if info["state"] == "ok" else 0, {"service": service})
    now = time.time()
    _machines(exp, farm.view.machines().items(), farm.view.clock())
    _pdus(exp, farm)
    _power(exp, farm)
    _consoles(exp, farm, now)
    await _jobs(exp, farm)
    await _gitlab(exp, farm)
    exp.add("valve_console_events_published_total", "counter", "Events published on the farm's event bus.",
            farm.bus.published)
    exp.add("valve_console_event_subscribers", "gauge", "Subscribers of the event bus (TUIs, SSE streams).",
            farm.bus.subscriber_count)
    return exp.render()
