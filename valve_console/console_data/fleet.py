"""A fleet: several gateways, each with its own client, event feed and farm model, and a row for each.

``read_fleet_file`` reads and checks a fleet file (TOML)::

    name = "lab"                                  # optional: the fleet's name in the top bar
    [[gateway]]
    name = "rack1"                                # optional: default host:port of the URL
    url = "http://10.0.0.2:8000"
    token_file = "/etc/valve/rack1.token"         # or token = "...", or neither (a trusted network)

Every problem is said in words (``FleetError``), all of them at once. ``Fleet`` then keeps one
``EventFeed`` per gateway (reconnecting with back-off on its own: a gateway down never holds the
others), applies each gateway's changes to its ``FarmModel`` and computes its ``FleetRow``: farm,
reachable or why not, version, DUTs by state, jobs, PDUs unreachable, alarms, power.

The gateways' clients are tolerant (``FarmClient(tolerant=True)``): a newer gateway's unknown keys
are dropped, never refused. No Textual here.
"""

from __future__ import annotations

import asyncio
import time
import tomllib
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol
from urllib.parse import urlsplit

from ..client import FarmClient, FarmClientError
from ..contract import DiscoveryStatus, JournalEntry, LogEntry
from .attention import attention
from .changes import Changes
from .feed import EventFeed
from .model import FarmModel
from .power import farm_watts, format_watts

RECENT_LOG = 5000
"""Log and journal entries kept per gateway (the Journal screen's backlog)."""
GATEWAY_KEYS = frozenset({"name", "url", "token", "token_file"})
FLEET_KEYS = frozenset({"name", "gateway"})
NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")
ROW_EVENTS = ("machine", "pdu", "outlet", "health", "job", "discovery")
"""What a gateway's row needs: the event types read from a gateway that is not the one shown (console
text and logs are most of a farm's events, and nothing in a row)."""
CONSOLES_EVERY = 60.0
"""Seconds between fetches of the consoles of the gateways not shown: their console events are not read,
and the alarm "console silent" (attention.SILENT_AFTER, 300 s) needs each console's last activity."""
DUT_STATES = ("IDLE", "RUNNING", "TRAINING", "QUEUED", "RETIRED", "OFFLINE")
"""The order DUT states are listed in a row (others follow, by name)."""


class FleetError(Exception):
    """A fleet file or fleet arguments that cannot be used, in words (one problem per line)."""


@dataclass(frozen=True)
class GatewaySpec:
    name: str
    url: str
    token: str | None = None


@dataclass(frozen=True)
class FleetSpec:
    name: str
    gateways: tuple[GatewaySpec, ...]


def check_url(url: object) -> str | None:
    """Why ``url`` is not a gateway's API URL (None: it is)."""
    if not isinstance(url, str) or not url.strip():
        return "has no url"
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        return f"has a bad url {url!r}: {exc}"
    if parts.scheme not in ("http", "https"):
        return f"has a bad url {url!r}: it must start with http:// or https://"
    if not parts.hostname:
        return f"has a bad url {url!r}: no host"
    if port == 0:
        return f"has a bad url {url!r}: port 0"
    return None


def default_name(url: str) -> str:
    """``host:port`` of ``url`` (the URL itself when it is not one)."""
    try:
        parts = urlsplit(url)
        return f"{parts.hostname}:{parts.port}" if parts.port else (parts.hostname or url)
    except ValueError:
        return url


def check_gateways(gateways: list[GatewaySpec]) -> list[str]:
    """The problems of a list of gateways: bad URLs, duplicate names, no gateway."""
    problems = []
    if not gateways:
        problems.append("no gateway given")
    seen: dict[str, int] = {}
    for i, gw in enumerate(gateways, 1):
        bad = check_url(gw.url)
        if bad:
            problems.append(f"gateway {i} ({gw.name}) {bad}")
        if bad and gw.name == gw.url:
            continue  # named after its URL: said once, above
        if not gw.name or not set(gw.name) <= NAME_CHARS:
            problems.append(f"gateway {i} has a bad name {gw.name!r}: use letters, digits, - _ . :")
        elif gw.name in seen:
            problems.append(f"gateway {i}: the name {gw.name!r} is already gateway {seen[gw.name]}'s "
                            "(names must differ)")
        else:
            seen[gw.name] = i
    return problems


def said(where: str, problems: list[str]) -> str:
    """``where: problem``, or ``where has N problems:`` and one per line."""
    if len(problems) == 1:
        return f"{where}: {problems[0]}"
    return f"{where} has {len(problems)} problems:\n  " + "\n  ".join(problems)


def _read_token_file(path: str, base: Path) -> tuple[str | None, str | None]:
    """(token, problem)."""
    full = (base / Path(path).expanduser()) if not Path(path).expanduser().is_absolute() else Path(path).expanduser()
    try:
        token = full.read_text().strip()
    except OSError as exc:
        return None, f"cannot read its token file {full}: {exc.strerror or exc}"
    except UnicodeDecodeError:
        return None, f"its token file {full} is not text"
    if not token:
        return None, f"its token file {full} is empty"
    return token, None


def parse_fleet(data: dict[str, Any], base: Path, where: str = "the fleet file") -> FleetSpec:
    """A fleet from decoded TOML; FleetError listing every problem. ``base``: where relative token
    files are (the fleet file's directory)."""
    problems: list[str] = []
    unknown = sorted(set(data) - FLEET_KEYS)
    if unknown:
        problems.append(f"unknown key(s) {', '.join(unknown)} (a fleet file has: name, [[gateway]])")
    name = data.get("name", "fleet")
    if not isinstance(name, str) or not name.strip():
        problems.append("name must be a non-empty string")
        name = "fleet"
    entries = data.get("gateway", [])
    if not isinstance(entries, list):
        problems.append("gateway must be a list of tables: write [[gateway]] before each")
        entries = []
    gateways: list[GatewaySpec] = []
    for i, entry in enumerate(entries, 1):
        if not isinstance(entry, dict):
            problems.append(f"gateway {i} is not a table")
            continue
        label = entry.get("name") if isinstance(entry.get("name"), str) else None
        what = f"gateway {i}" + (f" ({label})" if label else "")
        extra = sorted(set(entry) - GATEWAY_KEYS)
        if extra:
            problems.append(f"{what} has unknown key(s) {', '.join(extra)} (known: name, url, token, token_file)")
        url = entry.get("url")
        token = entry.get("token")
        token_file = entry.get("token_file")
        if token is not None and token_file is not None:
            problems.append(f"{what} has both token and token_file: give one")
        elif token is not None and (not isinstance(token, str) or not token.strip()):
            problems.append(f"{what} has an empty or non-string token")
            token = None
        elif token_file is not None:
            if not isinstance(token_file, str) or not token_file.strip():
                problems.append(f"{what} has an empty or non-string token_file")
            else:
                token, problem = _read_token_file(token_file, base)
                if problem:
                    problems.append(f"{what}: {problem}")
        if "name" in entry and not isinstance(entry["name"], str):
            problems.append(f"{what} has a name that is not a string")
            label = None
        url_text = url.strip() if isinstance(url, str) else ""
        gw_name = label if label is not None else (default_name(url_text) if url_text else f"gateway-{i}")
        gateways.append(GatewaySpec(gw_name, url_text if isinstance(url, str) else "",
                                    token.strip() if isinstance(token, str) else None))
    problems.extend(check_gateways(gateways) if gateways or not problems else [])
    if problems:
        raise FleetError(said(where, problems))
    return FleetSpec(name.strip(), tuple(gateways))


def read_fleet_file(path: Path) -> FleetSpec:
    """Read and check a fleet file; FleetError in words (a missing file, bad TOML, every bad entry)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise FleetError(f"cannot read the fleet file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise FleetError(f"the fleet file {path} is not text") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise FleetError(f"the fleet file {path} is not valid TOML: {exc}") from None
    return parse_fleet(data, path.resolve().parent, f"the fleet file {path}")


def fleet_of_urls(urls: list[str], tokens: list[str | None], name: str = "fleet") -> FleetSpec:
    """A fleet without a file (``--attach URL`` several times): ``tokens`` either one for every URL,
    or one per URL in order (None: no token). FleetError in words."""
    if len(tokens) not in (0, 1, len(urls)):
        raise FleetError(f"{len(urls)} --attach URLs and {len(tokens)} --token values: give one --token for all, "
                         "or one per --attach, in the same order")
    if len(tokens) == 1:
        tokens = tokens * len(urls)
    elif not tokens:
        tokens = [None] * len(urls)
    gateways = [GatewaySpec(default_name(u.strip()), u.strip(), t) for u, t in zip(urls, tokens, strict=True)]
    problems = check_gateways(gateways)
    if problems:
        raise FleetError(said("the --attach URLs", problems))
    return FleetSpec(name, tuple(gateways))


# ------------------------------------------------------------------------------------------- runtime
def lost_words(reason: str, error: FarmClientError | None, describe: str) -> str:
    """Why a gateway is not shown, in a few words for its row."""
    if error is not None and error.status == 401:
        return "token refused"
    if error is not None and error.status == 403:
        return f"forbidden: {error}"
    for prefix, say in ((f"backend unreachable at {describe}: ", "unreachable: "),
                        (f"event stream from {describe} lost: ", "event stream lost: ")):
        if reason.startswith(prefix):
            rest = reason[len(prefix):]
            if "connect" in rest.lower() or "name or service" in rest.lower():
                say = "unreachable: "  # the stream could not even be opened
            return say + rest
    if reason == "the event stream ended":
        return "the event stream ended (gateway stopping?)"
    if error is not None and error.status == 404:
        return f"not a valve-console API (404): {reason}"
    return reason or "no answer"


def new_log_entry(keys: OrderedDict[tuple[Any, ...], None], entry: LogEntry, limit: int = RECENT_LOG * 2) -> bool:
    """True the first time ``entry`` is seen (``keys``: the ones seen, bounded)."""
    key = (entry.ts, entry.logger, entry.message)
    if key in keys:
        return False
    keys[key] = None
    while len(keys) > limit:
        keys.popitem(last=False)
    return True


@dataclass(frozen=True)
class FleetRow:
    """One gateway as the Fleet screen lists it (plain strings)."""

    name: str
    farm: str
    status: str  # "up", or why not
    ok: bool
    version: str
    duts: str
    jobs: str
    pdus_unreachable: int
    alarms: int
    alarm_text: str  # the most urgent alarm, in words
    power: str


class FleetListener(Protocol):
    """What the console is told of its gateways (the app, or nothing in tests and benches)."""

    def gateway_flush(self, gateway: "Gateway") -> None: ...
    def gateway_connected(self, gateway: "Gateway") -> None: ...
    def gateway_lost(self, gateway: "Gateway", reason: str) -> None: ...
    def gateway_report(self, gateway: "Gateway", message: str, severity: str) -> None: ...
    def gateway_discovery(self, gateway: "Gateway", status: DiscoveryStatus) -> None: ...


class Gateway:
    """One gateway of the fleet: its client, feed, model, and whether it is reachable."""

    def __init__(self, spec: GatewaySpec, client: FarmClient, fleet: "Fleet") -> None:
        self.spec = spec
        self.name = spec.name
        self.client = client
        self.model = FarmModel()
        self.state = "connecting"  # connecting, up, lost
        self.reason = "connecting..."
        self.since = time.monotonic()
        self.recent_log: deque[tuple[str, LogEntry | JournalEntry]] = deque(maxlen=RECENT_LOG)
        self.log_keys: OrderedDict[tuple[Any, ...], None] = OrderedDict()
        self.dirty = True  # its row must be computed again
        self.feed = EventFeed(
            client,
            flush=lambda: fleet.listener.gateway_flush(self),
            connected=lambda: fleet._connected(self),
            lost=lambda reason: fleet._lost(self, reason),
            report=lambda message, severity: fleet.listener.gateway_report(self, message, severity),
            discovery=lambda status: fleet.listener.gateway_discovery(self, status),
        )

    @property
    def farm_name(self) -> str:
        return self.model.health.farm_name if self.model.health else ""

    @property
    def version(self) -> str:
        return self.model.health.version if self.model.health else ""

    def label(self) -> str:
        """``rack1 (farm lab-a, version 1.2)`` as far as known."""
        bits = [f"farm {self.farm_name}"] if self.farm_name and self.farm_name != self.name else []
        if self.version:
            bits.append(f"version {self.version}")
        return self.name + (f" ({', '.join(bits)})" if bits else "")


class _Quiet:
    """The listener before the console sets its own: changes are applied, nothing else."""

    def gateway_flush(self, gateway: Gateway) -> None:
        pass

    def gateway_connected(self, gateway: Gateway) -> None:
        pass

    def gateway_lost(self, gateway: Gateway, reason: str) -> None:
        pass

    def gateway_report(self, gateway: Gateway, message: str, severity: str) -> None:
        pass

    def gateway_discovery(self, gateway: Gateway, status: DiscoveryStatus) -> None:
        gateway.model.set_discovery(status)


class Fleet:
    """The gateways of a fleet file, in its order."""

    def __init__(self, spec: FleetSpec, make_client: Callable[[GatewaySpec], FarmClient] | None = None) -> None:
        self.name = spec.name
        self.listener: FleetListener = _Quiet()
        make = make_client or (lambda gw: FarmClient(gw.url, token=gw.token, tolerant=True))
        self.gateways: dict[str, Gateway] = {}
        for gw in spec.gateways:
            self.gateways[gw.name] = Gateway(gw, make(gw), self)

    def show(self, shown: Gateway) -> None:
        """``shown`` reads every event type; the others only what their rows need (ROW_EVENTS)."""
        for gw in self:
            gw.feed.set_types(None if gw is shown else ROW_EVENTS)

    def __iter__(self) -> Iterator[Gateway]:
        return iter(self.gateways.values())

    def __len__(self) -> int:
        return len(self.gateways)

    def __getitem__(self, name: str) -> Gateway:
        return self.gateways[name]

    async def close(self) -> None:
        for gw in self:
            gw.feed.close()
            await gw.client.close()

    # ---------------------------------------------------------------- feed callbacks
    def _connected(self, gw: Gateway) -> None:
        gw.state, gw.reason, gw.since, gw.dirty = "up", "", time.monotonic(), True
        self.listener.gateway_connected(gw)

    def _lost(self, gw: Gateway, reason: str) -> None:
        words = lost_words(reason, gw.feed.last_error, gw.client.describe)
        if gw.state != "lost" or gw.reason != words:
            gw.since = time.monotonic()
        gw.state, gw.reason, gw.dirty = "lost", words, True
        self.listener.gateway_lost(gw, reason)

    async def refresh_consoles(self, shown: Gateway | None) -> None:
        """Fetch the consoles of every reachable gateway but ``shown`` (whose stream carries them), into
        their feeds' buffers (applied at the next flush). A failure is the stream's to say."""
        async def one(gw: Gateway) -> None:
            try:
                consoles = await gw.client.consoles()
            except FarmClientError:
                return
            gw.feed.pending.console_info.update(consoles)

        await asyncio.gather(*(one(gw) for gw in self if gw is not shown and gw.state == "up"))

    # ---------------------------------------------------------------- changes
    def apply(self, gw: Gateway) -> Changes | None:
        """Take what ``gw``'s feed buffered and apply it to its model (logs de-duplicated and kept);
        the changes, or None when there were none."""
        changes = gw.feed.take()
        if changes is None:
            return None
        if changes.snapshot is not None:
            changes.logs = changes.snapshot.backend_log + changes.logs
        changes.logs = [e for e in changes.logs if new_log_entry(gw.log_keys, e)]
        gw.model.apply(changes)
        gw.recent_log.extend(("log", e) for e in changes.logs)
        gw.recent_log.extend(("journal", e) for e in changes.journal)
        if changes.snapshot is not None or changes.machines or changes.pdus or changes.outlets or changes.jobs \
                or changes.health:
            gw.dirty = True
        return changes

    def row(self, gw: Gateway, now: float | None = None) -> FleetRow:
        """``gw``'s row from its model (what was last known, with why it is not up)."""
        gw.dirty = False
        model = gw.model
        ok = gw.state == "up"
        status = "up" if ok else gw.reason
        if not model.loaded:
            return FleetRow(gw.name, "", status, ok, "", "", "", 0, 0, "", "")
        counts = model.counts()
        duts = counts["duts"]
        order = [s for s in DUT_STATES if s in duts] + sorted(s for s in duts if s not in DUT_STATES)
        dut_text = " ".join(f"{duts[s]} {s.lower()}" for s in order) or "none"
        items = attention(model, time.time() if now is None else now)
        unreachable = sum(1 for p in model.pdus.values() if p.state == "unreachable")
        watts = farm_watts(model.pdus)
        return FleetRow(
            name=gw.name,
            farm=gw.farm_name,
            status=status,
            ok=ok,
            version=gw.version,
            duts=f"{counts['machines']}: {dut_text}" if counts["machines"] else "none",
            jobs=f"{counts['jobs']} running, {counts['jobs_queued']} queued",
            pdus_unreachable=unreachable,
            alarms=len(items),
            alarm_text=items[0].message if items else "",
            power=format_watts(watts) if watts is not None else "",
        )
