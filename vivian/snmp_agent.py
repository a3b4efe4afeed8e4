"""An APC MasterSwitch face for the vPDU: a net-snmp ``pass_persist`` helper.

snmpd runs it for the subtree ``.1.3.6.1.4.1.318.1.1.4`` (``python vivian/vpdu.py --snmp-port P``
writes that configuration); it answers from the vPDU's TCP protocol, one connection per question:

    sPDUOutletControlTableSize  .318.1.1.4.4.1.0       the vPDU's port count
    sPDUOutletControlIndex      .318.1.1.4.4.2.1.1.N   N
    sPDUOutletPending           .318.1.1.4.4.2.1.2.N   2 (no command pending)
    sPDUOutletCtl               .318.1.1.4.4.2.1.3.N   reads on 1, off 2, unknown 4; write 1 on, 2 off, 3 reboot
    sPDUOutletCtlName           .318.1.1.4.4.2.1.4.N   "vPDU outlet <N-1>"

APC outlets are numbered from 1 and vPDU outlets from 0, so APC outlet N is vPDU outlet N-1.
A reboot answers at once and runs off, 1 s pause, on in the background, as a real PDU does.

    pass_persist .1.3.6.1.4.1.318.1.1.4 /usr/bin/python3 vivian/snmp_agent.py --vpdu 127.0.0.1:9191

Metering (a second helper, ``--subtree .1.3.6.1.4.1.318.1.1.26``: APC's rPDU2 objects, PowerNet-MIB), from
the vPDU's power report (``vivian/vpdu.py``), read at most every 0.5 s so that one walk sees one report:

    rPDU2DeviceStatusIndex / Module     .318.1.1.26.4.3.1.1.1 / .2.1    1 / 1
    rPDU2DeviceStatusPower              .318.1.1.26.4.3.1.5.1           total W, in 0.01 kW (rounded)
    rPDU2DeviceStatusEnergy             .318.1.1.26.4.3.1.9.1           total Wh, in 0.1 kWh (truncated)
    rPDU2OutletMeteredTableSize         .318.1.1.26.9.3.0               the port count
    rPDU2OutletMeteredStatusTable       .318.1.1.26.9.4.3.1.<col>.N     row N = APC outlet N = vPDU outlet N-1:
        .1 index N, .2 module 1, .3 name "vPDU outlet <N-1>", .4 number N, .5 load state (1 lowLoad below
        1 W, else 2 normal), .6 current in 0.1 A (rounded), .7 power in W (rounded), .11 energy in 0.1 kWh
        (truncated)

All INTEGER but the name. A vPDU that does not meter (``--no-metering``) has none of these objects.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script by snmpd
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vivian.client import (  # noqa: E402
    CMD_COUNT,
    CMD_OFF,
    CMD_ON,
    CMD_STATUS,
    PowerReport,
    make_word,
    read_power,
    send_command,
)

SUBTREE = (1, 3, 6, 1, 4, 1, 318, 1, 1, 4)
RPDU2 = (1, 3, 6, 1, 4, 1, 318, 1, 1, 26)
DEVICE_ENTRY = RPDU2 + (4, 3, 1)  # rPDU2DeviceStatusEntry, one row (index 1)
DEV_INDEX, DEV_MODULE, DEV_POWER, DEV_ENERGY = 1, 2, 5, 9
METERED_SIZE = RPDU2 + (9, 3, 0)  # rPDU2OutletMeteredTableSize
METERED_ENTRY = RPDU2 + (9, 4, 3, 1)  # rPDU2OutletMeteredStatusEntry
M_INDEX, M_MODULE, M_NAME, M_NUMBER, M_STATE, M_CURRENT, M_POWER, M_ENERGY = 1, 2, 3, 4, 5, 6, 7, 11
METERED_COLUMNS = (M_INDEX, M_MODULE, M_NAME, M_NUMBER, M_STATE, M_CURRENT, M_POWER, M_ENERGY)
LOW_LOAD, NORMAL_LOAD = 1, 2
POWER_CACHE = 0.5  # seconds one power report serves
TABLE_SIZE = SUBTREE + (4, 1, 0)
ENTRY = SUBTREE + (4, 2, 1)
COL_INDEX, COL_PENDING, COL_CTL, COL_NAME = 1, 2, 3, 4
OUTLET_ON, OUTLET_OFF, OUTLET_REBOOT, OUTLET_UNKNOWN = 1, 2, 3, 4
STATUS_TO_CTL = {0x03: OUTLET_ON, 0x04: OUTLET_OFF}
REBOOT_PAUSE = 1.0
TIMEOUT = 2.0


class VpduFace:
    """Answers pass_persist requests from the vPDU at ``host:port``."""

    def __init__(
        self,
        host: str,
        port: int,
        ask: Callable[[str, int, int, float], int] = send_command,
        subtree: tuple[int, ...] = SUBTREE,
        ask_power: Callable[[str, int, float], PowerReport | None] = read_power,
    ) -> None:
        self.host, self.port, self._ask = host, port, ask
        self.subtree = subtree
        self._ask_power = ask_power
        self._count = 0
        self._power: PowerReport | None = None
        self._power_at = -1e9

    def power(self) -> PowerReport | None:
        """The vPDU's power report (None: not metered or not answering), at most POWER_CACHE seconds old."""
        now = time.monotonic()
        if now - self._power_at >= POWER_CACHE:
            try:
                self._power = self._ask_power(self.host, self.port, TIMEOUT)
            except (OSError, ConnectionError, ValueError):
                self._power = None
            self._power_at = now
        return self._power

    def _send(self, word: int) -> int | None:
        try:
            return self._ask(self.host, self.port, word, TIMEOUT)
        except (OSError, ConnectionError):
            return None

    def count(self) -> int:
        """The vPDU's port count (asked once; 0 while the vPDU does not answer)."""
        if not self._count:
            self._count = self._send(make_word(CMD_COUNT)) or 0
        return self._count

    def value(self, oid: tuple[int, ...], count: int) -> tuple[str, str | int] | None:
        """(type, value) of an OID of the subtree, or None if there is no such object."""
        if self.subtree == RPDU2:
            return self.metered_value(oid, count)
        if oid == TABLE_SIZE:
            return ("integer", count)
        if len(oid) != len(ENTRY) + 2 or oid[: len(ENTRY)] != ENTRY:
            return None
        column, n = oid[-2], oid[-1]
        if not 1 <= n <= count:
            return None
        if column == COL_INDEX:
            return ("integer", n)
        if column == COL_PENDING:
            return ("integer", 2)
        if column == COL_NAME:
            return ("string", f"vPDU outlet {n - 1}")
        if column == COL_CTL:
            reply = self._send(make_word(CMD_STATUS, n - 1))
            return ("integer", STATUS_TO_CTL.get(reply if reply is not None else -1, OUTLET_UNKNOWN))
        return None

    def metered_value(self, oid: tuple[int, ...], count: int) -> tuple[str, str | int] | None:
        """(type, value) of an rPDU2 metering object, or None (no such object, or a vPDU that does not meter)."""
        report = self.power()
        if report is None:
            return None
        outlets, total = report
        if oid == METERED_SIZE:
            return ("integer", count)
        if len(oid) == len(DEVICE_ENTRY) + 2 and oid[: len(DEVICE_ENTRY)] == DEVICE_ENTRY and oid[-1] == 1:
            column = oid[-2]
            if column in (DEV_INDEX, DEV_MODULE):
                return ("integer", 1)
            if total is None:
                return ("integer", -1) if column in (DEV_POWER, DEV_ENERGY) else None
            if column == DEV_POWER:
                return ("integer", _apc_round(total[0] / 10))  # 0.01 kW
            if column == DEV_ENERGY:
                return ("integer", int(total[1] // 100))  # 0.1 kWh
            return None
        if len(oid) != len(METERED_ENTRY) + 2 or oid[: len(METERED_ENTRY)] != METERED_ENTRY:
            return None
        column, n = oid[-2], oid[-1]
        if not 1 <= n <= count:
            return None
        if column in (M_INDEX, M_NUMBER):
            return ("integer", n)
        if column == M_MODULE:
            return ("integer", 1)
        if column == M_NAME:
            return ("string", f"vPDU outlet {n - 1}")
        reading = outlets.get(n - 1)
        if column not in (M_STATE, M_CURRENT, M_POWER, M_ENERGY):
            return None
        if reading is None:
            return ("integer", -1)
        watts, amps, _volts, energy_wh = reading
        if column == M_STATE:
            return ("integer", NORMAL_LOAD if watts >= 1 else LOW_LOAD)
        if column == M_CURRENT:
            return ("integer", _apc_round(amps * 10))  # 0.1 A
        if column == M_POWER:
            return ("integer", _apc_round(watts))  # W
        return ("integer", int(energy_wh // 100))  # 0.1 kWh

    def next_oid(self, oid: tuple[int, ...], count: int) -> tuple[int, ...] | None:
        """The first object of the subtree after ``oid`` (the table is small: list it)."""
        if self.subtree == RPDU2:
            if self.power() is None:
                return None
            order = [DEVICE_ENTRY + (c, 1) for c in (DEV_INDEX, DEV_MODULE, DEV_POWER, DEV_ENERGY)]
            order += [METERED_SIZE]
            order += [METERED_ENTRY + (c, n) for c in METERED_COLUMNS for n in range(1, count + 1)]
        else:
            order = [TABLE_SIZE] + [ENTRY + (c, n) for c in (COL_INDEX, COL_PENDING, COL_CTL, COL_NAME)
                                    for n in range(1, count + 1)]
        return next((o for o in order if o > oid), None)

    def set(self, oid: tuple[int, ...], kind: str, text: str, count: int) -> str:
        if self.subtree != SUBTREE:
            return "not-writable"
        if len(oid) != len(ENTRY) + 2 or oid[: len(ENTRY)] != ENTRY or not 1 <= oid[-1] <= count:
            return "not-writable"
        if oid[-2] != COL_CTL:
            return "not-writable"
        if kind != "integer":
            return "wrong-type"
        try:
            action = int(text)
        except ValueError:
            return "wrong-value"
        outlet = oid[-1] - 1
        if action == OUTLET_REBOOT:
            threading.Thread(target=self._reboot, args=(outlet,), daemon=True).start()
            return "DONE"
        if action not in (OUTLET_ON, OUTLET_OFF):
            return "wrong-value"
        reply = self._send(make_word(CMD_ON if action == OUTLET_ON else CMD_OFF, outlet))
        return "DONE" if reply == 0x01 else "commit-failed"

    def _reboot(self, outlet: int) -> None:
        self._send(make_word(CMD_OFF, outlet))
        time.sleep(REBOOT_PAUSE)
        self._send(make_word(CMD_ON, outlet))


def _apc_round(value: float) -> int:
    """Round half up, as the meter's integer columns are read (never Python's round-half-even)."""
    return int(value + 0.5) if value >= 0 else -int(-value + 0.5)


def _parse(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.strip().strip(".").split(".") if p)


def serve(face: VpduFace, lines: Any, out: Any) -> None:
    """The pass_persist loop over ``lines`` (an iterator of input lines), answering on ``out``."""

    def read() -> str:
        for line in lines:
            if line.strip():  # snmpd sends an extra blank line after each set
                return line.strip()
        raise EOFError

    def write(text: str) -> None:
        out.write(text)
        out.flush()

    try:
        while True:
            command = read().lower()
            if command == "ping":
                write("PONG\n")
            elif command in ("get", "getnext"):
                oid = _parse(read())
                count = face.count()
                if command == "getnext":
                    found = face.next_oid(oid, count)
                    if found is None:
                        write("NONE\n")
                        continue
                    oid = found
                answer = face.value(oid, count)
                if answer is None:
                    write("NONE\n")
                else:
                    write(".{}\n{}\n{}\n".format(".".join(map(str, oid)), *answer))
            elif command == "set":
                oid = _parse(read())
                kind, _, text = read().partition(" ")
                write(face.set(oid, kind.lower(), text.strip(), face.count()) + "\n")
            else:
                write("NONE\n")
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        return


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="net-snmp pass_persist helper: an APC MasterSwitch face for the vPDU")
    p.add_argument("--vpdu", default="127.0.0.1:9191", help="the vPDU's HOST:PORT (default 127.0.0.1:9191)")
    p.add_argument(
        "--subtree",
        default=".1.3.6.1.4.1.318.1.1.4",
        choices=(".1.3.6.1.4.1.318.1.1.4", ".1.3.6.1.4.1.318.1.1.26"),
        help="the subtree snmpd gives this helper: the MasterSwitch outlets (default) or rPDU2 metering",
    )
    args = p.parse_args(argv)
    host, _, port = args.vpdu.rpartition(":")
    if not host or not port.isdigit():
        p.error("--vpdu must be HOST:PORT")
    serve(VpduFace(host.strip("[]"), int(port), subtree=_parse(args.subtree)), iter(sys.stdin.readline, ""), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
