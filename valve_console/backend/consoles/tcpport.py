"""Each machine's console shared on its TCP port (console_tcp_base + its stored index): the listening socket,
retried while the port is taken, and the viewers' input (one writer, takeover with Ctrl-] t).

A part of ConsoleHub (hub.py): its methods, on the hub's state."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from typing import TYPE_CHECKING

from ..errors import Conflict
from .console import Console
from .limits import (
    SHARE_RETRY,
)
from .viewers import TcpViewer

if TYPE_CHECKING:
    from .host import HubHost
else:
    HubHost = object  # a part of ConsoleHub: its host's interface is for the type checker only

log = logging.getLogger(__package__)


class TcpPortMixin(HubHost):
    """Each machine's console shared on its TCP port (console_tcp_base + its stored index): the listening socket,"""

    # ---------------------------------------------------------------- the machine's TCP port
    def _open_share(self, console: Console, starting: bool = False) -> None:
        """Listen on the machine's fixed TCP port; retried later if that fails (a port in use). Out of file
        descriptors at start is a start failure (``OSError``, in words): the farm would not work."""
        console._share_retry = None
        if self.tcp_host is None or console.tcp_index is None or self._stopping or console.server is not None:
            return
        port = self.tcp_base + console.tcp_index if self.tcp_base else 0
        host = self.tcp_host
        console.tcp_host = host
        if port > 65535:
            console.tcp_error = f"port {port} (base {self.tcp_base} + index {console.tcp_index}) is above 65535"
            log.error("console %s: %s", console.mac, console.tcp_error)
            return
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = None
        try:
            sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(32)
            sock.setblocking(False)
        except OSError as exc:
            if sock is not None:
                sock.close()
            if starting and exc.errno in (errno.EMFILE, errno.ENFILE):
                raise OSError(
                    exc.errno,
                    f"out of file descriptors opening the console port of {console.mac} "
                    f"({len(self.consoles)} consoles, one listening socket each): raise the open-file limit "
                    "(LimitNOFILE=65536 in the unit, or ulimit -n)",
                ) from None
            console.tcp_port = None
            reason = exc.strerror or exc
            console.tcp_error = f"cannot listen on {host}:{port}: {reason}; retrying every {SHARE_RETRY:g} s"
            if console.tcp_error != console._logged_error:
                log.warning("console %s: %s", console.mac, console.tcp_error)
                console._logged_error = console.tcp_error
            console._share_retry = asyncio.get_running_loop().call_later(SHARE_RETRY, self._open_share, console)
            return
        console.tcp_port = sock.getsockname()[1]
        console.tcp_error = None
        self._spawn(self._serve_share(console, sock), f"console-share-{console.mac}")

    async def _serve_share(self, console: Console, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            console.server = await loop.create_server(lambda: TcpViewer(self, console), sock=sock)
        except Exception as exc:  # noqa: BLE001 - reported on the console
            sock.close()
            console.tcp_port = None
            console.tcp_error = f"cannot serve {self.tcp_host}: {exc}"
            log.error("console %s: %s", console.mac, console.tcp_error)
        self._changed(console)

    def _tcp_input(self, viewer: TcpViewer, data: bytes) -> None:
        """Bytes typed by a TCP client: Ctrl-] t takes write over; the rest goes to the DUT if it may write."""
        if viewer.escape:
            data = b"\x1d" + data
            viewer.escape = False
        while data:
            i = data.find(b"\x1d")
            if i < 0:
                self._tcp_type(viewer, data)
                return
            if i + 1 == len(data):
                self._tcp_type(viewer, data[:i])
                viewer.escape = True
                return
            if data[i + 1 : i + 2] == b"t":
                self._tcp_type(viewer, data[:i])
                self._tcp_takeover(viewer)
                data = data[i + 2 :]
            else:
                self._tcp_type(viewer, data[: i + 1])
                data = data[i + 1 :]

    def _tcp_takeover(self, viewer: TcpViewer) -> None:
        console = viewer.console
        current = console.current_writer()
        if current is not None and current.viewer is viewer:
            return
        console.claim(viewer.who, viewer, takeover=True)
        viewer.notice(f"\r\nvalve-console: you now hold write access to {console.mac}\r\n")
        self._changed(console)

    def _tcp_type(self, viewer: TcpViewer, data: bytes) -> None:
        if not data:
            return
        console = viewer.console
        before = console.current_writer()
        holder = console.claim(viewer.who, viewer, takeover=False)
        if holder is not None:
            viewer.notice(
                f"valve-console: {console.mac} already has a writer ({holder.who}); "
                "send Ctrl-] then t to take over\r\n",
                rate_limited=True,
            )
            return
        if before is None or before.viewer is not viewer:
            self._changed(console)
        if console.stream is None:
            viewer.notice(f"valve-console: {console.mac} has no console connected; input dropped\r\n", True)
            return
        try:
            self._send(console, data)
        except Conflict as exc:
            viewer.notice(f"valve-console: {exc}\r\n", True)
