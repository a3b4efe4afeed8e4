"""A net-snmp pass_persist helper that plays an APC or CyberPower PDU (standard library only).

    pass_persist .1.3.6.1.4.1.318  /usr/bin/python3 pp_pdu.py apc STATE.json
    pass_persist .1.3.6.1.4.1.3808 /usr/bin/python3 pp_pdu.py cyberpower STATE.json

STATE.json holds ``{"names": [...], "on": [true, false, ...], "frozen": false}`` and optionally
``"stuck": [N, ...]`` and ``"refuse": [N, ...]`` (outlet numbers). The helper reads it again
whenever it changed on disk (checked on every request), so a test can change the outlets directly.
Sets change the helper's own state and are written to the file when a GETNEXT comes, when snmpd
has sent nothing for IDLE_FLUSH seconds, or when the helper exits, not once per var-bind: a test
that looks at the file first sends the agent a GETNEXT (``SnmpdAgent.read`` in conftest.py does),
and a test's own write wins over sets not yet written. (Not on a GET: snmpd GETs each var-bind of
a SET from the helper just before setting it.) ``frozen`` makes the PDU accept writes and change
nothing (a PDU whose relay is stuck); ``stuck`` does that for single outlets; a set of a ``refuse``
outlet is answered ``inconsistent-value`` (the agent blames that var-bind).

snmpd hands each var-bind of a request to this helper in turn (after a PING), so the helper's cost
per var-bind is what a many-outlet request pays: values are computed when asked, a set does not
rebuild the OID table, and a run of sets writes the file once.

APC serves three MIB generations over the same outlets (sPDU .318.1.1.4, rPDU .318.1.1.12,
rPDU2 .318.1.1.26), each with its own encoding; CyberPower serves the ePDU tree .3808.1.1.3.
"""

from __future__ import annotations

import bisect
import json
import os
import select
import sys

APC, CPS = (1, 3, 6, 1, 4, 1, 318, 1, 1), (1, 3, 6, 1, 4, 1, 3808, 1, 1, 3)
IDLE_FLUSH = 0.05  # seconds without a request after which sets not yet written are written


def load(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def save(path: str, state: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f)
    os.replace(tmp, path)


def table(vendor: str, state: dict) -> dict[tuple[int, ...], tuple[str, object, object]]:
    """OID -> (type, value, writer). A value may be a function of no arguments (read when asked);
    a writer takes the written integer and returns an error or None."""
    names, on = state["names"], state["on"]
    n = len(names)
    rows: dict[tuple[int, ...], tuple[str, object, object]] = {}

    def switch(i: int, codes: dict[int, bool | None]):
        def write(value: int) -> str | None:
            if value not in codes:
                return "wrong-value"
            if i + 1 in state.get("refuse", ()):
                return "inconsistent-value"
            if not state.get("frozen") and i + 1 not in state.get("stuck", ()):
                on[i] = True if codes[value] is None else codes[value]  # None = reboot, ends ON
            return None

        return write

    def on_off(i: int, on_value: int, off_value: int):
        return lambda: on_value if on[i] else off_value

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
            rows[APC + (4, 4, 2, 1, 3, x)] = ("integer", on_off(i, 1, 2), rpdu_cmd)
            rows[APC + (4, 4, 2, 1, 4, x)] = ("string", names[i], None)
            rows[APC + (12, 3, 3, 1, 1, 1, x)] = ("integer", x, None)
            rows[APC + (12, 3, 3, 1, 1, 2, x)] = ("string", names[i], None)
            rows[APC + (12, 3, 3, 1, 1, 4, x)] = ("integer", on_off(i, 1, 2), rpdu_cmd)
            rows[APC + (12, 3, 5, 1, 1, 1, x)] = ("integer", x, None)
            rows[APC + (12, 3, 5, 1, 1, 2, x)] = ("string", names[i], None)
            rows[APC + (12, 3, 5, 1, 1, 4, x)] = ("integer", on_off(i, 1, 2), None)
            rows[APC + (26, 9, 2, 3, 1, 3, x)] = ("string", names[i], None)
            rows[APC + (26, 9, 2, 3, 1, 5, x)] = ("integer", on_off(i, 2, 1), None)  # off 1, on 2
            rows[APC + (26, 9, 2, 4, 1, 5, x)] = ("integer", on_off(i, 1, 2), rpdu_cmd)
    else:
        rows[CPS + (1, 8, 0)] = ("integer", n, None)
        for i in range(n):
            x = i + 1
            rows[CPS + (3, 3, 1, 1, 2, x)] = ("string", names[i], None)
            rows[CPS + (3, 3, 1, 1, 4, x)] = ("integer", on_off(i, 1, 2), switch(i, {1: True, 2: False, 3: None}))
            rows[CPS + (3, 5, 1, 1, 4, x)] = ("integer", on_off(i, 1, 2), None)
    return rows


def parse(oid: str) -> tuple[int, ...]:
    return tuple(int(p) for p in oid.strip().strip(".").split(".") if p)


def dotted(oid: tuple[int, ...]) -> str:
    return "." + ".".join(map(str, oid))


def answer(rows: dict, oid: tuple[int, ...]) -> str:
    kind, value, _ = rows[oid]
    if callable(value):
        value = value()
    return f"{dotted(oid)}\n{kind}\n{value}\n"


class Cache:
    """The state and its OID table, rebuilt only when the file changed (tests edit it directly)."""

    def __init__(self, vendor: str, path: str) -> None:
        self.vendor, self.path = vendor, path
        self.stamp: tuple[int, int, int] | None = None

    def _stamp(self) -> tuple[int, int, int]:
        st = os.stat(self.path)
        return st.st_ino, st.st_mtime_ns, st.st_size

    def get(self) -> tuple[dict, dict, list]:
        stamp = self._stamp()
        if stamp != self.stamp:
            self.state = load(self.path)
            self.rows = table(self.vendor, self.state)
            self.order = sorted(self.rows)
            self.stamp = stamp
        return self.state, self.rows, self.order

    def saved(self) -> None:
        """We wrote the file from our own state: the table (whose values are live) stays valid."""
        self.stamp = self._stamp()


class Helper:
    """The state, with sets kept in memory until something may look at the file."""

    def __init__(self, vendor: str, path: str) -> None:
        self.path = path
        self.cache = Cache(vendor, path)
        self.dirty = False

    def get(self) -> tuple[dict, dict, list]:
        stamp = self.cache.stamp
        got = self.cache.get()
        if self.cache.stamp != stamp:  # someone else wrote the file: it wins over unwritten sets
            self.dirty = False
        return got

    def flush(self) -> None:
        if self.dirty:
            self.get()  # a write of the file since our last set wins
        if self.dirty:
            save(self.path, self.cache.state)
            self.cache.saved()
            self.dirty = False


def main() -> None:
    vendor, path = sys.argv[1], sys.argv[2]
    helper = Helper(vendor, path)
    pending = b""

    def next_line() -> str:
        nonlocal pending
        while True:
            line, newline, rest = pending.partition(b"\n")
            if newline:
                pending = rest
                if line.strip():  # snmpd sends an extra blank line after each set
                    return line.decode().strip()
                continue
            if helper.dirty and not select.select([0], [], [], IDLE_FLUSH)[0]:
                helper.flush()  # idle: let the file catch up
            data = os.read(0, 65536)
            if not data:
                helper.flush()
                raise SystemExit(0)
            pending += data

    while True:
        command = next_line().lower()
        if command == "ping":
            out = "PONG\n"
        elif command in ("get", "getnext"):
            oid = parse(next_line())
            if command == "getnext":
                helper.flush()
            _, rows, order = helper.get()
            if command == "get":
                out = answer(rows, oid) if oid in rows else "NONE\n"
            else:
                later = order[bisect.bisect_right(order, oid)] if order and oid < order[-1] else None
                out = answer(rows, later) if later else "NONE\n"
        elif command == "set":
            oid = parse(next_line())
            kind, _, text = next_line().partition(" ")
            _, rows, _ = helper.get()
            if oid not in rows or rows[oid][2] is None:
                out = "not-writable\n"
            elif kind != "integer":
                out = "wrong-type\n"
            else:
                error = rows[oid][2](int(text))
                if error is None:
                    helper.dirty = True
                out = (error or "DONE") + "\n"
        else:
            out = "NONE\n"
        sys.stdout.write(out)
        sys.stdout.flush()


if __name__ == "__main__":
    main()
