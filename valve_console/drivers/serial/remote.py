"""Remote consoles: a ser2net (or any console server) port, raw TCP or Telnet with RFC 2217.

``tcp://host:port`` is a plain byte stream. ``rfc2217://host:port[?baud=N]`` speaks Telnet:
binary mode both ways, suppress-go-ahead, and the COM-PORT-OPTION (RFC 2217) to set the remote
port to N baud, 8 data bits, no parity, 1 stop bit. Telnet commands are removed from the byte
stream and a 0xFF data byte is sent and received doubled, so the console sees exactly the
device's bytes. (pyserial's ``rfc2217://`` handler runs its own reader thread and has no file
descriptor to wait on, so it cannot sit on the event loop; this small client does.)
"""

from __future__ import annotations

import asyncio
import logging
import socket
import urllib.parse
from dataclasses import dataclass
from typing import Callable

from .base import DEFAULT_BAUD, MAX_BAUD

log = logging.getLogger(__name__)

SCHEMES = ("tcp", "rfc2217")

# Telnet (RFC 854/855) and COM-PORT-OPTION (RFC 2217) codes.
IAC, DONT, DO, WONT, WILL, SB, SE = 255, 254, 253, 252, 251, 250, 240
BINARY, ECHO, SGA, COM_PORT = 0, 1, 3, 44
SET_BAUDRATE, SET_DATASIZE, SET_PARITY, SET_STOPSIZE = 1, 2, 3, 4
PARITY_NONE, STOPSIZE_1 = 1, 1
WE_DO = {BINARY, SGA, COM_PORT}  # options this client agrees to perform
THEY_DO = {BINARY, SGA, ECHO}  # options this client lets the server perform
SB_MAX = 1024


@dataclass(frozen=True)
class RemoteSpec:
    scheme: str
    host: str
    port: int
    baud: int = DEFAULT_BAUD

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        query = f"?baud={self.baud}" if self.scheme == "rfc2217" and self.baud != DEFAULT_BAUD else ""
        return f"{self.scheme}://{host}:{self.port}{query}"


def parse_console_url(url: str) -> RemoteSpec:
    """``tcp://HOST:PORT`` or ``rfc2217://HOST:PORT[?baud=N]`` → RemoteSpec; ValueError in words."""
    text = str(url).strip()
    if len(text) > 300 or any(ord(c) < 33 or ord(c) == 127 for c in text):
        raise ValueError("a console URL is at most 300 printable characters without spaces")
    scheme = text.partition("://")[0].lower() if "://" in text else ""
    if scheme not in SCHEMES:
        raise ValueError(f"{text!r} is not a console URL: use tcp://HOST:PORT or rfc2217://HOST:PORT")
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{text!r}: {exc}") from None
    host = parts.hostname
    if not host:
        raise ValueError(f"{text!r}: the host is missing (tcp://HOST:PORT)")
    if port is None or port == 0:
        raise ValueError(f"{text!r}: the port is missing or 0 (tcp://HOST:PORT)")
    if parts.username or parts.password:
        raise ValueError(f"{text!r}: a console URL carries no user or password")
    if parts.path not in ("", "/") or parts.fragment:
        raise ValueError(f"{text!r}: a console URL has no path; use tcp://HOST:PORT")
    baud = DEFAULT_BAUD
    for key, values in urllib.parse.parse_qs(parts.query, keep_blank_values=True).items():
        if key != "baud" or scheme != "rfc2217":
            raise ValueError(f"{text!r}: unknown option {key!r} (rfc2217 URLs accept ?baud=N)")
        try:
            baud = int(values[-1])
        except ValueError:
            raise ValueError(f"{text!r}: the baud rate {values[-1]!r} is not a number") from None
        if not 50 <= baud <= MAX_BAUD:
            raise ValueError(f"{text!r}: the baud rate must be between 50 and {MAX_BAUD}")
    return RemoteSpec(scheme, host, port, baud)


class TelnetCodec:
    """Client side of Telnet + RFC 2217, reduced to what a console needs.

    ``feed(bytes) -> data`` strips commands and returns the payload; replies to the server's
    negotiation are handed to ``send``. Option state is tracked so no reply is ever repeated
    (no negotiation loops, RFC 1143's concern).
    """

    def __init__(self, send: Callable[[bytes], None], baud: int) -> None:
        self.send = send
        self.baud = baud
        self.ours: set[int] = set()  # options we perform
        self.theirs: set[int] = set()  # options the server performs
        self.port_configured = False
        self._state = "data"
        self._option_cmd = 0
        self._sb = bytearray()
        self.replies: list[bytes] = []  # subnegotiation answers seen (for diagnostics)

    def start(self) -> None:
        """Ask for binary both ways, no go-aheads, and offer the COM port option."""
        out = bytearray()
        for opt in (BINARY, SGA, COM_PORT):
            self.ours.add(opt)
            out += bytes((IAC, WILL, opt))
        for opt in (BINARY, SGA):
            self.theirs.add(opt)
            out += bytes((IAC, DO, opt))
        self.send(bytes(out))

    def _configure_port(self) -> None:
        if self.port_configured:
            return
        self.port_configured = True
        out = bytearray()
        for cmd, value in (
            (SET_BAUDRATE, self.baud.to_bytes(4, "big")),
            (SET_DATASIZE, b"\x08"),
            (SET_PARITY, bytes((PARITY_NONE,))),
            (SET_STOPSIZE, bytes((STOPSIZE_1,))),
        ):
            out += bytes((IAC, SB, COM_PORT, cmd)) + escape(value) + bytes((IAC, SE))
        self.send(bytes(out))

    @staticmethod
    def encode(data: bytes) -> bytes:
        return escape(data)

    def _negotiate(self, cmd: int, opt: int) -> None:
        if cmd == DO:
            if opt in WE_DO:
                if opt not in self.ours:
                    self.ours.add(opt)
                    self.send(bytes((IAC, WILL, opt)))
                if opt == COM_PORT:
                    self._configure_port()
            else:
                self.send(bytes((IAC, WONT, opt)))
        elif cmd == DONT:
            if opt in self.ours:
                self.ours.discard(opt)
                self.send(bytes((IAC, WONT, opt)))
        elif cmd == WILL:
            if opt in THEY_DO:
                if opt not in self.theirs:
                    self.theirs.add(opt)
                    self.send(bytes((IAC, DO, opt)))
            else:
                self.send(bytes((IAC, DONT, opt)))
        elif cmd == WONT:
            if opt in self.theirs:
                self.theirs.discard(opt)
                self.send(bytes((IAC, DONT, opt)))

    def feed(self, data: bytes) -> bytes:
        if self._state == "data" and IAC not in data:
            return data  # the common case: no commands in this chunk
        out = bytearray()
        i, n = 0, len(data)
        while i < n:
            state = self._state
            if state == "data":
                j = data.find(IAC, i)
                if j < 0:
                    out += data[i:]
                    break
                out += data[i:j]
                self._state = "iac"
                i = j + 1
                continue
            byte = data[i]
            i += 1
            if state == "iac":
                if byte == IAC:
                    out.append(IAC)
                    self._state = "data"
                elif byte in (DO, DONT, WILL, WONT):
                    self._option_cmd = byte
                    self._state = "option"
                elif byte == SB:
                    self._sb.clear()
                    self._state = "sb"
                else:
                    self._state = "data"  # NOP, GA, AYT...: nothing for a console
            elif state == "option":
                self._negotiate(self._option_cmd, byte)
                self._state = "data"
            elif state == "sb":
                if byte == IAC:
                    self._state = "sb_iac"
                elif len(self._sb) < SB_MAX:
                    self._sb.append(byte)
            elif state == "sb_iac":
                if byte == SE:
                    self._subnegotiation(bytes(self._sb))
                    self._state = "data"
                else:
                    if len(self._sb) < SB_MAX:
                        self._sb.append(byte)  # IAC IAC inside a subnegotiation
                    self._state = "sb"
        return bytes(out)

    def _subnegotiation(self, payload: bytes) -> None:
        if payload[:1] == bytes((COM_PORT,)) and len(self.replies) < 32:
            self.replies.append(payload)
            log.debug("RFC 2217 reply %r", payload)


def escape(data: bytes) -> bytes:
    return data.replace(b"\xff", b"\xff\xff") if IAC in data else data


class _RemoteProtocol(asyncio.Protocol):
    def __init__(self, link: "RemoteLink") -> None:
        self.link = link

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.link._made(transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        self.link._received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.link.closed.done():
            self.link.closed.set_result(exc)


class RemoteLink:
    """A TCP connection to a console server; ``closed`` resolves when it ends."""

    def __init__(self, spec: RemoteSpec, on_data: Callable[[bytes], None]) -> None:
        self.spec = spec
        self.name = spec.url
        self.on_data = on_data
        self.closed: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.telnet = TelnetCodec(self._send_raw, spec.baud) if spec.scheme == "rfc2217" else None

    def _made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            except OSError:
                pass
        if self.telnet is not None:
            self.telnet.start()

    def _send_raw(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _received(self, data: bytes) -> None:
        if self.telnet is not None:
            data = self.telnet.feed(data)
        if data:
            self.on_data(data)

    def write(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise ConnectionError(f"{self.name} is closed")
        self.transport.write(escape(data) if self.telnet is not None else data)

    def buffered(self) -> int:
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        elif not self.closed.done():
            self.closed.set_result(None)


async def open_remote(spec: RemoteSpec, on_data: Callable[[bytes], None], timeout: float = 5.0) -> RemoteLink:
    """Connect to a console server; raises OSError (or TimeoutError) when it cannot."""
    link = RemoteLink(spec, on_data)
    loop = asyncio.get_running_loop()
    await asyncio.wait_for(loop.create_connection(lambda: _RemoteProtocol(link), spec.host, spec.port), timeout)
    return link
