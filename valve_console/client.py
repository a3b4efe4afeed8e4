"""FarmClient: the typed async door to a farm's HTTP API, and its event stream.

The TUI uses nothing else, so it works the same in the all-in-one program (over the unix
socket), with ``--attach URL``, over ssh and in the browser. Errors come back as
``FarmClientError`` carrying the API's ``{"error": ...}`` message and status code.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import time
from contextlib import aclosing
from pathlib import Path
from typing import Any, AsyncIterator, TypeVar

import httpx
from httpx_sse import ServerSentEvent, aconnect_sse
from pydantic import BaseModel, ValidationError

from .contract import (
    STRICT,
    BackendLog,
    Console,
    Consoles,
    DiscoveryStarted,
    DiscoveryStatus,
    Event,
    FarmSettings,
    Gateway,
    Gitlab,
    GitlabInstance,
    GitlabRemoved,
    GitlabRunner,
    Health,
    Job,
    Jobs,
    LogEntry,
    Machine,
    Machines,
    OutletsDiscovery,
    Pdu,
    PowerSeries,
    Pdus,
    SerialDevice,
    UnboundStream,
    UnboundStreams,
)

log = logging.getLogger(__name__)

# Sent on every request: where valve-infra's tools expect valve-infra's answers (text for discovery and
# cancel_job, {"version", "error_msg"} for a v1 job form), our clients get the richer JSON.
CLIENT_HEADERS = {"X-Valve-Console-Client": "1"}


class FarmClientError(Exception):
    """An API call failed. ``status`` is the HTTP code, or None when the backend was unreachable."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


M = TypeVar("M", bound=BaseModel)


def contract_error(what: str, exc: ValidationError) -> str:
    """A failed parse in words: the call and each key that did not fit (``machines.<mac>.state: Field
    required``), so a renamed key names itself."""
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '(answer)'}: {e['msg']}" for e in exc.errors()[:5]
    )
    more = f" (and {exc.error_count() - 5} more)" if exc.error_count() > 5 else ""
    return f"the answer to {what} does not fit the contract: {problems}{more}"


def without_extras(data: Any, exc: ValidationError) -> Any:
    """``data`` without the keys ``exc`` found undeclared (``extra_forbidden``): a copy, or None when
    the answer has another problem too (a missing or mistyped key is never tolerated)."""
    errors = exc.errors()
    if not errors or any(e["type"] != "extra_forbidden" for e in errors):
        return None
    pruned = copy.deepcopy(data)
    for error in errors:
        *path, key = error["loc"]
        node = pruned
        for step in path:
            node = node[step]
        if isinstance(node, dict):
            node.pop(key, None)
    return pruned


def parse(model: type[M], data: Any, what: str, tolerant: bool = False) -> M:
    """``data`` (decoded JSON) as ``model``; FarmClientError in words when it does not fit.

    ``tolerant``: keys the contract does not declare are dropped instead of refused, even under the
    strict contract (a fleet's newer gateways answer fields this console does not know)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        pruned = without_extras(data, exc) if tolerant else None
        if pruned is not None:
            return parse(model, pruned, what)
        raise FarmClientError(contract_error(what, exc)) from None


def parse_event(data: Any, tolerant: bool = False) -> Event | None:
    """One event of the stream as an ``Event`` whose data fits its model (``Event.parsed``). An event
    that does not fit raises FarmClientError under the strict contract, else is logged and skipped.
    ``tolerant`` (fleet clients): undeclared keys are dropped, the event kept (see ``parse``)."""
    try:
        event = Event.model_validate(data)
        try:
            event.parsed()
        except ValidationError as exc:
            pruned = without_extras(event.data, exc) if tolerant else None
            if pruned is None:
                raise
            event = Event(type=event.type, seq=event.seq, ts=event.ts, data=pruned)
            event.parsed()
        return event
    except ValidationError as exc:
        if tolerant and isinstance(data, dict):
            pruned = without_extras(data, exc)
            if pruned is not None:
                return parse_event(pruned, tolerant)
        kind = data.get("type") if isinstance(data, dict) else None
        message = contract_error(f"a {kind or 'malformed'} event", exc)
        if STRICT:
            raise FarmClientError(message) from None
        log.warning("%s", message)
        return None


class FarmClient:
    def __init__(
        self,
        url: str | None = None,
        *,
        token: str | None = None,
        socket_path: str | Path | None = None,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
        tolerant: bool = False,
    ) -> None:
        """``tolerant``: answers and events with keys this console does not know are accepted (the
        keys dropped), even under the strict contract; a fleet's clients are tolerant, since the
        gateways of a fleet run different versions."""
        if url is None and socket_path is None:
            raise ValueError("give the API url or the unix socket path")
        headers = {**CLIENT_HEADERS, **({"Authorization": f"Bearer {token}"} if token else {})}
        if transport is None and socket_path:
            transport = httpx.AsyncHTTPTransport(uds=str(socket_path))
        self.base_url = (url or "http://valve-console").rstrip("/")
        self.describe = url or f"unix:{socket_path}"
        self.tolerant = tolerant
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=headers, transport=transport, timeout=timeout)

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "FarmClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ plumbing
    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One API call; an unreachable backend or an error answer raises FarmClientError in words."""
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise FarmClientError(f"backend unreachable at {self.describe}: {exc or type(exc).__name__}") from None
        if response.status_code >= 400:
            try:
                message = response.json().get("error") or response.text
            except (ValueError, AttributeError):
                message = response.text or response.reason_phrase
            raise FarmClientError(message, response.status_code)
        return response

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self._send(method, path, **kwargs)
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.text

    async def answer(self, model: type[M], method: str, path: str, **kwargs: Any) -> M:
        """One API call whose JSON answer is parsed into its contract ``model``; an answer that does not
        fit (a key renamed or missing, or an undeclared one under the strict contract) raises
        FarmClientError naming the call and the keys."""
        return parse(model, await self.request(method, path, **kwargs), f"{method} {path}", self.tolerant)

    # ------------------------------------------------------------------ reads
    async def health(self) -> Health:
        return await self.answer(Health, "GET", "/api/v1/health")

    async def gateway(self) -> Gateway:
        return await self.answer(Gateway, "GET", "/api/v1/gateway")

    async def machines(self) -> dict[str, Machine]:
        return (await self.answer(Machines, "GET", "/api/v1/machines")).machines

    async def pdus(self) -> dict[str, Pdu]:
        return (await self.answer(Pdus, "GET", "/api/v1/pdus")).pdus

    async def drivers(self) -> list[str]:
        return (await self.request("GET", "/api/v1/pdu/drivers"))["drivers"]

    async def consoles_and_devices(self) -> Consoles:
        """The consoles (mac -> console) and the serial devices seen (identity -> device), in one answer."""
        return await self.answer(Consoles, "GET", "/api/v1/consoles")

    async def consoles(self) -> dict[str, Console]:
        return (await self.consoles_and_devices()).consoles

    async def console_log(self, mac: str) -> str:
        return await self.request("GET", f"/api/v1/console/{mac}/log")

    async def backend_log(self, lines: int = 500) -> list[LogEntry]:
        return (await self.answer(BackendLog, "GET", "/api/v1/log", params={"lines": lines})).entries

    async def power_series(self, pdu: str, port_id: str, since: float | None = None) -> PowerSeries:
        """An outlet's power readings (``[t, watts]``, oldest first) since ``since`` (Unix time; None: all kept)."""
        params = {} if since is None else {"since": f"{float(since):.3f}"}
        return await self.answer(PowerSeries, "GET", f"/api/v1/pdu/{pdu}/port/{port_id}/power", params=params)

    async def jobs(self) -> list[Job]:
        """Every job the backend keeps, newest first."""
        return (await self.answer(Jobs, "GET", "/api/v1/jobs")).jobs

    async def cancel_job(self, job_id: str) -> Job:
        """Cancel a job: a queued one leaves the queue, a running one is stopped."""
        return await self.answer(Job, "DELETE", f"/api/v1/job/{job_id}")

    async def job_console(self, job_id: str) -> str:
        """The job's console text (so far, while it runs)."""
        return await self.request("GET", f"/api/v1/job/{job_id}/console")

    async def settings(self) -> FarmSettings:
        """Every effective setting of the farm (secrets masked), its source and whether it may change."""
        return await self.answer(FarmSettings, "GET", "/api/v1/settings")

    # ------------------------------------------------------------------ actions
    async def update_settings(self, changes: dict[str, Any]) -> FarmSettings:
        """Change run-time settings, all or nothing (None: back to the start-up value); the new settings."""
        return await self.answer(FarmSettings, "PATCH", "/api/v1/settings", json=changes)

    async def update_machine(self, mac: str, **fields: Any) -> Machine:
        return await self.answer(Machine, "PATCH", f"/api/v1/machine/{mac}/", json=fields)

    async def remove_machine(self, mac: str) -> dict[str, Any]:
        return await self.request("DELETE", f"/api/v1/machine/{mac}/")

    async def retire(self, mac: str) -> str:
        return await self.request("POST", f"/api/v1/machine/{mac}/retire")

    async def activate(self, mac: str) -> str:
        return await self.request("POST", f"/api/v1/machine/{mac}/activate")

    async def approve_registration(self, mac: str) -> Machine:
        """Apply a machine's held registration; returns the machine."""
        return await self.answer(Machine, "POST", f"/api/v1/machine/{mac}/registration/approve")

    async def reject_registration(self, mac: str) -> Machine:
        """Drop a machine's held registration (the machine stays as it is); returns the machine."""
        return await self.answer(Machine, "POST", f"/api/v1/machine/{mac}/registration/reject")

    async def training(self, mac: str, action: str) -> Machine:
        """Sgt. Hartman: ``start``, ``stop`` or ``skip`` a machine's training; returns the machine."""
        return await self.answer(Machine, "POST", f"/api/v1/machine/{mac}/training/{action}")

    async def set_outlet(self, pdu: str, port_id: str, state: str) -> str:
        """Switch an outlet (``on``, ``off``, ``reboot``); returns the state read back."""
        return (await self.request("POST", f"/api/v1/pdu/{pdu}/port/{port_id}/state", json={"state": state}))["state"]

    async def add_pdu(
        self, name: str, driver: str, config: dict[str, Any], reserved_ports: list[str] | None = None
    ) -> Pdu:
        body = {"name": name, "driver": driver, "config": config, "reserved_ports": reserved_ports or []}
        return await self.answer(Pdu, "POST", "/api/v1/pdu/", json=body)

    async def remove_pdu(self, name: str) -> dict[str, Any]:
        return await self.request("DELETE", f"/api/v1/pdu/{name}")

    async def discover(self, pdu: str, port_id: str, timeout: float | None = None) -> DiscoveryStarted:
        """Power a free outlet on; the next machine registering without an outlet gets it."""
        body: dict[str, Any] = {"pdu": pdu, "port_id": port_id}
        if timeout is not None:
            body["timeout"] = timeout
        return await self.answer(DiscoveryStarted, "POST", "/api/v1/machine/discover", json=body)

    async def find_outlets(self, pdu: str, timeout: float | None = None) -> OutletsDiscovery:
        """Discover every free outlet of a PDU, one after another."""
        body = {"timeout": timeout} if timeout else {}
        return await self.answer(OutletsDiscovery, "POST", f"/api/v1/pdu/{pdu}/discover", json=body)

    async def discovery(self) -> DiscoveryStatus:
        return await self.answer(DiscoveryStatus, "GET", "/api/v1/machine/discover")

    async def cancel_discovery(self) -> DiscoveryStatus:
        """Cancel the running discovery and the queued outlets; returns the status (now empty)."""
        return await self.answer(DiscoveryStatus, "DELETE", "/api/v1/machine/discover")

    async def console_input(self, mac: str, data: str, writer: str | None = None, takeover: bool = False) -> int:
        """Type into a console. Raises FarmClientError 409 while someone else holds write (unless takeover)."""
        body: dict[str, Any] = {"data": data}
        if writer is not None:
            body["writer"] = writer
        if takeover:
            body["takeover"] = True
        return (await self.request("POST", f"/api/v1/console/{mac}/input", json=body))["written"]

    async def release_console_writer(self, mac: str, writer: str | None = None) -> dict[str, Any]:
        params = {"writer": writer} if writer else None
        return await self.request("DELETE", f"/api/v1/console/{mac}/writer", params=params)

    async def set_console_device(self, mac: str, device: str | None) -> Console:
        """Bind a serial device identity to a machine's console (None unbinds it); returns the console."""
        return await self.answer(Console, "PUT", f"/api/v1/console/{mac}/device", json={"device": device})

    async def set_console_source(self, mac: str, url: str | None) -> Console:
        """Read a machine's console from ``tcp://HOST:PORT`` or ``rfc2217://HOST:PORT`` (None: stop)."""
        return await self.answer(Console, "PUT", f"/api/v1/console/{mac}/source", json={"url": url})

    async def remove_console(self, mac: str) -> dict[str, Any]:
        """Remove a machine's console (port, logs, stored settings). 409 while a job reads it."""
        return await self.request("DELETE", f"/api/v1/console/{mac}")

    async def unbound_streams(self) -> dict[str, UnboundStream]:
        """Console streams bound to no machine (id -> source, announced, waiting, tail...), oldest first."""
        return (await self.answer(UnboundStreams, "GET", "/api/v1/consoles/unbound")).streams

    async def bind_stream(self, stream_id: str, mac: str, replace: bool = False) -> dict[str, Any]:
        """Make an unbound stream ``mac``'s console; 409 if that console is live elsewhere (unless replace)."""
        body: dict[str, Any] = {"mac": mac}
        if replace:
            body["replace"] = True
        return await self.request("POST", f"/api/v1/consoles/unbound/{stream_id}/bind", json=body)

    async def close_stream(self, stream_id: str) -> dict[str, Any]:
        """Drop an unbound netconsole connection."""
        return await self.request("DELETE", f"/api/v1/consoles/unbound/{stream_id}")

    async def console_devices(self) -> dict[str, SerialDevice]:
        return (await self.consoles_and_devices()).devices

    # ------------------------------------------------------------------ GitLab
    async def gitlab(self) -> Gitlab:
        """The GitLab instances (tokens masked), their runners, config.toml and the pre-build filter."""
        return await self.answer(Gitlab, "GET", "/api/v1/gitlab")

    async def add_gitlab(self, name: str, url: str, token: str = "", **fields: Any) -> GitlabInstance:
        """Add an instance (``registration_token``, ``farm_name``, ``expose_runners``, ``farm_tags``); the
        backend tries the URL and token on GitLab first: a 400 says what GitLab answered."""
        body = {"name": name, "url": url, "token": token, **fields}
        return await self.answer(GitlabInstance, "POST", "/api/v1/gitlab", json=body)

    async def update_gitlab(self, name: str, **fields: Any) -> GitlabInstance:
        """Change an instance; a new URL or token is tried on GitLab before it is stored."""
        return await self.answer(GitlabInstance, "PATCH", f"/api/v1/gitlab/{name}", json=fields)

    async def remove_gitlab(self, name: str) -> GitlabRemoved:
        """Remove an instance; its runners are deleted on GitLab (the ids that could not be are listed)."""
        return await self.answer(GitlabRemoved, "DELETE", f"/api/v1/gitlab/{name}")

    async def sync_gitlab(self, name: str) -> GitlabInstance:
        """A full sync of an instance now; answers its state after it."""
        return await self.answer(GitlabInstance, "POST", f"/api/v1/gitlab/{name}/sync")

    async def renew_gitlab_runner(self, name: str, mac: str) -> GitlabRunner:
        """Renew a runner's token now (``mac``: the machine's, or ``gateway``); answers the new runner."""
        return await self.answer(GitlabRunner, "POST", f"/api/v1/gitlab/{name}/runners/{mac}/renew")

    # ------------------------------------------------------------------ events
    async def events(self, types: list[str] | None = None) -> AsyncIterator[Event]:
        """Yield events (contract ``Event``s: type, seq, ts, data; ``event.parsed()`` is the data as its
        model) until the stream ends or fails.

        Raises FarmClientError when the backend cannot be reached; the caller reconnects. An event that
        does not fit the contract is logged and a ``dropped`` marker given in its place (one bad event
        must not cut the stream; the reader refetches), or raises FarmClientError under the strict
        contract (tests).
        """
        params = {"types": ",".join(types)} if types else None
        lost = f"event stream from {self.describe} lost"
        async with aclosing(self._sse_json("/api/v1/events", params, lost)) as events:
            async for data in events:
                event = parse_event(data, self.tolerant)
                yield event if event is not None else Event(type="dropped", seq=-1, ts=time.time(), data={"count": 1})

    async def _sse_json(self, path: str, params: dict[str, str] | None, lost: str) -> AsyncIterator[dict[str, Any]]:
        """The JSON data of a Server-Sent Events stream (httpx-sse); an error answer or a lost stream
        raises FarmClientError (``lost`` says which stream)."""
        try:
            async with aconnect_sse(self._http, "GET", path, params=params, timeout=None) as source:
                response = source.response
                if response.status_code >= 400:
                    await response.aread()
                    raise FarmClientError(response.text, response.status_code)
                async for event in _json_events(source.aiter_sse()):
                    yield event
        except httpx.HTTPError as exc:  # httpx_sse.SSEError (not an event stream) is one too
            raise FarmClientError(f"{lost}: {exc or type(exc).__name__}") from None


MAX_EVENT_CHARS = 16 << 20  # one event's data; the backend's largest (a console batch) is 256 KiB


async def _json_events(events: AsyncIterator[ServerSentEvent]) -> AsyncIterator[dict[str, Any]]:
    """Server-Sent Events → their JSON data. An event larger than MAX_EVENT_CHARS is skipped (and a
    ``dropped`` event given in its place, so a reader refetches). httpx-sse hands the event over whole,
    as ``aiter_lines`` handed over each whole line before: the backend sends one ``data:`` line per event."""
    async for sse in events:
        if not sse.data:
            continue  # ``retry:`` and the like
        if len(sse.data) > MAX_EVENT_CHARS:
            log.warning("an event of more than %d characters was skipped", MAX_EVENT_CHARS)
            yield {"type": "dropped", "seq": -1, "ts": time.time(), "data": {"count": 1}}
            continue
        try:
            yield json.loads(sse.data)
        except ValueError:
            log.warning("unparsable event: %.80s", sse.data)


# ---------------------------------------------------------------------------------------- job client
# Exit codes are the JobStatus numbers (PASS 0 ... SETUP_FAIL 6).
JOB_EXIT = {"PASS": 0, "WARN": 1, "COMPLETE": 2, "FAIL": 3, "INCOMPLETE": 4, "UNKNOWN": 5, "SETUP_FAIL": 6}
CTRL_A, CTRL_C = b"\x01", b"\x03"


SHARE_UNPACK_MAX = 1 << 36  # the gateway limits shares; this only bounds a broken or hostile answer


class JobClient:
    """``valve-console job run``: submit a job, stream its console (stdout, raw) and control messages
    (stderr), forward a tty's keystrokes, and return the job status as exit code.

    Only the client connects (HTTP + SSE), so it works behind NAT; a lost stream is resumed.
    """

    def __init__(self, url: str, token: str | None, *, out: Any = None, err: Any = None, stdin: Any = None) -> None:
        import sys

        self.url = url.rstrip("/")
        self.headers = {**CLIENT_HEADERS, **({"Authorization": f"Bearer {token}"} if token else {})}
        self.out = out if out is not None else sys.stdout.buffer
        self.err = err if err is not None else sys.stderr
        self.stdin = stdin if stdin is not None else sys.stdin
        self.job_id: str | None = None
        self._http: httpx.AsyncClient | None = None
        self._escape = False
        self._quit: asyncio.Future[int] | None = None
        self._inputs: set[asyncio.Task] = set()
        self._ended = False

    def say(self, text: str) -> None:
        print(text, file=self.err, flush=True)

    async def run(
        self,
        job_text: str,
        tags: list[str] | None = None,
        machine_id: str | None = None,
        job_id: str | None = None,
        share_dir: Path | None = None,
    ) -> int:
        """Submit, follow, return the exit code. With ``share_dir`` (created if missing) its files go with
        the job (valve-infra's multipart form) and the job's share comes back into it when the job ends."""
        body: dict[str, Any] = {"job": job_text}
        target: dict[str, Any] = {}
        if tags:
            target["tags"] = list(tags)
        if machine_id:
            target["id"] = machine_id
        if target:
            body["target"] = target
        if job_id:
            body["job_id"] = job_id
        async with httpx.AsyncClient(base_url=self.url, headers=self.headers, timeout=30) as http:
            self._http = http
            try:
                if share_dir is not None:
                    files = await self._share_form(body, share_dir)
                    if files is None:
                        return JOB_EXIT["SETUP_FAIL"]
                    response = await http.post("/api/v1/jobs", files=files)
                else:
                    response = await http.post("/api/v1/jobs", json=body)
            except httpx.HTTPError as exc:
                self.say(f"valve-console: backend unreachable at {self.url}: {exc or type(exc).__name__}")
                return JOB_EXIT["SETUP_FAIL"]
            if response.status_code >= 400:
                try:
                    message = response.json().get("error") or response.text
                except ValueError:
                    message = response.text
                self.say(f"valve-console: the job was refused (HTTP {response.status_code}): {message}")
                return JOB_EXIT["SETUP_FAIL"]
            answer = response.json()
            self.job_id = answer["id"]
            where = answer.get("machine")
            self.say(f"valve-console: job {self.job_id} queued for {where}, position {answer['position']}")
            loop = asyncio.get_running_loop()
            self._quit = loop.create_future()
            restore = self._start_input()
            stream = asyncio.create_task(self._stream())
            try:
                done, _ = await asyncio.wait({stream, self._quit}, return_when=asyncio.FIRST_COMPLETED)
                if self._quit in done:
                    return self._quit.result()
                code = stream.result()
                if share_dir is not None and self._ended:
                    await self._fetch_share(share_dir)
                return code
            except asyncio.CancelledError:
                await self.cancel()
                return JOB_EXIT["INCOMPLETE"]
            finally:
                stream.cancel()
                restore()
                await asyncio.gather(stream, *self._inputs, return_exceptions=True)

    async def _share_form(self, body: dict[str, Any], share_dir: Path) -> dict[str, Any] | None:
        """valve-infra's v1 multipart form: metadata, job and the share directory as a tar.gz."""
        from .tarball import pack_dir

        try:
            await asyncio.to_thread(share_dir.mkdir, parents=True, exist_ok=True)
            tarball = await asyncio.to_thread(pack_dir, share_dir)
        except OSError as exc:
            self.say(f"valve-console: cannot read the share directory {share_dir}: {exc.strerror or exc}")
            return None
        meta = {"version": 1, **{k: v for k, v in body.items() if k in ("target", "job_id")}}
        return {
            "metadata": (None, json.dumps(meta).encode(), "application/json"),
            "job": (None, body["job"].encode("utf-8"), "application/x-yaml"),
            "job_bucket_initial_state_tarball_file": ("share.tar.gz", tarball, "application/octet-stream"),
        }

    async def _fetch_share(self, share_dir: Path) -> None:
        """Download the job's share (a tar.gz) and unpack it safely into ``share_dir``."""
        from .tarball import ShareError, safe_extract

        assert self._http is not None
        try:
            response = await self._http.get(f"/api/v1/job/{self.job_id}/share", timeout=httpx.Timeout(30, read=300))
        except httpx.HTTPError as exc:
            self.say(f"valve-console: could not download the job share: {exc or type(exc).__name__}")
            return
        if response.status_code != 200:
            try:
                message = response.json().get("error") or response.text
            except ValueError:
                message = response.text
            self.say(f"valve-console: the job share was not given back (HTTP {response.status_code}): {message}")
            return
        try:
            names = await asyncio.to_thread(safe_extract, response.content, share_dir, SHARE_UNPACK_MAX)
        except (ShareError, OSError) as exc:
            self.say(f"valve-console: could not unpack the job share into {share_dir}: {exc}")
            return
        self.say(f"valve-console: the job share ({len(names)} entries) is in {share_dir}")

    async def cancel(self) -> None:
        if self._http is None or self.job_id is None:
            return
        try:
            await self._http.delete(f"/api/v1/job/{self.job_id}")
            self.say(f"valve-console: job {self.job_id} cancelled")
        except httpx.HTTPError as exc:
            self.say(f"valve-console: could not cancel job {self.job_id}: {exc}")

    async def _stream(self) -> int:
        import base64

        assert self._http is not None
        io_offset = ctrl_offset = 0
        failures = 0
        while True:
            params = {"io_offset": io_offset, "ctrl_offset": ctrl_offset}
            try:
                async with aconnect_sse(
                    self._http, "GET", f"/api/v1/job/{self.job_id}/events", params=params,
                    timeout=httpx.Timeout(30, read=None),
                ) as source:
                    response = source.response
                    if response.status_code >= 400:
                        await response.aread()
                        self.say(f"valve-console: job stream refused (HTTP {response.status_code}): {response.text}")
                        return JOB_EXIT["SETUP_FAIL"]
                    failures = 0
                    async for sse in source.aiter_sse():
                        if not sse.data:
                            continue
                        kind, data = sse.event, sse.json()
                        if kind == "job_io":
                            chunk = base64.b85decode(data["data"])
                            io_offset += len(chunk)
                            self.out.write(chunk)
                            self.out.flush()
                        elif kind == "ctrl":
                            ctrl_offset += 1
                            self.say(data.get("msg", ""))
                        elif kind == "queue":
                            self.say(f"valve-console: waiting in the queue, position {data.get('position')}")
                        elif kind == "session_end":
                            self._ended = True
                            status = str(data.get("status", "UNKNOWN"))
                            return JOB_EXIT.get(status, JOB_EXIT["UNKNOWN"])
            except httpx.HTTPError as exc:
                failures += 1
                if failures > 30:
                    self.say(f"valve-console: lost the job stream: {exc or type(exc).__name__}")
                    return JOB_EXIT["SETUP_FAIL"]
            await asyncio.sleep(1.0)

    # ---------------------------------------------------------------- keyboard
    def _start_input(self) -> Any:
        """Forward a tty's keystrokes (cbreak mode); returns the function that restores the terminal."""
        try:
            fd = self.stdin.fileno()
        except (AttributeError, ValueError, OSError):
            return lambda: None
        import os
        import termios
        import tty

        if not os.isatty(fd):
            return lambda: None
        saved = termios.tcgetattr(fd)
        tty.setcbreak(fd)
        attrs = termios.tcgetattr(fd)
        attrs[3] &= ~termios.ISIG  # Ctrl-C is a key for the DUT, not a signal for us
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
        loop = asyncio.get_running_loop()
        loop.add_reader(fd, self._on_stdin, fd)

        def restore() -> None:
            loop.remove_reader(fd)
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)

        return restore

    def _on_stdin(self, fd: int) -> None:
        import os

        try:
            data = os.read(fd, 1024)
        except OSError:
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(fd)
            return
        self.keys(data)

    def keys(self, data: bytes) -> None:
        """Keystrokes typed: Ctrl-A is the escape (Ctrl-A Ctrl-A sends Ctrl-A, Ctrl-A Ctrl-C quits)."""
        send = bytearray()
        for byte in data:
            key = bytes([byte])
            if self._escape:
                self._escape = False
                if key == CTRL_C:
                    self._send(bytes(send))
                    task = asyncio.ensure_future(self._quit_incomplete())
                    self._inputs.add(task)
                    return
                send += key  # Ctrl-A Ctrl-A → Ctrl-A; Ctrl-A <other> → <other>
            elif key == CTRL_A:
                self._escape = True
            else:
                send += key
        self._send(bytes(send))

    async def _quit_incomplete(self) -> None:
        await self.cancel()
        if self._quit is not None and not self._quit.done():
            self._quit.set_result(JOB_EXIT["INCOMPLETE"])

    def _send(self, data: bytes) -> None:
        if not data or self._http is None:
            return

        async def post() -> None:
            assert self._http is not None
            try:
                await self._http.post(
                    f"/api/v1/job/{self.job_id}/input", json={"data": data.decode("utf-8", "surrogateescape")}
                )
            except httpx.HTTPError:
                pass

        task = asyncio.ensure_future(post())
        self._inputs.add(task)
        task.add_done_callback(self._inputs.discard)


async def run_job_file(
    url: str,
    token: str | None,
    path: str,
    tags: list[str] | None = None,
    machine_id: str | None = None,
    job_id: str | None = None,
    share_dir: str | Path | None = None,
) -> int:
    """``valve-console job run``: returns the exit code."""
    import signal
    import sys

    try:
        text = Path(path).read_text(encoding="utf-8") if path != "-" else sys.stdin.read()
    except (OSError, UnicodeDecodeError) as exc:
        print(f"valve-console: cannot read the job {path}: {exc}", file=sys.stderr)
        return JOB_EXIT["SETUP_FAIL"]
    client = JobClient(url, token)
    share = Path(share_dir) if share_dir is not None else None
    task = asyncio.ensure_future(client.run(text, tags, machine_id, job_id, share))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, task.cancel)
    try:
        return await task
    except asyncio.CancelledError:
        await client.cancel()
        return JOB_EXIT["INCOMPLETE"]
