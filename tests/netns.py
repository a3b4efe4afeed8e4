"""A DUT network for tests: a network namespace joined to this one by a veth pair.

The gateway side gets ``gateway`` (a /24) here; the namespace holds ``addresses`` on its end, so requests
made from inside it reach the API from real peer addresses that are neither loopback nor the gateway's.
Where namespaces cannot be made (no root, no ``ip``), the test is skipped and says why.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from typing import Iterator

import pytest


@contextlib.contextmanager
def dut_namespace(prefix: str, gateway: str, addresses: tuple[str, ...]) -> Iterator[str]:
    """The namespace's name, for ``ip netns exec``; both ends are removed afterwards."""
    tag = os.getpid() % 100000
    ns, here, there = f"vc-{prefix}-{tag}", f"v{prefix[:2]}g{tag}", f"v{prefix[:2]}d{tag}"
    setup = [
        ["ip", "netns", "add", ns],
        ["ip", "link", "add", here, "type", "veth", "peer", "name", there],
        ["ip", "link", "set", there, "netns", ns],
        ["ip", "addr", "add", f"{gateway}/24", "dev", here],
        ["ip", "link", "set", here, "up"],
        *(["ip", "-n", ns, "addr", "add", f"{address}/24", "dev", there] for address in addresses),
        ["ip", "-n", ns, "link", "set", there, "up"],
        ["ip", "-n", ns, "link", "set", "lo", "up"],
    ]
    try:
        for cmd in setup:
            result = subprocess.run(cmd, capture_output=True, text=True)
            if result.returncode != 0:
                pytest.skip(f"no network namespace for DUTs here ({' '.join(cmd)}: {result.stderr.strip()})")
        yield ns
    finally:
        subprocess.run(["ip", "link", "del", here], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
