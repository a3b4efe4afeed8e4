"""The UDP transport of the BER codec: ``Endpoint`` (one socket to one agent, requests matched by request-id,
retries) and ``SnmpTimeout``."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from .ber import RESPONSE, BerError, Message, decode_message, encode_message


class SnmpTimeout(Exception):
    """No answer after every try."""


class _Protocol(asyncio.DatagramProtocol):
    endpoint: "Endpoint | None" = None

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.endpoint is not None:
            self.endpoint._received(data)

    def error_received(self, exc: Exception) -> None:
        pass  # e.g. ICMP port unreachable: like pysnmp, wait for the timeout

    def connection_lost(self, exc: Exception | None) -> None:
        if self.endpoint is not None:
            self.endpoint._lost()


class Endpoint:
    """One UDP socket to one agent, shared by concurrent requests (matched by request-id)."""

    def __init__(self, transport: asyncio.DatagramTransport) -> None:
        self.transport = transport
        self.pending: dict[int, tuple[int, bytes, asyncio.Future[Message]]] = {}
        self.next_id = random.randrange(1, 2**30)
        self.stray = 0  # datagrams ignored: malformed, or no request waits for them

    @classmethod
    async def open(cls, host: str, port: int) -> "Endpoint":
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(_Protocol, remote_addr=(host, port))
        endpoint = protocol.endpoint = cls(transport)
        return endpoint

    @property
    def closed(self) -> bool:
        return self.transport.is_closing()

    def _received(self, data: bytes) -> None:
        try:
            message = decode_message(data)
        except BerError:
            self.stray += 1
            return
        waiting = self.pending.get(message.request_id)
        if (waiting is None or message.pdu != RESPONSE or (message.version, message.community) != waiting[:2]
                or waiting[2].done()):
            self.stray += 1
            return
        waiting[2].set_result(message)

    def _lost(self) -> None:
        for *_, future in self.pending.values():
            if not future.done():
                future.set_exception(ConnectionError("the SNMP socket was closed"))

    async def request(self, version: int, community: bytes, pdu: int,
                      varbinds: list[Any], timeout: float, retries: int) -> Message:
        """Send one request and wait for its answer, resending it ``retries`` times after ``timeout``.

        Every try sends the same bytes (the same request-id), so a late answer to an earlier try is
        taken too. The resends run from a timer on the loop rather than a ``wait_for`` per try: the
        caller awaits one future, which costs a fraction of ``wait_for(shield(...))``."""
        request_id = self.next_id
        self.next_id = self.next_id + 1 if self.next_id < 2**31 - 1 else 1
        data = encode_message(version, community, pdu, request_id, varbinds)
        if self.transport.is_closing():
            raise ConnectionError("the SNMP socket was closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Message] = loop.create_future()
        resends = retries
        timer: asyncio.TimerHandle | None = None

        def expired() -> None:
            nonlocal timer, resends
            if future.done():
                return
            if resends <= 0:
                future.set_exception(SnmpTimeout())
                return
            if self.transport.is_closing():
                future.set_exception(ConnectionError("the SNMP socket was closed"))
                return
            resends -= 1
            try:
                self.transport.sendto(data)
            except Exception as exc:  # noqa: BLE001 - handed to the caller, as a send in request() would be
                future.set_exception(exc)
                return
            timer = loop.call_later(timeout, expired)

        self.pending[request_id] = (version, community, future)
        try:
            self.transport.sendto(data)
            timer = loop.call_later(timeout, expired)
            return await future
        finally:
            if timer is not None:
                timer.cancel()
            self.pending.pop(request_id, None)
            if not future.done():
                future.cancel()

    def close(self) -> None:
        try:
            self.transport.close()
        except RuntimeError:  # its event loop is closed already, and the socket with it
            pass
