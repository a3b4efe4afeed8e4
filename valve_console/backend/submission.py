"""Job submissions (``POST /api/v1/jobs``) in their three forms, and the answers each form expects.

- **v1** (valve-infra's job client ``executorctl``, 2022): ``multipart/form-data`` with the parts
  ``metadata`` (JSON, ``version: 1``: ``job_id``, ``callback {port, host?}``, ``target {id, tags}``,
  ``minio``), ``job`` (the YAML template) and optionally ``job_bucket_initial_state_tarball_file``
  (a tar or tar.gz of the client's share directory). Parsed with python-multipart, as FastAPI's forms are.
- **v0** (valve-infra's deprecated JSON form): ``{"metadata": {"callback_host", "callback_port"}, "job"}``.
- **ours** (``valve-console job run``, curl): ``{"job", "target"?, "job_id"?}``; it follows the job over
  ``GET /api/v1/job/{id}/events`` and needs no callback.

Bodies are read only once the caller is known to be the operator (the API checks that first). A v1
form is streamed to a file in the data directory (``<data>/jobs/.incoming-*``, never whole in memory)
and parsed there in a worker thread; its share part stays a file, which the job's share is unpacked
from. JSON forms are small: they are read in memory, up to :data:`MAX_JSON_BODY`. Reading the request
(the body, its content type, the answer as an HTTP response) is the API's (api/submit.py); here are
the forms, their parsing and the answers' shapes, in errors.py's types.

valve-infra's clients build their answer object from every key of the JSON, so v1 answers are exactly
``{"version": 1, "error_msg": ...}`` and v0 answers ``{"reason": ...}``. Our clients send the header
``X-Valve-Console-Client`` and then get the richer answer (``id``, ``status``, ``position``,
``machine``); errors in our form are ``{"error": ...}``. Every success also carries ``Location:
/api/v1/job/<id>``.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Optional

from .errors import BadRequest, FarmError

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks  # a TypedDict defined for type checkers only

Protocol = Literal["v0", "v1", "ours"]
CLIENT_HEADER = "x-valve-console-client"  # our clients ask for the rich answer with it (api/submit.py)
SHARE_PART = "job_bucket_initial_state_tarball_file"  # valve-infra's name of the share's tar(.gz) part
MAX_FORM_PARTS = 16  # metadata, job, the share, and a few attachments newer clients may send
MAX_TEXT_PART = 1024 * 1024  # metadata and job parts (the job template is limited to 1 MiB too)
MAX_JSON_BODY = 8 * MAX_TEXT_PART  # a JSON submission: a 1 MiB job, escaped
FORM_OVERHEAD = 4 * MAX_TEXT_PART  # a v1 form's parts besides the share (metadata, job, part headers)
MAX_PART_HEADERS = 16 * 1024  # bytes of one part's headers
READ_CHUNK = 256 * 1024  # bytes of a spooled form parsed at a time


@dataclass
class Callback:
    """Where the gateway connects to speak to the client (valve-infra §4.5): v1 framing, or v0 raw bytes."""

    host: str
    port: int
    version: int = 1


@dataclass
class Submission:
    text: str
    target: Optional[dict[str, Any]]
    job_id: Optional[str]
    share: Optional[Path]  # the share's tar(.gz), a file in ``spool``
    protocol: Protocol
    callback: Optional[Callback] = None
    spool: Optional[Path] = None  # the directory of the body's files: remove it with discard()

    async def discard(self) -> None:
        """Remove the files of the submission (once its share is unpacked, or it was refused)."""
        if self.spool is not None:
            await asyncio.to_thread(shutil.rmtree, self.spool, True)
            self.spool = None


@dataclass
class FormPart:
    """One part of a multipart form: its name, file name and type (from its headers) and content (text
    parts in ``data``; the share part written to ``path``)."""

    name: str = ""
    filename: Optional[str] = None
    content_type: Optional[str] = None
    data: bytearray = field(default_factory=bytearray)
    path: Optional[Path] = None
    size: int = 0


def answer_body(protocol: Protocol, rich: bool, error: Optional[str],
                job: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The answer's JSON in the form the client reads: see the module's docstring."""
    body: dict[str, Any]
    if protocol == "ours" or (rich and error is not None):
        body = {"error": error} if error is not None else dict(job or {})
    elif protocol == "v0":
        body = {"reason": error}
    else:
        body = {"version": 1, "error_msg": error}
    if rich and error is None and protocol != "ours":
        body.update(job or {})
    return body


def _check_mimetype(part: FormPart, name: str, expected: str) -> None:
    """valve-infra refuses a file part whose declared type is wrong (a part without a type passes)."""
    if part.filename is not None and part.content_type and part.content_type.split(";")[0].strip() != expected:
        raise BadRequest(f"the {name} part has the type {part.content_type!r} instead of {expected}")


def _callback(meta: dict[str, Any], peer: Optional[str], version: int) -> Optional[Callback]:
    if version == 1:
        spec = meta.get("callback")
        if spec is None:
            return None
        if not isinstance(spec, dict):
            raise BadRequest("metadata.callback must be an object {port, host?}")
        port, host = spec.get("port"), spec.get("host")
    else:
        port, host = meta.get("callback_port"), meta.get("callback_host")
        if port is None:
            return None
    if isinstance(port, str) and port.isdigit():
        port = int(port)
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise BadRequest(f"the callback port {str(port)[:20]!r} is not a TCP port (1-65535)")
    if host is None:
        host = peer
    if not isinstance(host, str) or not host or len(host) > 255 or any(c.isspace() for c in host):
        raise BadRequest("the callback host is missing (and the request has no peer address to default to)"
                         if host is None else f"the callback host {str(host)[:40]!r} is not a host name or address")
    return Callback(host=host, port=port, version=version)


def _target(value: Any) -> Optional[dict[str, Any]]:
    """The metadata's target override: ``null`` fields mean absent (executorctl sends ``"tags": null``)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadRequest("target must be an object {id?, tags?}")
    return {k: v for k, v in value.items() if v is not None} or None


def json_submission(body: bytes, peer: Optional[str]) -> Submission:
    """A JSON submission (v0 or ours) from its body; ``BadRequest`` in words. ``peer``: the client's
    address, a v0 callback's host when it names none."""
    try:
        data = json.loads(body or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest('the body must be a JSON object {"job": "<yaml>", "target"?, "job_id"?}')
    if "metadata" in data:
        meta = data.get("metadata")
        if not isinstance(meta, dict):
            raise BadRequest("metadata must be a JSON object")
        if set(data) - {"metadata", "job"}:
            raise BadRequest(f"unknown fields: {', '.join(sorted(set(data) - {'metadata', 'job'}))}")
        text = data.get("job")
        if not isinstance(text, str):
            raise BadRequest("missing field job (the job's YAML text)")
        sub = Submission(text, None, None, None, "v0", _callback(meta, peer, 0))
        return sub
    unknown = set(data) - {"job", "target", "job_id"}
    if unknown:
        raise BadRequest(f"unknown fields: {', '.join(sorted(unknown))}")
    text, target, job_id = data.get("job"), data.get("target"), data.get("job_id")
    if not isinstance(text, str):
        raise BadRequest("missing field job (the job's YAML text)")
    if job_id is not None and not isinstance(job_id, str):
        raise BadRequest("job_id must be a string")
    return Submission(text, _target(target), job_id, None, "ours")


def too_large(what: str, limit: int) -> FarmError:
    return FarmError(f"{what} is larger than {limit} bytes", 413)


# ------------------------------------------------------------------------------------------ v1 forms


def make_private_dir(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.mkdir(mode=0o700)


def v1_submission(parts: dict[str, FormPart], peer: Optional[str]) -> Submission:
    if "metadata" not in parts or "job" not in parts:
        raise BadRequest("the form needs a 'metadata' part (JSON, version 1) and a 'job' part (YAML)")
    _check_mimetype(parts["metadata"], "metadata", "application/json")
    _check_mimetype(parts["job"], "job", "application/x-yaml")
    try:
        meta = json.loads(bytes(parts["metadata"].data))
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the metadata part is not JSON: {exc}") from None
    if not isinstance(meta, dict) or meta.get("version") != 1:
        version = meta.get("version") if isinstance(meta, dict) else None
        raise BadRequest(f"the metadata must be a JSON object with version 1 (got version {version!r})")
    try:
        text = bytes(parts["job"].data).decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("the job part is not UTF-8 text") from None
    share = None
    if SHARE_PART in parts:
        _check_mimetype(parts[SHARE_PART], SHARE_PART, "application/octet-stream")
        share = parts[SHARE_PART].path
    job_id = meta.get("job_id")
    if job_id is not None and not isinstance(job_id, (str, int)):
        raise BadRequest("metadata.job_id must be a string")
    return Submission(
        text,
        _target(meta.get("target")),
        None if job_id is None else str(job_id),
        share,
        "v1",
        _callback(meta, peer, 1),
    )


class _FormReader:
    """python-multipart callbacks that keep the text parts (each up to MAX_TEXT_PART) and write the
    share part to a file (up to the share limit); other parts are counted and their content dropped."""

    def __init__(self, directory: Path, share_limit: int) -> None:
        self.directory = directory
        self.share_limit = share_limit
        self.parts: dict[str, FormPart] = {}
        self.count = 0
        self.part = FormPart()
        self.header_bytes = 0
        self.header = [b"", b""]
        self.headers: list[tuple[bytes, bytes]] = []
        self.file: Any = None

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": lambda data, start, end: self._header(0, data[start:end]),
            "on_header_value": lambda data, start, end: self._header(1, data[start:end]),
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
        }

    def on_part_begin(self) -> None:
        self.count += 1
        if self.count > 2 * MAX_FORM_PARTS:
            raise BadRequest(f"the form has more than {2 * MAX_FORM_PARTS} parts")
        self.part, self.headers, self.header_bytes, self.header = FormPart(), [], 0, [b"", b""]

    def _header(self, index: int, data: bytes) -> None:
        self.header_bytes += len(data)
        if self.header_bytes > MAX_PART_HEADERS:
            raise BadRequest(f"a part of the form has more than {MAX_PART_HEADERS} bytes of headers")
        self.header[index] += data

    def on_header_end(self) -> None:
        self.headers.append((self.header[0].strip().lower(), self.header[1].strip()))
        self.header = [b"", b""]

    def on_headers_finished(self) -> None:
        from python_multipart.multipart import parse_options_header

        part = self.part
        for name, value in self.headers:
            if name == b"content-disposition":
                _, options = parse_options_header(value)
                if b"name" not in options:
                    raise BadRequest('a part of the form has no name (Content-Disposition: form-data; name="...")')
                part.name = options[b"name"].decode("utf-8", "replace")
                if b"filename" in options:
                    part.filename = options[b"filename"].decode("utf-8", "replace")
            elif name == b"content-type":
                part.content_type = value.decode("latin-1")
        if part.name == SHARE_PART:
            part.path = self.directory / "share.tar"
            self.file = open(part.path, "wb")  # noqa: SIM115 - closed in on_part_end or close()

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self.part
        part.size += end - start
        if self.file is not None:
            if part.size > self.share_limit:
                raise too_large(f"the {SHARE_PART} part", self.share_limit)
            self.file.write(data[start:end])
        elif part.name in ("metadata", "job"):
            if part.size > MAX_TEXT_PART:
                raise too_large(f"the {part.name} part", MAX_TEXT_PART)
            part.data += data[start:end]

    def on_part_end(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        self.parts[self.part.name] = self.part  # a repeated name: the last part counts

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def parse_form(body: Path, content_type: str, directory: Path, share_limit: int) -> dict[str, FormPart]:
    """Parse a spooled ``multipart/form-data`` body (blocking: run it in a worker thread)."""
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise BadRequest("cannot parse the multipart form: its Content-Type has no boundary")
    reader = _FormReader(directory, share_limit)
    try:
        parser = MultipartParser(boundary, reader.callbacks())
        with open(body, "rb") as handle:
            while chunk := handle.read(READ_CHUNK):
                parser.write(chunk)
        parser.finalize()
    except FormParserError as exc:
        raise BadRequest(f"cannot parse the multipart form: {exc}") from None
    finally:
        reader.close()
    return reader.parts
