"""Shared pieces of the registration security tests: DUTs on a network of their own, and a farm they reach.

The DUT network is a network namespace joined to this one by a veth pair: the gateway is ``10.214.0.1``
here, and the namespace holds several DUT addresses (a victim, an attacker, more for floods). One helper
process lives in the namespace for the whole module and makes HTTP requests from whichever of those
addresses it is told, so the API sees real peer addresses that are neither loopback nor the gateway's.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, AsyncIterator, Iterator, Optional

import httpx
import pytest

from tests.conftest import make_settings
from tests.netns import dut_namespace
from valve_console.backend.farm import Farm

GATEWAY = "10.214.0.1"
VICTIM = "10.214.0.13"
ATTACKER = "10.214.0.66"
BYSTANDER = "10.214.0.77"
DUT_ADDRESSES = (VICTIM, ATTACKER, BYSTANDER)

_HELPER = r"""
import json, sys
import httpx
clients = {}
for line in sys.stdin:
    a = json.loads(line)
    client = clients.get(a["source"])
    if client is None:
        transport = httpx.HTTPTransport(local_address=a["source"])
        client = clients[a["source"]] = httpx.Client(transport=transport, timeout=15)
    try:
        r = client.request(a["method"], a["url"], json=a.get("json"), headers=a.get("headers") or {})
        out = {"status": r.status_code, "text": r.text, "headers": dict(r.headers)}
    except Exception as exc:
        out = {"status": 0, "text": repr(exc), "headers": {}}
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
"""


class DutNetwork:
    """HTTP requests made from addresses of the DUT network (a namespace), one at a time."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self._lock = threading.Lock()
        self._proc = subprocess.Popen(
            ["ip", "netns", "exec", namespace, sys.executable, "-c", _HELPER],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )

    def request(self, source: str, method: str, url: str, json_body: Any = None,
                headers: Optional[dict[str, str]] = None) -> httpx.Response:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        line = json.dumps({"source": source, "method": method, "url": url, "json": json_body, "headers": headers})
        with self._lock:
            self._proc.stdin.write(line + "\n")
            self._proc.stdin.flush()
            answer = json.loads(self._proc.stdout.readline())
        assert answer["status"], f"request from {source} failed: {answer['text']}"
        return httpx.Response(answer["status"], text=answer["text"], headers=answer["headers"])

    def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


@pytest.fixture(scope="module")
def dut_network() -> Iterator[DutNetwork]:
    """A network namespace with the DUT addresses, linked to us (``GATEWAY``) by a veth pair."""
    with dut_namespace("reg", GATEWAY, DUT_ADDRESSES) as ns:
        network = DutNetwork(ns)
        try:
            yield network
        finally:
            network.close()


@contextlib.asynccontextmanager
async def running_farm(data_dir: Path, **settings: Any) -> AsyncIterator[Farm]:
    """A farm whose API listens on every address (the DUTs reach it at ``GATEWAY``); loopback stays
    the gateway's own tools. ``trusted_networks`` is empty as in every test: the token is needed."""
    farm = Farm(make_settings(data_dir, **{"listen": "0.0.0.0:0", "hosts_debounce": 0.05, **settings}))
    await farm.start()
    try:
        yield farm
    finally:
        await farm.stop()


def dut_url(farm: Farm, path: str) -> str:
    """``path`` on the farm's API as a DUT reaches it (through the gateway's private address)."""
    return f"http://{GATEWAY}:{farm.api_address[1]}{path}"


def local_url(farm: Farm, path: str) -> str:
    return f"http://127.0.0.1:{farm.api_address[1]}{path}"


def registration(mac: str, ip: str, base_name: str = "gfx9", **extra: Any) -> dict[str, Any]:
    """What valve-infra's ``machine_registration register`` posts."""
    return {
        "base_name": base_name,
        "tags": ["amdgpu:gfxversion:gfx9", "amdgpu:pciid:0x1002:0x687f"],
        "mac_address": mac,
        "ip_address": ip,
        "local_tty_device": "ttyUSB0",
        **extra,
    }
