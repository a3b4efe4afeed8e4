"""Real SNMP agents for the driver tests: net-snmp snmpd with a pass_persist helper, and snmpsim.

Both run once per session on loopback, on free high ports, and are always stopped. A missing
snmpd (Debian ``snmpd``) or snmpsim (pip ``snmpsim`` + ``pysmi``) skips the tests that need it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
PP_HELPER = HERE / "pp_pdu.py"
VARIATIONS = HERE / "snmpsim_variation"

APC_OUTLETS = 8
CPS_OUTLETS = 4
V3_PASS = ("authpass123", "privpass123")
SYNC_OIDS = {"apc": "1.3.6.1.4.1.318.1.1.4.4.1", "cyberpower": "1.3.6.1.4.1.3808.1.1.3.1.8"}  # next: outlet counts


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _probe(driver: str, config: dict[str, Any], deadline: float) -> None:
    """Wait until the agent answers ``ports()`` through our own driver (in a private loop and thread)."""
    from valve_console.drivers.pdu import DriverError, create_driver
    from valve_console.drivers.pdu.snmp import close_engines

    async def once() -> bool:
        drv = create_driver(driver, {**config, "timeout": 0.3, "retries": 0})
        try:
            await drv.ports()
            return True
        except DriverError:
            return False
        finally:
            await drv.close()
            await close_engines()

    result: list[bool] = []
    while time.monotonic() < deadline:
        t = threading.Thread(target=lambda: result.append(asyncio.run(once())))
        t.start()
        t.join()
        if result and result[-1]:
            return
        time.sleep(0.1)
    raise RuntimeError(f"the SNMP agent for {driver} did not start in time")


class SnmpdAgent:
    """snmpd on 127.0.0.1:port; APC (sPDU, rPDU, rPDU2) and CyberPower ePDU outlets in JSON files."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.port = free_udp_port()
        self.hostname = f"127.0.0.1:{self.port}"
        self.files = {"apc": workdir / "apc.json", "cyberpower": workdir / "cyberpower.json"}
        self.reset()
        conf = workdir / "snmpd.conf"
        py = sys.executable
        conf.write_text(
            "rocommunity public 127.0.0.1\n"
            "rwcommunity private 127.0.0.1\n"
            "dontLogTCPWrappersConnects yes\n"
            f'createUser v3priv SHA "{V3_PASS[0]}" AES "{V3_PASS[1]}"\n'
            f'createUser v3auth SHA-256 "{V3_PASS[0]}"\n'
            "rwuser v3priv priv\n"
            "rwuser v3auth auth\n"
            f"pass_persist .1.3.6.1.4.1.318 {py} {PP_HELPER} apc {self.files['apc']}\n"
            f"pass_persist .1.3.6.1.4.1.3808 {py} {PP_HELPER} cyberpower {self.files['cyberpower']}\n"
        )
        self.log = workdir / "snmpd.log"
        env = {**os.environ, "MIBS": "", "SNMP_PERSISTENT_DIR": str(workdir / "persist")}
        self.process = subprocess.Popen(
            [shutil.which("snmpd") or "/usr/sbin/snmpd", "-f", "-Lf", str(self.log), "-C", "-c", str(conf),
             "-p", str(workdir / "snmpd.pid"), f"udp:127.0.0.1:{self.port}"],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            _probe("apc_masterswitch", {"hostname": self.hostname}, time.monotonic() + 10)
        except Exception:
            self.stop()
            raise

    def reset(self) -> None:
        names = {"apc": [f"apc-{i}" for i in range(1, APC_OUTLETS + 1)],
                 "cyberpower": [f"cps-{i}" for i in range(1, CPS_OUTLETS + 1)]}
        for vendor in self.files:
            self.write(vendor, {"names": names[vendor], "on": [False] * len(names[vendor]), "frozen": False})

    def read(self, vendor: str) -> dict:
        self.sync(vendor)
        return json.loads(self.files[vendor].read_text())

    def sync(self, vendor: str) -> None:
        """Send the agent one GETNEXT for ``vendor``: the helper writes the sets it has not written yet
        (it writes its file when a GET or GETNEXT follows sets, not per var-bind; see pp_pdu.py).
        A GETNEXT, so the agent's GET counter (snmpInGetRequests, which tests count) does not move."""
        from valve_console.drivers.pdu.snmp import ber as snmp_ber

        oid = SYNC_OIDS[vendor]
        request = snmp_ber.encode_message(1, b"public", snmp_ber.GET_NEXT, 4242, [(oid, None)])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(1.0)
            s.connect(("127.0.0.1", self.port))
            for _ in range(5):
                s.send(request)
                try:
                    while snmp_ber.decode_message(s.recv(65536)).request_id != 4242:
                        pass
                    return
                except TimeoutError:
                    continue
        raise RuntimeError(f"snmpd on port {self.port} did not answer a GETNEXT of {oid}")

    def write(self, vendor: str, state: dict) -> None:
        if getattr(self, "process", None) is not None:
            self.sync(vendor)  # the helper has written its sets: it cannot overwrite this write later
        tmp = self.files[vendor].with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        # A fine-grained mtime of our own: the helper notices a change by (inode, mtime, size), and
        # inode numbers are reused and the kernel's own file times are coarse.
        stamp = time.time_ns() + 1
        os.utime(tmp, ns=(stamp, stamp))
        os.replace(tmp, self.files[vendor])

    def outlets(self, vendor: str) -> list[bool]:
        return self.read(vendor)["on"]

    def update(self, vendor: str, **changes: Any) -> None:
        state = self.read(vendor)
        state.update(changes)
        self.write(vendor, state)

    def stop(self) -> None:
        _stop(self.process)


@pytest.fixture(scope="session")
def snmpd_session(tmp_path_factory):
    if shutil.which("snmpd") is None and not Path("/usr/sbin/snmpd").exists():
        pytest.skip("net-snmp snmpd is not installed (apt-get install snmpd snmp)")
    agent = SnmpdAgent(tmp_path_factory.mktemp("snmpd"))
    try:
        yield agent
    finally:
        agent.stop()


@pytest.fixture
def snmpd(snmpd_session: SnmpdAgent) -> SnmpdAgent:
    """The session's snmpd with every outlet OFF and nothing frozen."""
    snmpd_session.reset()
    return snmpd_session


# --------------------------------------------------------------------------- snmpsim

RARITAN = "1.3.6.1.4.1.13742.6"
EATON = "1.3.6.1.4.1.534.6.6.7"
CPCARD = "1.3.6.1.4.1.3808.1.1.5"
SENTRY = "1.3.6.1.4.1.1718.3.2.3.1"
SIM_OUTLETS = 4


def snmprec_records() -> list[tuple[str, str, str]]:
    """Raritan PX2 (pdu 1), Eaton ePDU (unit 0), CyberPower RMCARD205 and Sentry3 (tower 1, infeed 1)."""
    rec: list[tuple[str, str, str]] = [
        ("1.3.6.1.2.1.1.5.0", "4", "snmpsim-pdus"),
        (f"{RARITAN}.3.2.2.1.4.1", "2", str(SIM_OUTLETS)),
        (f"{EATON}.1.2.1.22.0", "2", str(SIM_OUTLETS)),
    ]
    for n in range(1, SIM_OUTLETS + 1):
        rec += [
            (f"{RARITAN}.3.5.3.1.3.1.{n}", "4", f"px2-{n}"),
            (f"{RARITAN}.4.1.2.1.2.1.{n}", "2:outletsim", "raritan:ctl"),
            (f"{RARITAN}.4.1.2.1.3.1.{n}", "2:outletsim", "raritan:state"),
            (f"{EATON}.6.1.1.3.0.{n}", "4", f"eaton-{n}"),
            (f"{EATON}.6.6.1.2.0.{n}", "2:outletsim", "eaton:state"),
            (f"{EATON}.6.6.1.3.0.{n}", "2:outletsim", "eaton:off"),
            (f"{EATON}.6.6.1.4.0.{n}", "2:outletsim", "eaton:on"),
            (f"{EATON}.6.6.1.5.0.{n}", "2:outletsim", "eaton:reboot"),
            (f"{CPCARD}.6.3.1.2.{n}", "4", f"card-{n}"),
            (f"{CPCARD}.6.3.1.3.{n}", "2:outletsim", "cpcard:state"),
            (f"{CPCARD}.6.5.1.3.{n}", "2:outletsim", "cpcard:ctl"),
            (f"{SENTRY}.3.1.1.{n}", "4", f"sentry-{n}"),
            (f"{SENTRY}.5.1.1.{n}", "2:outletsim", "sentry:state"),
            (f"{SENTRY}.11.1.1.{n}", "2:outletsim", "sentry:ctl"),
        ]
    return sorted(rec, key=lambda r: tuple(int(p) for p in r[0].split(".")))


class SnmpsimAgent:
    def __init__(self, workdir: Path, command: str) -> None:
        self.port = free_udp_port()
        self.hostname = f"127.0.0.1:{self.port}"
        data = workdir / "data"
        data.mkdir()
        text = "".join(f"{oid}|{tag}|{value}\n" for oid, tag, value in snmprec_records())
        (data / "private.snmprec").write_text(text)  # community "private" (v1/v2c)
        (workdir / "cache").mkdir()
        self.log = workdir / "snmpsim.log"
        env = {**os.environ, "SNMPSIM_ALLOW_ROOT": "true"}
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [command, f"--data-dir={data}", f"--agent-udpv4-endpoint=127.0.0.1:{self.port}",
                 f"--cache-dir={workdir / 'cache'}", f"--variation-modules-dir={VARIATIONS}"],
                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        try:
            _probe("raritan_px2", {"hostname": self.hostname, "version": "2c"}, time.monotonic() + 20)
        except Exception:
            self.stop()
            raise

    def stop(self) -> None:
        _stop(self.process)


@pytest.fixture(scope="session")
def snmpsim(tmp_path_factory):
    command = shutil.which("snmpsim-command-responder") or str(Path(sys.executable).with_name(
        "snmpsim-command-responder"))
    if not Path(command).exists():
        pytest.skip("snmpsim is not installed (pip install snmpsim pysmi)")
    try:
        import pysmi  # noqa: F401 - snmpsim needs it and does not declare it
    except ImportError:
        pytest.skip("snmpsim needs pysmi, which is not installed (pip install pysmi)")
    agent = SnmpsimAgent(tmp_path_factory.mktemp("snmpsim"), command)
    try:
        yield agent
    finally:
        agent.stop()


# --------------------------------------------------------------------------- per-test hygiene


@pytest.fixture(autouse=True)
async def _close_snmp_engine():
    """Each test has its own event loop; close that loop's SnmpEngine before the loop goes."""
    yield
    from valve_console.drivers.pdu.snmp import close_engines

    await close_engines()


class DelayProxy:
    """A UDP relay in front of an agent that can hold every request back (a slow PDU)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.delay = 0.0
        self.client: tuple[str, int] | None = None
        self.front: asyncio.DatagramTransport | None = None
        self.back: asyncio.DatagramTransport | None = None

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        proxy = self

        class Front(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                proxy.client = addr
                if proxy.delay:
                    loop.call_later(proxy.delay, proxy._forward, data)
                else:
                    proxy._forward(data)

        class Back(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                if proxy.front is not None and proxy.client is not None:
                    proxy.front.sendto(data, proxy.client)

        self.front, _ = await loop.create_datagram_endpoint(Front, local_addr=("127.0.0.1", 0))
        self.back, _ = await loop.create_datagram_endpoint(Back, remote_addr=self.target)
        return self.front.get_extra_info("sockname")[1]

    def _forward(self, data: bytes) -> None:
        if self.back is not None and not self.back.is_closing():
            self.back.sendto(data)

    def close(self) -> None:
        for transport in (self.front, self.back):
            if transport is not None:
                transport.close()
        self.front = self.back = None


@pytest.fixture(params=["ber", "pysnmp"])
def snmp_engine(request, monkeypatch):
    """Run a test once with the built-in BER codec and once with pysnmp (engine "auto" picks this one)."""
    from valve_console.drivers.pdu.snmp import client as snmp_client

    monkeypatch.setattr(snmp_client, "DEFAULT_ENGINE", request.param)
    return request.param
