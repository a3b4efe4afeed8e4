"""A FarmClient on fixed JSON (httpx.MockTransport) and a fixed event stream, for snapshot tests.

Everything time-dependent is frozen: uptime, log timestamps (local wall-clock times built from a
fixed local date, so they print the same in every time zone).
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import httpx

from valve_console.client import FarmClient, FarmClientError, parse_event
from valve_console.contract import Event


def ts(hour: int, minute: int, second: int) -> float:
    return datetime(2026, 3, 14, hour, minute, second).timestamp()


def machine(mac: str, name: str, ip: str, state: str, pdu: str | None = None, port: str | None = None,
            ready: bool = False, retired: bool = False, base: str = "virtio",
            since: float | None = None) -> dict[str, Any]:
    return {
        "mac_address": mac,
        "base_name": base,
        "full_name": name,
        "tags": ["virtio:family:VIRTIO"],
        "registered_tags": ["virtio:family:VIRTIO"],
        "manual_tags": [],
        "all_tags": ["virtio:family:VIRTIO"],
        "ip_address": ip,
        "local_tty_device": "ttyS1",
        "pdu": {"name": pdu, "port_id": port},
        "has_pdu_assigned": pdu is not None and port is not None,
        "pdu_off_delay": 5.0,
        "pdu_off_delay_is_default": False,
        "ready_for_service": ready,
        "is_retired": retired,
        "available": ready and not retired,
        "comment": "",
        "state": state,
        "state_since": ts(9, 0, 0) if since is None else since,
        "training": None,
        "gitlab_exposed": True,
        "runners": [],
        "first_seen": ts(9, 0, 0),
        "last_seen": ts(9, 30, 0),
    }


def outlets(count: int, on: set[int], unknown: set[int] = frozenset(), reserved: set[int] = frozenset(),
            label: str = "outlet") -> dict[str, Any]:
    ports = {}
    for i in range(count):
        state = "ON" if i in on else ("UNKNOWN" if i in unknown else "OFF")
        ports[str(i)] = {"label": f"{label} {i}", "state": state, "reserved": i in reserved,
                         "min_off_time": 5.0, "changed_at": ts(9, 0, 0)}
    return ports


def outlet_event(pdu: str, port: str, state: str, label: str | None = None) -> dict[str, Any]:
    """The data of an ``outlet`` event, every key the contract declares."""
    return {"pdu": pdu, "port_id": port, "label": label, "state": state, "reserved": False, "min_off_time": 5.0,
            "changed_at": None}


def health(**services: tuple[str, str | None]) -> dict[str, Any]:
    """A health answer with ``services`` (name -> (state, reason))."""
    return {"status": "ok", "farm_name": "test", "version": "0", "api": None, "netconsole": None, "uptime": 0.0,
            "services": {name: {"state": state, "reason": reason} for name, (state, reason) in services.items()}}


def pdu(name: str, ports: dict[str, Any], driver: str = "dummy") -> dict[str, Any]:
    return {"name": name, "driver": driver, "pdu_model": driver, "config": {}, "reserved_ports": [],
            "state": "reachable", "error": None, "ports": ports}


def event(kind: str, data: dict[str, Any], seq: int = 0) -> Event:
    """One event as the client yields it (parsed against the contract)."""
    return Event(type=kind, seq=seq, ts=0.0, data=data)


BOOT_LOG = "".join(line + "\r\n" for line in [
    "SeaBIOS (version 1.16.3-debian-1.16.3-2)",
    "iPXE 1.21.1 -- Open Source Network Boot Firmware -- https://ipxe.org",
    "net0: 52:54:00:11:22:03 using virtio-net on 0000:00:03.0 (Ethernet) [open]",
    "net0: 10.42.0.13/255.255.255.0 gw 10.42.0.1",
    "SALAD.machine_id=52:54:00:11:22:03",
    "[    0.000000] Linux version 6.1.0-vivian (vivian@builder) #1 SMP PREEMPT_DYNAMIC",
    "[    0.612009] 00:05: ttyS1 at I/O 0x2f8 (irq = 3, base_baud = 115200) is a 16550A",
    "[  \x1b[0;32mOK\x1b[0m  ] Started Journal Service.",
    "[  \x1b[0;32mOK\x1b[0m  ] Reached target Network.",
    "+ b2c: eth0 is up, address 10.42.0.13",
    "SALAD.ping",
    "SALAD.machine_id=52:54:00:11:22:03",
    "MaRS: Registration complete",
]) + "/ # "


NOW = ts(9, 30, 0)
"""The frozen wall clock of the Jobs snapshot (durations of running jobs)."""


def job(job_id: str, mac: str, status: str, state: str, submitted: float, started: float | None = None,
        ended: float | None = None, position: int = 0, result: str | None = None) -> dict[str, Any]:
    return {"id": job_id, "machine": mac, "status": status, "state": state, "position": position,
            "submitted_at": submitted, "started_at": started, "ended_at": ended,
            "target": {"id": mac}, "result": result, "console_start": None, "console_end": None}


JOB_CONSOLE = "".join(line + "\r\n" for line in [
    "SALAD.machine_id=52:54:00:11:22:03",
    "Command line: vivian.script=pass SALAD.machine_id=52:54:00:11:22:03",
    "+ job output 1",
    "Execution is over, pipeline status: 0",
    "It's now safe to turn off your computer",
])


def farm_data() -> dict[str, Any]:
    machines = {
        "52:54:00:11:22:03": machine("52:54:00:11:22:03", "vivian-virtio-1", "10.42.0.13", "RUNNING", "vpdu1", "3",
                                     ready=True, since=ts(9, 20, 1)),
        "52:54:00:11:22:05": machine("52:54:00:11:22:05", "vivian-virtio-2", "10.42.0.15", "NOT_READY", "vpdu1",
                                     "5"),
        "52:54:00:11:22:09": machine("52:54:00:11:22:09", "vivian-radeon-1", "10.42.0.19", "WAIT_FOR_CONFIG",
                                     base="radeon"),
        "52:54:00:11:22:0c": machine("52:54:00:11:22:0c", "vivian-virtio-3", "10.42.0.22", "RETIRED", "vpdu1", "12",
                                     retired=True),
    }
    pdus = {
        "bench": {"name": "bench", "driver": "dummy", "pdu_model": "dummy", "config": {"ports": 4},
                  "reserved_ports": [], "state": "unreachable", "error": "no answer in 3 s",
                  "ports": outlets(4, set(), unknown={0, 1, 2, 3}, label="plug")},
        "vpdu1": {"name": "vpdu1", "driver": "vpdu", "pdu_model": "vpdu", "config": {"hostname": "127.0.0.1:9191"},
                  "reserved_ports": ["15"], "state": "reachable", "error": None,
                  "ports": outlets(16, {3, 5}, reserved={15})},
    }
    return with_power({
        "health": {
            "status": "degraded", "farm_name": "vivian", "version": "0.1.0", "api": "http://127.0.0.1:8000",
            "netconsole": "0.0.0.0:8100", "uptime": 3725.0,
            "services": {
                "storage": {"state": "ok", "reason": None},
                "registration": {"state": "ok", "reason": None},
                "power": {"state": "degraded", "reason": "unreachable: bench"},
                "consoles": {"state": "ok", "reason": None},
                "api": {"state": "ok", "reason": None},
                "journal": {"state": "degraded", "reason": "no system journal"},
            },
        },
        "gateway": {"interfaces": [
            {"name": "eth0", "state": "up", "speed": 1000, "mac": "02:fc:00:00:00:01",
             "addresses": ["192.0.2.2"]},
            {"name": "eth1", "state": "up", "speed": 1000, "mac": "02:fc:00:00:00:02",
             "addresses": ["10.42.0.1"]},
            {"name": "lo", "state": "up", "speed": 0, "mac": "00:00:00:00:00:00", "addresses": ["127.0.0.1", "::1"]},
            {"name": "wlan0", "state": "down", "speed": 0, "mac": "02:fc:00:00:00:03", "addresses": []},
        ]},
        "machines": machines,
        "pdus": pdus,
        "consoles": {
            "52:54:00:11:22:03": {"mac": "52:54:00:11:22:03", "source": "netconsole@127.0.0.1:40000",
                                  "connected": True, "device": None, "remote": None, "baud": None,
                                  "tcp_host": "127.0.0.1", "tcp_port": 8203, "tcp_error": None,
                                  "writer": "tcp:127.0.0.1:51234", "viewers": 2, "bytes": len(BOOT_LOG),
                                  "buffered": len(BOOT_LOG), "last_activity": ts(9, 30, 0), "log_path": "x",
                                  "provisional": False},
        },
        "devices": {
            "usb-FTDI_FT232R_A10K3B2C-if00": {"identity": "usb-FTDI_FT232R_A10K3B2C-if00", "devnode": "/dev/ttyUSB0",
                                              "by_path": None, "serial": "A10K3B2C", "machine": None, "open": True,
                                              "error": None},
        },
        "discovery": {"current": None, "queue": []},
        "console_logs": {"52:54:00:11:22:03": BOOT_LOG},
        "log": [
            {"ts": ts(9, 0, 0), "level": "INFO", "priority": 6, "logger": "valve_console.backend.farm",
             "message": "farm vivian up: API http://127.0.0.1:8000, netconsole 0.0.0.0:8100"},
            {"ts": ts(9, 0, 1), "level": "INFO", "priority": 6, "logger": "valve_console.backend.power",
             "message": "PDU vpdu1 added (driver vpdu)"},
            {"ts": ts(9, 0, 4), "level": "WARNING", "priority": 4, "logger": "valve_console.backend.power",
             "message": "PDU bench is unreachable: no answer in 3 s"},
            {"ts": ts(9, 1, 0), "level": "INFO", "priority": 6, "logger": "valve_console.backend.registration",
             "message": "new machine 52:54:00:11:22:03 registered (virtio, 10.42.0.13)"},
            {"ts": ts(9, 2, 0), "level": "ERROR", "priority": 3, "logger": "valve_console.backend.consoles",
             "message": "console log of 52:54:00:11:22:07: No space left on device"},
        ],
        "drivers": ["dummy", "vpdu"],
        "jobs": [  # newest first, as GET /api/v1/jobs
            job("job-20260314-092500-4d2e1f", "52:54:00:11:22:03", "QUEUED", "queued", ts(9, 25, 0), position=1),
            job("job-20260314-092000-9a8b7c", "52:54:00:11:22:03", "RUNNING", "running", ts(9, 20, 0),
                started=ts(9, 20, 1)),
            job("job-20260314-091000-3c2b1a", "52:54:00:11:22:05", "INCOMPLETE", "cancelled", ts(9, 10, 0),
                started=ts(9, 10, 2), ended=ts(9, 12, 30), result="cancelled by the operator"),
            job("job-20260314-090500-0f1e2d", "52:54:00:11:22:03", "PASS", "done", ts(9, 5, 0),
                started=ts(9, 5, 1), ended=ts(9, 8, 48), result="pass"),
            job("nightly-42", "52:54:00:11:22:05", "FAIL", "done", ts(8, 0, 0), started=ts(8, 0, 3),
                ended=ts(9, 2, 17), result="fail"),
        ],
        "job_consoles": {"job-20260314-090500-0f1e2d": JOB_CONSOLE},
        "gitlab": gitlab_data(),
    })


# ---------------------------------------------------------------- power (issue 18: meters, series, energy, flags)
# vpdu1 meters its outlets and reports a total; outlet 7 is not metered (nothing shown, not "0 W"); bench
# meters nothing. vivian-virtio-1 (outlet 3) draws 143 W in its running job; vivian-virtio-2 (outlet 5) is
# ON drawing nothing, so it carries a "no_draw" flag. Two finished jobs and the running one have energy.
POWER_AT = ts(9, 30, 0)
OUTLET_WATTS = {"3": 143.0, "5": 0.0}
UNMETERED_PORT = "7"
JOB_ENERGY = {"job-20260314-092000-9a8b7c": 12_300.0, "job-20260314-090500-0f1e2d": 1476.0,
              "nightly-42": 534_000.0}
POWER_FLAG = {"kind": "no_draw", "reason": "on for 5 min, 0 W drawn: check its plug or PSU", "since": ts(9, 25, 0)}


def outlet_power(watts: float, at: float = POWER_AT) -> dict[str, Any]:
    return {"watts": watts, "amps": round(watts / 230.0, 3), "volts": 230.0, "energy_wh": None, "at": at}


def series_watts(t: float) -> float:
    """vivian-virtio-1's draw over the last hour: off, idle from 09:00, its two jobs (09:05-09:08:48 and
    from 09:20:01), idle between; deterministic."""
    if t < ts(9, 0, 0):
        return 0.0
    if ts(9, 5, 1) <= t <= ts(9, 8, 48):
        return 150.0 + 10.0 * ((int(t) // 30) % 3)
    if t >= ts(9, 20, 1):
        return 120.0 + 8.0 * ((int(t) // 30) % 4)
    return 45.0


def power_series(pdu_name: str, port: str, since: float | None) -> dict[str, Any] | None:
    """GET /api/v1/pdu/{name}/port/{id}/power of the fake farm: a point every 30 s over the last hour."""
    if pdu_name != "vpdu1" or port not in OUTLET_WATTS:
        return None
    start = ts(8, 30, 0)
    times = [start + 30.0 * i for i in range(int((POWER_AT - start) / 30) + 1)]
    if since is not None:
        times = [t for t in times if t >= since]
    points = [[t, series_watts(t) if port == "3" else 0.0] for t in times]
    machine_mac = {"3": "52:54:00:11:22:03", "5": "52:54:00:11:22:05"}[port]
    return {"pdu": pdu_name, "port_id": port, "machine": machine_mac, "points": points, "interval": 30.0}


def with_power(data: dict[str, Any]) -> dict[str, Any]:
    """The fake farm's power data on top of ``data`` (metered vpdu1, its total, job energy, a flag)."""
    vpdu1 = data["pdus"]["vpdu1"]
    vpdu1.update(metered=True, total_watts=151.5, power_at=POWER_AT)
    for port, outlet in vpdu1["ports"].items():
        if port == UNMETERED_PORT:
            continue
        outlet["metered"] = True
        outlet["power"] = outlet_power(OUTLET_WATTS.get(port, 0.0))
    for entry in data["jobs"]:
        if entry["id"] in JOB_ENERGY:
            entry["energy_j"] = JOB_ENERGY[entry["id"]]
    data["machines"]["52:54:00:11:22:05"]["power_flag"] = dict(POWER_FLAG)
    return data


def power_events(count: int = 12) -> list[dict[str, Any]]:
    """``outlet`` events of vpdu1/3 with readings 10 s apart after POWER_AT (the snapshot's reading):
    the sparkline's history; the last one reads 143 W, as the snapshot."""
    events = []
    for i in range(count):
        at = POWER_AT + 10.0 * (i + 1)
        watts = [60.0, 95.0, 143.0, 120.0, 30.0, 143.0][i % 6]
        data = outlet_event("vpdu1", "3", "ON", label="outlet 3")
        data.update(reserved=False, changed_at=ts(9, 0, 0), metered=True, power=outlet_power(watts, at))
        events.append({"type": "outlet", "seq": 100 + i, "ts": at, "data": data})
    return events


# ---------------------------------------------------------------- GitLab (the GitLab screen, key 8)
def gitlab_instance(name: str, url: str, state: str, runners: int, last_sync: float | None,
                    reason: str | None = None, failures: int = 0) -> dict[str, Any]:
    return {"name": name, "url": url, "token": "********", "registration_token": None, "farm_name": "vivian",
            "expose_runners": True, "farm_tags": ["farm:vivian"], "state": state, "reason": reason,
            "last_sync": last_sync, "last_attempt": ts(9, 29, 0), "failures": failures,
            "retry_in": 300.0 if failures else None, "runners": runners, "gateway_runner": None,
            "last_verify": ts(9, 20, 0) if runners else None, "verify_result": "1 valid" if runners else None}


def gitlab_data() -> dict[str, Any]:
    """GET /api/v1/gitlab of the fake farm: one instance fine with vivian-virtio-1's runner, one down."""
    return {
        "instances": {
            "fdo": gitlab_instance("fdo", "https://gitlab.freedesktop.org", "ok", 1, ts(9, 29, 0)),
            "lab": gitlab_instance("lab", "https://gitlab.lab.example", "unreachable", 0, None, failures=3,
                                   reason="GET /runners/all: ConnectionError: [Errno 111] Connection refused"),
        },
        "runners": [
            {"instance": "fdo", "mac_address": "52:54:00:11:22:03", "gateway": False, "runner_id": 101,
             "description": "vivian-virtio-1", "tags": ["virtio:family:VIRTIO", "farm:vivian"], "error": None,
             "verified_at": ts(9, 20, 0), "verify": "valid", "token_expires_at": None},
        ],
        "config_path": "/mnt/permanent/gitlab-runner/config.toml",
        "config_written_at": ts(9, 20, 5),
        "config_runners": 1,
        "allowed_users": ["marge-bot"],
        "allowed_namespaces": ["mesa"],
        "state": "degraded",
        "reason": "fdo ok (1 runners, synced 09:29:00); lab unreachable",
    }


JOURNAL_EVENTS = [
    {"type": "journal", "seq": 1, "ts": ts(9, 3, 0),
     "data": {"ts": ts(9, 3, 0), "priority": 6, "unit": "dnsmasq.service", "hostname": "gateway",
              "message": "DHCPACK(eth1) 10.42.0.13 52:54:00:11:22:03"}},
    {"type": "journal", "seq": 2, "ts": ts(9, 3, 5),
     "data": {"ts": ts(9, 3, 5), "priority": 5, "unit": "kernel", "hostname": "gateway",
              "message": "e1000e 0000:00:1f.6 eth1: NIC Link is Up 1000 Mbps Full Duplex"}},
]


# ----------------------------------------------------------------------------- settings (the Settings view)
def setting(name: str, value: Any, source: str = "default", editable: bool = False, secret: bool = False,
            overrides: str | None = None) -> dict[str, Any]:
    row = {"name": name, "value": value, "source": source, "variable": f"VALVE_CONSOLE_{name.upper()}",
           "editable": editable, "secret": secret}
    if overrides:
        row["overrides"] = overrides
    return row


SETTINGS_EDITABLE = ["training_loops", "training_qualify", "default_pdu_off_delay", "gitlab_sync_interval",
                     "gitlab_retry_max", "gitlab_timeout", "gitlab_verify_interval", "trusted_networks"]


def settings_data() -> dict[str, Any]:
    """GET /api/v1/settings of the fake farm: a few of each source, one secret, the editable ones."""
    return {
        "file": "/mnt/permanent/valve-console/settings.toml",
        "editable": list(SETTINGS_EDITABLE),
        "settings": [
            setting("data_dir", "/mnt/permanent/valve-console"),
            setting("listen", "0.0.0.0:8000", "command line"),
            setting("netconsole", "10.42.0.1:8100"),
            setting("farm_name", "vivian", "environment"),
            setting("database_url", None),
            setting("default_pdu_off_delay", 3.0, "data dir file", True,
                    overrides="overrides the environment's VALVE_CONSOLE_DEFAULT_PDU_OFF_DELAY=5"),
            setting("outlet_poll_interval", 10.0),
            setting("boot_kernel_url", None),
            setting("job_variables", {"mirror": "http://10.42.0.1:3142", "registry_password": "********"},
                    "environment", secret=True),
            setting("training", True),
            setting("training_loops", 20, editable=True),
            setting("training_qualify", 19, editable=True),
            setting("training_retry_delay", 120.0),
            setting("gitlab_sync_interval", 300.0, editable=True),
            setting("gitlab_retry_max", 300.0, editable=True),
            setting("gitlab_timeout", 10.0, "environment", True),
            setting("gitlab_verify_interval", 3600.0, editable=True),
            setting("trusted_networks", ["auto", "192.0.2.0/24"], "data dir file", True,
                    overrides="overrides the default value ['auto']"),
            setting("log_level", "INFO"),
        ],
    }


def patch_settings(data: dict[str, Any], changes: dict[str, Any]) -> httpx.Response:
    """PATCH /api/v1/settings of the fake farm: the qualify/loops rule and read-only names, else applied."""
    rows = {row["name"]: row for row in data["settings"]}
    for name in changes:
        if name not in SETTINGS_EDITABLE:
            return httpx.Response(400, json={"error": f"{name} cannot change while the farm runs: it is set by "
                                                      f"VALVE_CONSOLE_{name.upper()}"})
    loops = changes.get("training_loops", rows["training_loops"]["value"])
    qualify = changes.get("training_qualify", rows["training_qualify"]["value"])
    if qualify > loops:
        return httpx.Response(400, json={"error": f"training_qualify ({qualify}) cannot be more than training_loops "
                                                  f"({loops}): a machine could never qualify"})
    for name, value in changes.items():
        rows[name].update(value=value, source="data dir file")
    return httpx.Response(200, json=copy.deepcopy(data))


# ----------------------------------------------------------------------------------------- the client
class FakeFarmClient(FarmClient):
    """Answers the API from ``data``; ``events()`` yields ``events`` then stays open, quiet."""

    def __init__(self, data: dict[str, Any] | None = None, events: list[dict[str, Any]] | None = None,
                 down: bool = False, later_events: list[dict[str, Any]] | None = None) -> None:
        super().__init__("http://gateway.test:8000", token="snapshot")
        self.data = data or farm_data()
        self.down = down
        self.event_list = list(events or [])
        self.later_events = list(later_events or [])  # yielded once the PDUs were fetched (newer than them)
        self._pdus_fetched = asyncio.Event()
        self._real_http = self._http
        self._http = httpx.AsyncClient(base_url=self.base_url, transport=httpx.MockTransport(self._answer))

    async def close(self) -> None:
        await self._http.aclose()
        await self._real_http.aclose()

    def _answer(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        path = request.url.path
        d = self.data
        routes: dict[str, Any] = {
            "/api/v1/health": d["health"],
            "/api/v1/gateway": d["gateway"],
            "/api/v1/machines": {"machines": d["machines"]},
            "/api/v1/pdus": {"pdus": d["pdus"]},
            "/api/v1/pdu/drivers": {"drivers": d["drivers"]},
            "/api/v1/consoles": {"consoles": d["consoles"], "devices": d.get("devices", {})},
            "/api/v1/machine/discover": d.get("discovery", {"current": None, "queue": []}),
            "/api/v1/log": {"entries": d["log"]},
            "/api/v1/jobs": {"jobs": d.get("jobs", [])},
            "/api/v1/gitlab": d.get("gitlab", gitlab_data()),
        }
        if path == "/api/v1/settings":
            settings = d.setdefault("settings", settings_data())
            if request.method == "PATCH":
                return patch_settings(settings, json.loads(request.content))
            return httpx.Response(200, json=copy.deepcopy(settings))
        if path in routes:
            if path == "/api/v1/pdus":
                self._pdus_fetched.set()
            return httpx.Response(200, json=copy.deepcopy(routes[path]))
        if path.startswith("/api/v1/pdu/") and path.endswith("/power"):
            parts = path.split("/")  # ['', 'api', 'v1', 'pdu', name, 'port', id, 'power']
            since = request.url.params.get("since")
            series = power_series(parts[4], parts[6], float(since) if since else None)
            if series is None:
                return httpx.Response(404, json={"error": f"no readings for {parts[4]}/{parts[6]}"})
            return httpx.Response(200, json=series)
        if path.startswith("/api/v1/console/") and path.endswith("/log"):
            mac = path.split("/")[4]
            if mac in d["console_logs"]:
                return httpx.Response(200, text=d["console_logs"][mac], headers={"content-type": "text/plain"})
            return httpx.Response(404, json={"error": f"no console for machine {mac}"})
        if path.startswith("/api/v1/job/"):
            parts = path.split("/")
            found = [j for j in d.get("jobs", []) if j["id"] == parts[4]]
            if not found:
                return httpx.Response(404, json={"error": f"unknown job {parts[4]!r}"})
            if len(parts) > 5 and parts[5] == "console":
                return httpx.Response(200, text=d.get("job_consoles", {}).get(parts[4], ""),
                                      headers={"content-type": "text/plain"})
            if request.method == "DELETE":
                if found[0]["status"] not in ("QUEUED", "RUNNING"):
                    return httpx.Response(409, json={"error": f"job {parts[4]} is over ({found[0]['status']})"})
                found[0].update(status="INCOMPLETE", state="cancelled")
            return httpx.Response(200, json=copy.deepcopy(found[0]))
        return httpx.Response(404, content=json.dumps({"error": f"not in the fake farm: {path}"}),
                              headers={"content-type": "application/json"})

    async def events(self, types: list[str] | None = None) -> AsyncIterator[Event]:
        """The events as the real client yields them: parsed against the contract (strict in tests)."""
        if self.down:
            raise FarmClientError(f"event stream from {self.describe} lost: [Errno 111] Connection refused")
        for data in self.event_list:
            event = parse_event(copy.deepcopy(data))
            if event is not None:
                yield event
        if self.later_events:
            await self._pdus_fetched.wait()
            await asyncio.sleep(0.2)  # the snapshot is applied first
            for data in self.later_events:
                event = parse_event(copy.deepcopy(data))
                if event is not None:
                    yield event
        await asyncio.Event().wait()


# ---------------------------------------------------------------- the farm at a glance (the Overview, issue 19)
def training(state: str, loop: int, loops: int = 20, qualify: int = 19, attempt: int = 1,
             failures: list[dict[str, Any]] | None = None, reason: str | None = "a new machine",
             next_attempt_at: float | None = None) -> dict[str, Any]:
    """A machine's training as the API answers it."""
    failures = failures or []
    results = [{"loop": i, "status": "PASS", "job": f"train-{i}", "why": None, "at": ts(9, 0, i)}
               for i in range(1, loop)] + failures
    return {"is_active": state in ("registering", "looping", "cooldown"), "is_registered": True,
            "boot_loop_counts": loops, "qualifying_rate": qualify, "current_loop_count": loop,
            "statuses": {"PASS": loop - 1 - len(failures), "FAIL": len(failures)}, "state": state, "loop": loop,
            "loops": loops, "qualify": qualify, "passes": loop - 1 - len(failures), "results": results,
            "failures": failures, "attempt": attempt, "next_attempt_at": next_attempt_at, "reason": reason,
            "job": None, "started_at": ts(9, 0, 0), "updated_at": ts(9, 29, 0)}


GLANCE_MACS = {
    "idle": "52:54:00:11:22:21", "queued": "52:54:00:11:22:22", "training": "52:54:00:11:22:23",
    "backoff": "52:54:00:11:22:24", "unfit": "52:54:00:11:22:25", "runner": "52:54:00:11:22:26",
    "silent": "52:54:00:11:22:27", "infra": "52:54:00:11:22:28", "mismatch": "52:54:00:11:22:29",
}


def glance_farm_data() -> dict[str, Any]:
    """The fake farm with a DUT in every state and every kind of attention item: PDU unreachable (bench),
    an outlet read back wrong, the data volume low, training failing (backing off), unfit for service, a
    job failed for the farm's sake, a console silent on a running job, a power flag (vivian-virtio-2) and a
    runner whose token GitLab refused."""
    data = farm_data()
    m = GLANCE_MACS
    machines = data["machines"]
    vpdu1 = data["pdus"]["vpdu1"]["ports"]

    def add(key: str, name: str, state: str, port: str, since: float, **extra: Any) -> dict[str, Any]:
        entry = machine(m[key], name, f"10.42.0.{30 + len(machines)}", state, "vpdu1", port,
                        ready=state in ("IDLE", "RUNNING", "QUEUED"), since=since)
        entry.update(extra)
        machines[m[key]] = entry
        vpdu1[port]["state"] = "ON" if state in ("RUNNING", "TRAINING", "QUEUED") else vpdu1[port]["state"]
        return entry

    add("idle", "vivian-amd-1", "IDLE", "0", ts(9, 28, 30))
    add("queued", "vivian-amd-2", "QUEUED", "1", ts(9, 29, 10))
    add("training", "vivian-intel-1", "TRAINING", "2", ts(9, 1, 0), training=training("looping", 7))
    add("backoff", "vivian-intel-2", "TRAINING", "4", ts(9, 10, 0), training=training(
        "cooldown", 3, attempt=2, next_attempt_at=ts(9, 32, 0),
        failures=[{"loop": 2, "status": "FAIL", "job": "train-2", "why": "kernel panic", "at": ts(9, 9, 0)}]))
    add("unfit", "vivian-intel-3", "TRAINING", "6", ts(9, 25, 0),
        training=training("looping", 1, reason="unfit for service (job job-20260314-092400-5e6f70)"))
    add("runner", "vivian-nvidia-1", "IDLE", "8", ts(9, 5, 0), runners=[
        {"instance": "fdo", "runner_id": None, "state": "error",
         "error": "GitLab refused its token (403 Forbidden on POST /runners/verify); creating a new one failed",
         "verified_at": None, "verify": None, "token_expires_at": None}])
    add("silent", "vivian-nvidia-2", "RUNNING", "9", ts(9, 10, 0))
    add("infra", "vivian-qcom-1", "IDLE", "10", ts(9, 27, 0))
    add("mismatch", "vivian-qcom-2", "IDLE", "11", ts(9, 15, 0))
    vpdu1["11"]["mismatch"] = "read back OFF after switching ON"
    data["consoles"][m["silent"]] = dict(data["consoles"]["52:54:00:11:22:03"], mac=m["silent"],
                                         last_activity=ts(9, 18, 0), tcp_port=8209, writer=None, viewers=0)
    data["jobs"] = [
        job("job-20260314-091000-aa11bb", m["silent"], "RUNNING", "running", ts(9, 10, 0), started=ts(9, 10, 1)),
        job("job-20260314-092900-cc22dd", m["queued"], "QUEUED", "queued", ts(9, 29, 0)),
        job("job-20260314-092500-ee33ff", m["infra"], "INCOMPLETE", "done", ts(9, 20, 0), started=ts(9, 20, 2),
            ended=ts(9, 27, 0), result="the DUT never booted: no console output in 300 s"),
        job("job-20260314-082000-1a2b3c", m["idle"], "PASS", "done", ts(8, 20, 0), started=ts(8, 20, 1),
            ended=ts(8, 40, 0), result="pass"),
        job("job-20260314-072000-4d5e6f", m["idle"], "FAIL", "done", ts(7, 20, 0), started=ts(7, 20, 1),
            ended=ts(7, 50, 0), result="fail"),
        *data["jobs"],
    ]
    data["health"]["services"]["storage"] = {
        "state": "degraded", "reason": "the data volume is full: 41 MiB free on /mnt/permanent"}
    refused = machines[m["runner"]]["runners"][0]
    data["gitlab"] = gitlab_data()
    data["gitlab"]["runners"].append({"instance": "fdo", "mac_address": m["runner"], "gateway": False,
                                      "runner_id": None, "description": "vivian-nvidia-1",
                                      "tags": ["virtio:family:VIRTIO", "farm:vivian"], "error": refused["error"],
                                      "verified_at": None, "verify": None, "token_expires_at": None})
    return data
