"""A net-snmp pass_persist helper that plays an APC or CyberPower PDU (standard library only).

    pass_persist .1.3.6.1.4.1.318  /usr/bin/python3 pp_pdu.py apc STATE.json
    pass_persist .1.3.6.1.4.1.3808 /usr/bin/python3 pp_pdu.py cyberpower STATE.json

STATE.json holds ``{"names": [...], "on": [true, false, ...], "frozen": false}`` and is read on
every request, so a test can look at or change the outlets directly. ``frozen`` makes the PDU
accept writes and change nothing (a PDU whose relay is stuck).

APC serves three MIB generations over the same outlets (sPDU .318.1.1.4, rPDU .318.1.1.12,
rPDU2 .318.1.1.26), each with its own encoding; CyberPower serves the ePDU tree .3808.1.1.3.
"""

from __future__ import annotations

import bisect
import json
import os
import sys

APC, CPS = (1, 3, 6, 1, 4, 1, 318, 1, 1), (1, 3, 6, 1, 4, 1, 3808, 1, 1, 3)


def load(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def save(path: str, state: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f)
    os.replace(tmp, path)


def table(vendor: str, state: dict) -> dict[tuple[int, ...], tuple[str, object, object]]:
    """OID -> (type, value, writer). A writer takes the written integer and returns an error or None."""
    names, on = state["names"], state["on"]
    n = len(names)
    rows: dict[tuple[int, ...], tuple[str, object, object]] = {}

    def switch(i: int, codes: dict[int, bool | None]):
        def write(value: int) -> str | None:
            if value not in codes:
                return "wrong-value"
            if not state.get("frozen"):
                on[i] = True if codes[value] is None else codes[value]  # None = reboot, ends ON
            return None

        return write

    if vendor == "apc":
        rows[APC + (4, 4, 1, 0)] = ("integer", n, None)
        rows[APC + (12, 3, 1, 3, 0)] = ("integer", n, None)
        rows[APC + (12, 3, 1, 4, 0)] = ("integer", n, None)
        rows[APC + (26, 4, 2, 1, 5, 1)] = ("integer", n, None)
        for i in range(n):
            x = i + 1
            rpdu_cmd = switch(i, {1: True, 2: False, 3: None})
            rows[APC + (4, 4, 2, 1, 1, x)] = ("integer", x, None)
            rows[APC + (4, 4, 2, 1, 2, x)] = ("integer", 2, None)  # noCommandPending
            rows[APC + (4, 4, 2, 1, 3, x)] = ("integer", 1 if on[i] else 2, rpdu_cmd)
            rows[APC + (4, 4, 2, 1, 4, x)] = ("string", names[i], None)
            rows[APC + (12, 3, 3, 1, 1, 1, x)] = ("integer", x, None)
            rows[APC + (12, 3, 3, 1, 1, 2, x)] = ("string", names[i], None)
            rows[APC + (12, 3, 3, 1, 1, 4, x)] = ("integer", 1 if on[i] else 2, rpdu_cmd)
            rows[APC + (12, 3, 5, 1, 1, 1, x)] = ("integer", x, None)
            rows[APC + (12, 3, 5, 1, 1, 2, x)] = ("string", names[i], None)
            rows[APC + (12, 3, 5, 1, 1, 4, x)] = ("integer", 1 if on[i] else 2, None)
            rows[APC + (26, 9, 2, 3, 1, 3, x)] = ("string", names[i], None)
            rows[APC + (26, 9, 2, 3, 1, 5, x)] = ("integer", 2 if on[i] else 1, None)  # off 1, on 2
            rows[APC + (26, 9, 2, 4, 1, 5, x)] = ("integer", 1 if on[i] else 2, rpdu_cmd)
    else:
        rows[CPS + (1, 8, 0)] = ("integer", n, None)
        for i in range(n):
            x = i + 1
            rows[CPS + (3, 3, 1, 1, 2, x)] = ("string", names[i], None)
            rows[CPS + (3, 3, 1, 1, 4, x)] = ("integer", 1 if on[i] else 2, switch(i, {1: True, 2: False, 3: None}))
            rows[CPS + (3, 5, 1, 1, 4, x)] = ("integer", 1 if on[i] else 2, None)
    return rows


def parse(oid: str) -> tuple[int, ...]:
    return tuple(int(p) for p in oid.strip().strip(".").split(".") if p)


def dotted(oid: tuple[int, ...]) -> str:
    return "." + ".".join(map(str, oid))


def answer(rows: dict, oid: tuple[int, ...]) -> str:
    kind, value, _ = rows[oid]
    return f"{dotted(oid)}\n{kind}\n{value}\n"


class Cache:
    """The state and its OID table, rebuilt only when the file changed (tests edit it directly)."""

    def __init__(self, vendor: str, path: str) -> None:
        self.vendor, self.path = vendor, path
        self.stamp: tuple[int, int, int] | None = None

    def get(self) -> tuple[dict, dict, list]:
        st = os.stat(self.path)
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp != self.stamp:
            self.state = load(self.path)
            self.rows = table(self.vendor, self.state)
            self.order = sorted(self.rows)
            self.stamp = stamp
        return self.state, self.rows, self.order

    def saved(self) -> None:
        self.stamp = None


def main() -> None:
    vendor, path = sys.argv[1], sys.argv[2]
    cache = Cache(vendor, path)
    lines = (line.rstrip("\n") for line in sys.stdin)

    def next_line() -> str:
        for line in lines:
            if line.strip():  # snmpd sends an extra blank line after each set
                return line.strip()
        raise SystemExit(0)

    while True:
        command = next_line().lower()
        if command == "ping":
            out = "PONG\n"
        elif command in ("get", "getnext"):
            oid = parse(next_line())
            _, rows, order = cache.get()
            if command == "get":
                out = answer(rows, oid) if oid in rows else "NONE\n"
            else:
                later = order[bisect.bisect_right(order, oid)] if order and oid < order[-1] else None
                out = answer(rows, later) if later else "NONE\n"
        elif command == "set":
            oid = parse(next_line())
            kind, _, text = next_line().partition(" ")
            state, rows, _ = cache.get()
            if oid not in rows or rows[oid][2] is None:
                out = "not-writable\n"
            elif kind != "integer":
                out = "wrong-type\n"
            else:
                error = rows[oid][2](int(text))
                if error is None:
                    save(path, state)
                    cache.saved()
                out = (error or "DONE") + "\n"
        else:
            out = "NONE\n"
        sys.stdout.write(out)
        sys.stdout.flush()


if __name__ == "__main__":
    main()
