"""A serial port as a console link, read with pyserial-asyncio-fast on the event loop.

The port is opened (in a worker thread, as pyserial-asyncio-fast does) at the device's baud
rate with TIOCEXCL, so a stray minicom cannot steal bytes. Reads are up to 64 KiB at a time:
the library's default of 1 KiB costs one callback per KiB under load. A hang-up (EIO, or
"device reports readiness to read but returned no data") ends the link; the hub reopens it.
"""

from __future__ import annotations

import asyncio
import os
from typing import Callable

import serial
import serial_asyncio_fast

READ_SIZE = 65536


class _SerialProtocol(asyncio.Protocol):
    def __init__(self, link: "SerialLink") -> None:
        self.link = link

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The library reads 1 KiB per callback through pyserial (a select() and a Timeout per read);
        # a console wants one os.read of whatever is there. The library's reader callback is looked
        # up when it registers the fd, just after this, so replacing it here takes effect. Should a
        # later release rename its internals, the library's own reader stays in place.
        if hasattr(transport, "_max_read_size"):
            transport._max_read_size = READ_SIZE
        ser = getattr(transport, "serial", None)
        close = getattr(transport, "_close", None)
        if ser is not None and callable(close) and hasattr(transport, "_read_ready"):
            fd = ser.fileno()
            deliver = self.data_received

            def read_ready() -> None:
                try:
                    data = os.read(fd, READ_SIZE)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as exc:  # EIO: the other end hung up
                    close(serial.SerialException(f"read failed: {exc}"))
                    return
                if not data:
                    close(serial.SerialException("device reports readiness to read but returned no data"))
                    return
                deliver(data)

            transport._read_ready = read_ready

    def data_received(self, data: bytes) -> None:
        self.link.on_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.link.closed.done():
            self.link.closed.set_result(exc)


class SerialLink:
    """An open serial port. ``closed`` resolves (to None or the error) when it ends."""

    def __init__(self, devnode: str, baud: int, on_data: Callable[[bytes], None]) -> None:
        self.name = devnode
        self.devnode = devnode
        self.baud = baud
        self.on_data = on_data
        self.closed: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    @property
    def serial(self) -> serial.Serial | None:
        return getattr(self.transport, "serial", None)

    def write(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise ConnectionError(f"{self.devnode} is closed")
        self.transport.write(data)

    def buffered(self) -> int:
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()
        elif self.transport is None and not self.closed.done():
            self.closed.set_result(None)


async def open_serial(devnode: str, baud: int, on_data: Callable[[bytes], None], exclusive: bool = True) -> SerialLink:
    """Open ``devnode`` at ``baud`` (8N1, no flow control); raises OSError/SerialException if it cannot."""
    link = SerialLink(devnode, baud, on_data)
    transport, _ = await serial_asyncio_fast.create_serial_connection(
        asyncio.get_running_loop(),
        lambda: _SerialProtocol(link),
        devnode,
        baudrate=baud,
        exclusive=exclusive,
    )
    link.transport = transport
    return link
