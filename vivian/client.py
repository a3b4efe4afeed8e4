"""Command-line client for the vPDU protocol (see ``vivian/vpdu.py``).

    python vivian/client.py --outlet 3 --on
    python vivian/client.py --all --off
    python vivian/client.py --status
    python vivian/client.py --host 10.0.2.2 --outlet 3 --reboot
    python vivian/client.py --power             (every outlet's W, A, V and Wh: the metering extension)

It always asks for the port count first. Errors go to stderr with exit code 1.
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vivian.power import parse_report  # noqa: E402

CMD_COUNT, CMD_ON, CMD_OFF, CMD_STATUS = 0, 1, 2, 3
MAX_PORT = 2047
STATUS_NAMES = {0x03: "ON", 0x04: "OFF", 0x05: "UNKNOWN"}
POWER_WORD = 0x4000
MAX_REPORT = 1 << 20

PowerReport = tuple[dict[int, tuple[float, float, float, float]], tuple[float, float] | None]


class VpduError(Exception):
    """The vPDU could not be reached or refused a command."""


def make_word(cmd: int, port: int = 0) -> int:
    """Build a command word: ``(port << 2) | cmd``."""
    if not 0 <= cmd <= 3:
        raise ValueError(f"command must be 0..3, not {cmd}")
    if not 0 <= port <= MAX_PORT:
        raise ValueError(f"port must be 0..{MAX_PORT}, not {port}")
    return (port << 2) | cmd


def send_command(host: str, port: int, word: int, timeout: float = 5.0) -> int:
    """Send one 32-bit word on a new connection and return the one-byte reply.

    Raises ``OSError`` if the vPDU is unreachable and ``ConnectionError`` if it closes without replying.
    """
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(struct.pack(">I", word & 0xFFFFFFFF))
        reply = sock.recv(1)
    if not reply:
        raise ConnectionError("the vPDU closed the connection without replying")
    return reply[0]


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the vPDU closed the connection in the middle of its power report")
        data += chunk
    return data


def read_power(host: str, port: int, timeout: float = 5.0) -> PowerReport | None:
    """The vPDU's power report: ({outlet: (W, A, V, Wh)}, (total W, total Wh)), or None when it does not meter.

    Raises ``OSError``/``ConnectionError`` like ``send_command`` and ``ValueError`` for a malformed report.
    """
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(struct.pack(">I", POWER_WORD))
        reply = _recv_exactly(sock, 1)[0]
        if reply in (0x00, 0x07):
            return None
        if reply != 0x06:
            raise ValueError(f"unexpected answer 0x{reply:02x} to the power report")
        (length,) = struct.unpack(">I", _recv_exactly(sock, 4))
        if length > MAX_REPORT:
            raise ValueError(f"power report of {length} bytes: too long")
        body = _recv_exactly(sock, length)
    return parse_report(body.decode("ascii"))


def _ask(host: str, port: int, word: int, what: str) -> int:
    try:
        reply = send_command(host, port, word)
    except OSError as exc:
        raise VpduError(f"vPDU at {host}:{port} is unreachable ({what}): {exc.strerror or exc}") from None
    if reply == 0x00:
        raise VpduError(f"vPDU at {host}:{port} refused the command ({what})")
    return reply


def _switch(host: str, port: int, outlet: int, cmd: int) -> None:
    name = "ON" if cmd == CMD_ON else "OFF"
    reply = _ask(host, port, make_word(cmd, outlet), f"outlet {outlet} {name}")
    if reply != 0x01:
        raise VpduError(f"vPDU at {host}:{port} answered 0x{reply:02x} to outlet {outlet} {name}")


def _status(host: str, port: int, outlet: int) -> str:
    reply = _ask(host, port, make_word(CMD_STATUS, outlet), f"status of outlet {outlet}")
    return STATUS_NAMES.get(reply, "UNKNOWN")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Control Vivian's virtual PDU.")
    p.add_argument("--host", default="localhost", help="vPDU address (default localhost)")
    p.add_argument("--port", type=int, default=9191, help="vPDU TCP port (default 9191)")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--outlet", type=int, help="outlet number (0-based)")
    target.add_argument("--all", action="store_true", help="every outlet")
    action = p.add_mutually_exclusive_group(required=True)
    action.add_argument("--on", action="store_true", help="switch ON")
    action.add_argument("--off", action="store_true", help="switch OFF")
    action.add_argument("--reboot", action="store_true", help="switch OFF then ON")
    action.add_argument("--status", action="store_true", help="print outlet states")
    action.add_argument("--power", action="store_true", help="print every outlet's W, A, V and Wh")
    return p


def run(args: argparse.Namespace) -> None:
    """Carry out the parsed command; raises VpduError on failure."""
    host, port = args.host, args.port
    if args.power:
        _print_power(host, port, args.outlet)
        return
    count = _ask(host, port, make_word(CMD_COUNT), "port count")
    if args.outlet is not None:
        if not 0 <= args.outlet < count:
            raise VpduError(f"outlet {args.outlet} out of range: the vPDU has outlets 0..{count - 1}")
        outlets = [args.outlet]
    else:
        outlets = list(range(count))
    if args.status:
        for outlet in outlets:
            print(f"Outlet {outlet:3d}: {_status(host, port, outlet)}", flush=True)
        return
    for outlet in outlets:
        if args.off or args.reboot:
            _switch(host, port, outlet, CMD_OFF)
        if args.on or args.reboot:
            _switch(host, port, outlet, CMD_ON)


def _print_power(host: str, port: int, outlet: int | None) -> None:
    try:
        report = read_power(host, port)
    except OSError as exc:
        raise VpduError(f"vPDU at {host}:{port} is unreachable (power report): {exc.strerror or exc}") from None
    except ValueError as exc:
        raise VpduError(f"vPDU at {host}:{port} sent a bad power report: {exc}") from None
    if report is None:
        print("not metered", flush=True)
        return
    outlets, total = report
    for n, (watts, amps, volts, wh) in sorted(outlets.items()):
        if outlet is None or n == outlet:
            print(f"Outlet {n:3d}: {watts:7.1f} W {amps:6.3f} A {volts:6.1f} V {wh:12.4f} Wh", flush=True)
    if total is not None and outlet is None:
        print(f"Total     : {total[0]:7.1f} W {'':17} {total[1]:12.4f} Wh", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.status and not args.power and args.outlet is None and not args.all:
        parser.error("--on, --off and --reboot need --outlet N or --all")
    try:
        run(args)
    except VpduError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # stdout piped into a reader that went away (e.g. head)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
