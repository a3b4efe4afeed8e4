"""The callback: the gateway connects to a valve-infra job client and speaks its stream protocol (§4.5).

valve-infra's job client (``executorctl``, 2022) listens on a TCP port, names it in its submission
(``callback: {port, host?}``; the host defaults to the HTTP peer) and waits 5 s after its 200 for the
executor to connect. Then, in protocol v1, both sides exchange frames: a 4-byte big-endian length and
UTF-8 JSON ``{"msg_type", "date", "payload"}``:

- ``ctrl``: ``{"msg": "+<seconds>s: <text>\\n", "severity": 0-3}`` (the client prints it as it is),
- ``job_io``: the base85 of raw bytes (console output to the client, keystrokes from it),
- ``session_end``: ``{"status": "<JobStatus name>"}``, after which the gateway half-closes and waits
  for the client to close (at most the job's ``infra_teardown``).

valve-infra answered 409 for a busy machine and the client retried; here the job waits in the machine's
queue and the client hears its position as ``ctrl`` lines, so its 5 s accept window is kept. A client that
goes away before ``session_end`` cancels its job (the DUT is powered off); a callback that cannot be reached
fails the job with the reason; a bad frame from the client (oversized, not JSON, bad base85) ends that
job alone, in words. Protocol v0 (the deprecated JSON submission) is raw bytes both ways, ended by
``<-- End of the session: <STATUS> -->``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import struct
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Optional

from .submission import Callback

from .jobs.executor import ListenerOverflow

if TYPE_CHECKING:
    from .jobs.executor import JobService, RunningJob

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0  # seconds to reach the client's callback port
WRITE_TIMEOUT = 300.0  # seconds a client may leave its socket full before it counts as gone
MAX_FRAME = 1024 * 1024  # bytes of one frame from a client (keystrokes: a frame is a few bytes)
QUEUED_REMINDER = 60.0  # seconds between "still queued" lines while the job waits
LENGTH = struct.Struct("!I")


class BadFrame(Exception):
    """A frame from the client that is not valve-infra's protocol; the message says why."""


def frame(msg_type: str, payload: Any) -> bytes:
    """One v1 frame. The date is naive ISO-8601 UTC, which every Python's ``fromisoformat`` reads."""
    body = json.dumps(
        {"msg_type": msg_type, "date": datetime.now(timezone.utc).replace(tzinfo=None).isoformat(), "payload": payload},
        separators=(",", ":"),
    ).encode("utf-8")
    return LENGTH.pack(len(body)) + body


def ctrl_frame(msg: str, severity: int = 1) -> bytes:
    return frame("ctrl", {"msg": msg if msg.endswith("\n") else msg + "\n", "severity": severity})


async def read_frame(reader: asyncio.StreamReader) -> Optional[dict[str, Any]]:
    """The next frame from the client, or None at a clean end of stream; ``BadFrame`` in words."""
    try:
        head = await reader.readexactly(LENGTH.size)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise BadFrame(f"the stream ended inside a frame's length ({len(exc.partial)} of 4 bytes)") from None
    (length,) = LENGTH.unpack(head)
    if length > MAX_FRAME:
        raise BadFrame(f"a frame of {length} bytes (at most {MAX_FRAME} are accepted)")
    try:
        body = await reader.readexactly(length)
    except asyncio.IncompleteReadError as exc:
        raise BadFrame(f"the stream ended inside a frame ({len(exc.partial)} of {length} bytes)") from None
    try:
        msg = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadFrame(f"a frame that is not UTF-8 JSON ({exc})") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("msg_type"), str):
        raise BadFrame("a frame without a msg_type")
    return msg


def job_io_bytes(msg: dict[str, Any]) -> bytes:
    payload = msg.get("payload")
    if not isinstance(payload, str):
        raise BadFrame("a job_io frame whose payload is not a base85 string")
    try:
        return base64.b85decode(payload.encode("ascii"))
    except (ValueError, UnicodeEncodeError) as exc:
        raise BadFrame(f"a job_io frame with bad base85 ({exc})") from None


class CallbackRelay:
    """Relays one job's stream to the client's callback port, and the client's keystrokes to the DUT.

    Created by :meth:`JobService.submit` before the job's first control message, so the client gets
    every line from "Job queued" on. ``task`` runs until the client has closed after ``session_end``.
    """

    def __init__(self, service: "JobService", job: "RunningJob", callback: Callback) -> None:
        self.service = service
        self.job = job
        self.callback = callback
        self.queue = service.listen(job)
        self.task: Optional[asyncio.Task[None]] = None
        self.ended = False  # session_end sent: the client may close now

    @property
    def where(self) -> str:
        host = self.callback.host
        return f"[{host}]:{self.callback.port}" if ":" in host else f"{host}:{self.callback.port}"

    def start(self) -> None:
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        try:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(self.callback.host, self.callback.port), CONNECT_TIMEOUT
                )
            except (OSError, asyncio.TimeoutError) as exc:
                why = f"cannot connect to the client's callback {self.where}: {_reason(exc)}"
                await self.service.end_for_client(self.job, why, setup_fail=True)
                return
            try:
                await self._relay(reader, writer)
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - one client's trouble must not touch the others
            log.exception("job %s: the callback relay to %s failed", self.job.id, self.where)
        finally:
            self.service.unlisten(self.job, self.queue)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        log.info("job %s: connected to the client's callback %s (protocol v%d)", self.job.id, self.where,
                 self.callback.version)
        inbound = asyncio.ensure_future(self._inbound(reader))
        try:
            # Nothing to replay: the queue was listening before the job's first message.
            while True:
                getter = asyncio.ensure_future(self.queue.get())
                wait = QUEUED_REMINDER if self.job.row.status == "QUEUED" else None
                done, _ = await asyncio.wait({getter, inbound}, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    await asyncio.gather(getter, return_exceptions=True)
                if inbound in done:
                    if getter in done and not getter.cancelled():  # keep what was already taken
                        self.queue.put_nowait(getter.result())
                    await self._client_gone(inbound)
                    return
                if getter not in done:  # the reminder of a queued job's position
                    item: tuple[str, Any] = ("queue", {"position": self.service.position(self.job)})
                elif isinstance(getter.exception(), ListenerOverflow):
                    await self.service.end_for_client(
                        self.job, f"the client does not keep up with its job's console ({getter.exception()})")
                    return
                else:
                    item = getter.result()
                if not await self._send(writer, *item):
                    return
                if item[0] == "session_end":
                    break
            self.ended = True
            with contextlib.suppress(OSError):
                if writer.can_write_eof():
                    writer.write_eof()  # the half-close: the client reads to the end, then closes
            try:
                await asyncio.wait_for(asyncio.shield(inbound), self.job.teardown)
            except asyncio.TimeoutError:
                log.warning("job %s: the client did not close within infra_teardown (%g s)", self.job.id,
                            self.job.teardown)
        finally:
            inbound.cancel()
            await asyncio.gather(inbound, return_exceptions=True)

    async def _client_gone(self, inbound: "asyncio.Future[Optional[str]]") -> None:
        if inbound.cancelled():
            return
        exc = inbound.exception()
        why = f"the connection failed ({_reason(exc)})" if exc is not None else inbound.result()
        if why and why.startswith("it sent"):
            why = f"the client broke valve-infra's protocol: {why}"
        else:
            why = f"the client went away: {why or 'it closed the connection'}"
        if not self.job.done.is_set():
            await self.service.end_for_client(self.job, why)

    async def _inbound(self, reader: asyncio.StreamReader) -> Optional[str]:
        """Read the client until it closes: None at a clean close, else why its stream was refused."""
        while True:
            if self.callback.version == 0:
                data = await reader.read(65536)
                if not data:
                    return None
                self.service.client_input(self.job, data)
                continue
            try:
                msg = await read_frame(reader)
                if msg is None:
                    return None
                if msg["msg_type"] == "job_io":
                    data = job_io_bytes(msg)
                    if data:
                        self.service.client_input(self.job, data)
                # other message types are ignored, as valve-infra did
            except BadFrame as exc:
                return f"it sent {exc}"

    async def _send(self, writer: asyncio.StreamWriter, kind: str, data: dict[str, Any]) -> bool:
        """Write one message; False (and the job ended for the client) when the client cannot take it."""
        chunk = self._encode(kind, data)
        if not chunk:
            return True
        try:
            writer.write(chunk)
            await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)
        except (OSError, asyncio.TimeoutError) as exc:
            if not self.job.done.is_set():
                why = f"the client went away: cannot write to it ({_reason(exc)})"
                await self.service.end_for_client(self.job, why)
            return False
        return True

    def _encode(self, kind: str, data: dict[str, Any]) -> bytes:
        v0 = self.callback.version == 0
        if kind == "ctrl":
            msg = str(data.get("msg", ""))
            if v0:
                return (msg if msg.endswith("\n") else msg + "\n").encode("utf-8", "replace")
            return ctrl_frame(msg, int(data.get("severity", 1)))
        if kind == "job_io":
            if v0:
                return base64.b85decode(data["data"])
            return frame("job_io", data["data"])
        if kind == "queue":
            position = int(data.get("position", 0))
            text = (
                f"The job waits in the queue of {self.job.row.machine}: {position} job(s) ahead"
                if position
                else f"The job is next on {self.job.row.machine}"
            )
            line = f"+{self.service.elapsed(self.job):.3f}s: {text}"
            return line.encode() + b"\n" if v0 else ctrl_frame(line)
        if kind == "session_end":
            status = str(data.get("status", "UNKNOWN"))
            if v0:
                return f"\n<-- End of the session: {status} -->\n".encode()
            return frame("session_end", {"status": status})
        return b""


def _reason(exc: BaseException | None) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__
    return str(exc) or type(exc).__name__
