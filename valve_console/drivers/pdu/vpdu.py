"""Driver for Vivian's virtual PDU (the seed's vPDU TCP protocol, ``vivian/vpdu.py``).

One command per TCP connection: a 32-bit big-endian word ``(port << 2) | cmd`` goes out and one
byte comes back. Commands: 0 port count, 1 ON, 2 OFF, 3 status (0x03 ON, 0x04 OFF, 0x05 unknown);
ON/OFF answer 0x01 on success and 0x00 means the vPDU refused the command.

Metering (Vivian's extension, documented in ``vivian/vpdu.py``): the word 0x00004000 asks for the power
report; the answer is 0x06, a 32-bit big-endian length and that many bytes of text (``vpdu-power 1``, then
``<outlet> <W> <A> <V> <Wh>`` lines and ``total <W> <Wh>``), or 0x07 "not metered". An older vPDU answers
0x00: that is "not metered" too. Whatever else comes back is contained: listed in ``problems``, never raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import struct
from typing import Any, ClassVar

from pydantic import Field, field_validator

from .base import (
    MAX_AMPS,
    MAX_OUTLET_WATTS,
    MAX_PDU_WATTS,
    MAX_VOLTS,
    BatchFallback,
    DriverConfig,
    DriverError,
    Outlet,
    OutletPower,
    PortState,
    PowerReading,
    checked_value,
    parse_config,
)

CMD_COUNT, CMD_ON, CMD_OFF, CMD_STATUS = 0, 1, 2, 3
MAX_PORT = 2047  # the port field is 11 bits wide
REPLY_OK = 0x01
STATUS_REPLIES = {0x03: PortState.ON, 0x04: PortState.OFF, 0x05: PortState.UNKNOWN}
REBOOT_PAUSE = 1.0
POWER_WORD = 0x4000  # the power report request (Vivian's metering extension)
REPLY_POWER, REPLY_NOT_METERED, REPLY_REFUSED = 0x06, 0x07, 0x00
MAX_REPORT = 1 << 20  # bytes: the vPDU promises at most 1 MiB
REPORT_HEADER = "vpdu-power 1"
MAX_ENERGY_WH = 1e12  # a counter beyond this is not believed
MAX_PROBLEMS = 20


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
    metering: bool = Field(default=True, description="read the vPDU's power meters (Vivian's power report)")

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
        self._metering = config.metering
        self._count: int | None = None

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> VirtualPDU:
        cfg = parse_config(VpduConfig, config, cls.name)
        assert isinstance(cfg, VpduConfig)
        return cls(cfg)

    async def _send(self, word: int, what: str) -> int:
        """Send one command word on a new connection and return the reply byte."""
        return (await self._exchange(word, what))[0]

    async def _exchange(self, word: int, what: str) -> tuple[int, bytes | None]:
        """Send one command word on a new connection; return the reply byte and, after a power report's 0x06,
        its body (None when the body could not be read whole: short, too long or late)."""
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
            body: bytes | None = None
            if word == POWER_WORD and reply[0] == REPLY_POWER:
                body = await self._read_report(reader)
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
        return reply[0], body

    async def _read_report(self, reader: asyncio.StreamReader) -> bytes | None:
        try:
            header = await asyncio.wait_for(reader.readexactly(4), self._timeout)
            (length,) = struct.unpack(">I", header)
            if length > MAX_REPORT:
                return None
            return await asyncio.wait_for(reader.readexactly(length), self._timeout)
        except (asyncio.IncompleteReadError, TimeoutError, OSError):
            return None

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

    # -- metering ------------------------------------------------------------------------------

    async def read_power(self, port_ids: list[str]) -> PowerReading:
        """The asked outlets' meters from one power report (one round trip). A vPDU that does not meter
        (or a driver configured with ``metering: false``) gives empty outlets; a malformed report gives what
        could be read, None elsewhere, and its problems in words."""
        if not self._metering:
            return PowerReading(outlets={})
        reply, body = await self._exchange(POWER_WORD, "power report")
        if reply in (REPLY_NOT_METERED, REPLY_REFUSED):
            return PowerReading(outlets={})
        problems: list[str] = []
        if reply != REPLY_POWER:
            problems.append(f"vPDU at {self.hostname} gave an unexpected answer 0x{reply:02x} to the power report")
            return PowerReading(outlets={p: OutletPower() for p in port_ids}, problems=tuple(problems))
        if body is None:
            problems.append(f"vPDU at {self.hostname} sent a power report cut short or longer than {MAX_REPORT} bytes")
            return PowerReading(outlets={p: OutletPower() for p in port_ids}, problems=tuple(problems))
        rows, total = _parse_report(body, problems)
        outlets: dict[str, OutletPower] = {}
        for port_id in port_ids:
            text = str(port_id).strip()
            index = int(text) if text.isdigit() and int(text) <= MAX_PORT else None
            row = rows.get(index) if index is not None else None
            if row is None:
                problems.append(f"outlet {port_id!r}: not in the vPDU's power report")
                outlets[port_id] = OutletPower()
                continue
            if len(row) != 4:  # a line cut or shifted: no value of it can be trusted
                problems.append(f"outlet {port_id}: {len(row)} values instead of 4 (W A V Wh)")
                outlets[port_id] = OutletPower()
                continue
            words = row
            where = f"outlet {port_id}"
            outlets[port_id] = OutletPower(
                watts=checked_value(f"{where} watts", words[0], 1.0, MAX_OUTLET_WATTS, problems),
                amps=checked_value(f"{where} amps", words[1], 1.0, MAX_AMPS, problems),
                volts=checked_value(f"{where} volts", words[2], 1.0, MAX_VOLTS, problems),
                energy_wh=checked_value(f"{where} energy", words[3], 1.0, MAX_ENERGY_WH, problems),
            )
        total_watts = total_wh = None
        if total is not None:
            if len(total) == 2:
                total_watts = checked_value("total watts", total[0], 1.0, MAX_PDU_WATTS, problems)
                total_wh = checked_value("total energy", total[1], 1.0, MAX_ENERGY_WH, problems)
            else:
                problems.append(f"total: {len(total)} values instead of 2 (W Wh)")
        if len(problems) > MAX_PROBLEMS:
            problems[MAX_PROBLEMS:] = [f"... and {len(problems) - MAX_PROBLEMS} more problems"]
        return PowerReading(outlets, total_watts, total_wh, tuple(problems))

    async def close(self) -> None:
        return None


def _parse_report(body: bytes, problems: list[str]) -> tuple[dict[int, list[str]], list[str] | None]:
    """A power report's outlet rows {outlet: [W, A, V, Wh] as text} and total row; what does not parse goes to
    ``problems`` (the first few lines of it) and is left out."""
    text = body.decode("ascii", "replace")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines or lines[0].strip() != REPORT_HEADER:
        first = lines[0][:40] if lines else ""
        problems.append(f"power report: starts with {first!r}, not {REPORT_HEADER!r}")
        return {}, None
    rows: dict[int, list[str]] = {}
    total: list[str] | None = None
    bad = 0
    for line in lines[1:]:
        words = line.split()
        if words and words[0] == "total" and total is None:
            total = words[1:]
        elif words and words[0].isdigit() and len(words[0]) <= 4 and int(words[0]) not in rows:
            rows[int(words[0])] = words[1:]
        else:
            bad += 1
            if bad <= 3:
                problems.append(f"power report: line {line[:60]!r} is not understood")
    if bad > 3:
        problems.append(f"power report: {bad - 3} more lines not understood")
    return rows, total
