"""Idle CPU of the backend with 16 simulated DUTs powered on.

Ours: the real ``--backend-only`` process, a vPDU with 16 outlets all ON (16 simulated DUTs
booted, registered and connected to the netconsole), measured over a quiet window from
/proc/<pid>/stat. Peer, same run: a process shaped like valve-infra's executor at rest, as
reference/valve-infra.md §13 describes it: one thread per DUT polling every 0.1 s, the console
select loop at 1 s and the 5 s registry sync (no I/O: the floor of that design).
Reported: CPU % of one core for both, and the ratio.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import Farm, cpu_seconds, peer_idle_cpu  # noqa: E402

WINDOW = 20.0
def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        farm = Farm(Path(tmp))
        try:
            for port in range(16):
                farm.http.post(f"/api/v1/pdu/vpdu1/port/{port}/state", json={"state": "on"}).raise_for_status()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                consoles = farm.http.get("/api/v1/consoles").json()["consoles"]
                if sum(1 for c in consoles.values() if c["connected"]) == 16 and \
                        len(farm.http.get("/api/v1/machines").json()["machines"]) == 16:
                    break
                time.sleep(0.5)
            else:
                print("not all 16 DUTs came up", file=sys.stderr)
                return 1
            time.sleep(3)  # let the boot burst settle
            c0, t0 = cpu_seconds(farm.backend.pid), time.monotonic()
            time.sleep(WINDOW)
            ours = (cpu_seconds(farm.backend.pid) - c0) / (time.monotonic() - t0) * 100
        finally:
            farm.close()
    theirs = peer_idle_cpu(WINDOW)
    print(f"valve-console backend, 16 DUTs on, idle: {ours:.2f} % of one core over {WINDOW:.0f} s")
    print(f"valve-infra-shaped peer (threads + polling), idle: {theirs:.2f} % of one core")
    print(f"ratio ours/peer: {ours / max(theirs, 1e-3):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
