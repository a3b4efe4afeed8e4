"""Driver for Vivian's virtual PDU (the seed's vPDU TCP protocol, ``vivian/vpdu.py``).

One command per TCP connection: a 32-bit big-endian word ``(port << 2) | cmd`` goes out and one
byte comes back. Commands: 0 port count, 1 ON, 2 OFF, 3 status (0x03 ON, 0x04 OFF, 0x05 unknown);
ON/OFF answer 0x01 on success and 0x00 means the vPDU refused the command.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import struct
from typing import Any, ClassVar

from pydantic import Field, field_validator

from .base import BatchFallback, DriverConfig, DriverError, Outlet, PortState, parse_config

CMD_COUNT, CMD_ON, CMD_OFF, CMD_STATUS = 0, 1, 2, 3
MAX_PORT = 2047  # the port field is 11 bits wide
REPLY_OK = 0x01
STATUS_REPLIES = {0x03: PortState.ON, 0x04: PortState.OFF, 0x05: PortState.UNKNOWN}
REBOOT_PAUSE = 1.0


def split_hostname(value: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[v6]:PORT`` allowed); raise ValueError with a readable message."""
    host, sep, port = value.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"must be HOST:PORT with a port between 1 and 65535, not {value!r}")
    return host, int(port)


class VpduConfig(DriverConfig):
    hostname: str = Field(default="localhost:9191", description="the vPDU's address, HOST:PORT")
    timeout: float = Field(default=3.0, gt=0, le=60, description="seconds to wait for each answer")

    @field_validator("hostname")
    @classmethod
    def _check_hostname(cls, value: str) -> str:
        split_hostname(value)
        return value.strip()


def _reason(exc: OSError) -> str:
    """A short operator-readable reason for a failed connection."""
    if isinstance(exc, ConnectionRefusedError) or "[Errno 111]" in str(exc):
        return "Connection refused"
    if exc.errno is not None and exc.strerror:
        return exc.strerror
    if exc.errno is not None:
        return errno.errorcode.get(exc.errno, str(exc))
    return str(exc) or type(exc).__name__


class VirtualPDU(BatchFallback):
    """A vPDU reached over TCP; its outlets are "0".."N-1". One outlet per command, so batches go
    outlet by outlet (``BatchFallback``)."""

    name: ClassVar[str] = "vpdu"

    def __init__(self, config: VpduConfig) -> None:
        self.hostname = config.hostname
        self._host, self._port = split_hostname(config.hostname)
        self._timeout = config.timeout
        self._count: int | None = None

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> VirtualPDU:
        cfg = parse_config(VpduConfig, config, cls.name)
        assert isinstance(cfg, VpduConfig)
        return cls(cfg)

    async def _send(self, word: int, what: str) -> int:
        """Send one command word on a new connection and return the reply byte."""
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(self._host, self._port), self._timeout)
        except TimeoutError:
            raise DriverError(
                f"vPDU at {self.hostname} is unreachable: no connection within {self._timeout:g} s"
            ) from None
        except OSError as exc:
            raise DriverError(f"vPDU at {self.hostname} is unreachable: {_reason(exc)}") from None
        try:
            writer.write(struct.pack(">I", word))
            await asyncio.wait_for(writer.drain(), self._timeout)
            reply = await asyncio.wait_for(reader.readexactly(1), self._timeout)
        except asyncio.IncompleteReadError:
            raise DriverError(f"vPDU at {self.hostname} closed the connection without answering ({what})") from None
        except TimeoutError:
            raise DriverError(f"vPDU at {self.hostname} did not answer within {self._timeout:g} s ({what})") from None
        except OSError as exc:
            raise DriverError(f"vPDU at {self.hostname} dropped the connection ({what}): {_reason(exc)}") from None
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), self._timeout)
        return reply[0]

    def _outlet(self, port_id: str) -> int:
        text = str(port_id).strip()
        if not text.isdigit() or int(text) > MAX_PORT:
            raise DriverError(f"vPDU has no outlet {port_id!r}: outlets are numbered 0..N-1")
        index = int(text)
        if self._count is not None and index >= self._count:
            raise DriverError(f"vPDU at {self.hostname} has no outlet {index} (outlets 0..{self._count - 1})")
        return index

    async def ports(self) -> list[Outlet]:
        count = await self._send(CMD_COUNT, "port count")
        if count == 0:
            raise DriverError(f"vPDU at {self.hostname} reports no outlets")
        self._count = count
        return [Outlet(str(i), f"outlet {i}") for i in range(count)]

    async def get(self, port_id: str) -> PortState:
        index = self._outlet(port_id)
        reply = await self._send((index << 2) | CMD_STATUS, f"status of outlet {index}")
        if reply not in STATUS_REPLIES:
            if reply == 0:
                raise DriverError(f"vPDU at {self.hostname} refused the status of outlet {index} (no such outlet?)")
            raise DriverError(
                f"vPDU at {self.hostname} gave an unexpected answer 0x{reply:02x} for the status of outlet {index}"
            )
        return STATUS_REPLIES[reply]

    async def _switch(self, index: int, on: bool) -> None:
        action = "ON" if on else "OFF"
        reply = await self._send((index << 2) | (CMD_ON if on else CMD_OFF), f"outlet {index} {action}")
        if reply != REPLY_OK:
            raise DriverError(
                f"vPDU at {self.hostname} refused to switch outlet {index} {action} (answer 0x{reply:02x})"
            )

    async def set(self, port_id: str, state: PortState) -> None:
        index = self._outlet(port_id)
        if state == PortState.ON:
            await self._switch(index, True)
        elif state == PortState.OFF:
            await self._switch(index, False)
        elif state == PortState.REBOOT:
            await self._switch(index, False)
            await asyncio.sleep(REBOOT_PAUSE)
            await self._switch(index, True)
        else:
            raise DriverError(f"cannot set outlet {index} to {state.value}: use ON, OFF or REBOOT")

    async def close(self) -> None:
        return None
