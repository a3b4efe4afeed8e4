"""The netconsole server: a TCP connection per DUT console (capped overall and per source, keepalive), read into
a Stream.

A part of ConsoleHub (hub.py): its methods, on the hub's state."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import TYPE_CHECKING, Any

from .limits import (
    KEEPALIVE_COUNT,
    KEEPALIVE_IDLE,
    KEEPALIVE_INTERVAL,
)
from .streams import Stream

if TYPE_CHECKING:
    from .host import HubHost
else:
    HubHost = object  # a part of ConsoleHub: its host's interface is for the type checker only

log = logging.getLogger(__package__)


class NetconsoleMixin(HubHost):
    """The netconsole server: a TCP connection per DUT console (capped overall and per source, keepalive), read into"""

    # ---------------------------------------------------------------- the netconsole
    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("?", 0)
        host = str(peer[0])
        stream = Stream(
            f"netconsole@{peer[0]}:{peer[1]}",
            writer.write,
            buffered=writer.transport.get_write_buffer_size,
            host=host,
            close=writer.transport.abort,
        )
        refusal = self._connection_refusal(stream)
        if refusal is not None:
            self.refused_connections += 1
            self._warn(("connections", stream.host if not self._is_local(stream) else "local"),
                       f"netconsole connection from {host} refused: {refusal}")
            with contextlib.suppress(Exception):
                writer.write(f"valve-console: {refusal}\n".encode())
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._conn_tasks.add(task)
        self._per_source[host] = self._per_source.get(host, 0) + 1
        _keepalive(writer.get_extra_info("socket"))
        self.streams.add(stream)
        log.info("%s connected", stream.name)
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                self.feed(stream, data)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.close_stream(stream)
            writer.close()
            left = self._per_source.get(host, 1) - 1
            if left > 0:
                self._per_source[host] = left
            else:
                self._per_source.pop(host, None)
            log.info("%s disconnected", stream.name)
            self._conn_tasks.discard(task)

    def _connection_refusal(self, stream: Stream) -> str | None:
        if len(self._conn_tasks) >= self.policy.max_connections:
            return f"too many console connections ({len(self._conn_tasks)}, netconsole_max_connections)"
        count = self._per_source.get(stream.host or "", 0)
        if count >= self.policy.max_per_source and not self._is_local(stream):
            return f"too many console connections from {stream.host} ({count}, netconsole_max_per_source)"
        return None


def _keepalive(sock: Any) -> None:
    """TCP keepalive on a netconsole connection: a DUT that lost power frees its binding in ~90 s."""
    if sock is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_COUNT)
