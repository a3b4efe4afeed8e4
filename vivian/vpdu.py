"""Vivian's virtual PDU: an asyncio TCP server speaking the seed's vPDU protocol.

Protocol (one command per connection): the client sends ONE 32-bit big-endian word and gets ONE
byte back, then the server closes the connection.

    bits 0-1   (0x0003)      command: 0 = port count, 1 = ON, 2 = OFF, 3 = status
    bits 2-12  (0x1FFC)      port number, so word = (port << 2) | cmd
    bit  13    (0x2000)      "shutdown server" flag (honoured only with --allow-remote-shutdown)
    bit  14    (0x4000)      "power report" (metering extension, below)
    bits 15-31 (0xFFFF8000)  reserved, must be 0

Replies: port count as one byte (saturated at 255); 0x01 for a successful ON/OFF; 0x03 ON, 0x04 OFF,
0x05 unknown for a status; 0x00 for anything wrong (short read, reserved bits, bad port, refused
shutdown). Switching an outlet ON starts a simulated DUT process (``vivian/dut.py``) and switching
it OFF kills that process, like cutting power. With ``--dut qemu`` an outlet starts a QEMU virtual machine
instead (``vivian/qemu.py``, TCG): it network-boots from the gateway (see that module for the gateway
settings it needs) and its serial console goes to the netconsole; OFF kills QEMU the same way.

Metering extension (power report). The word ``0x00004000`` (bit 14 alone: port 0, command 0, no shutdown
flag) asks for every outlet's meter in one round trip. Answers:

    0x06, then a 32-bit big-endian length L (at most 1 MiB), then L bytes of ASCII text, lines ending "\n":
        vpdu-power 1
        <outlet> <watts> <amps> <volts> <energy_wh>     one line per outlet 0..N-1, in order
        total <watts> <energy_wh>                       the sums over all outlets
    0x07  this vPDU does not meter (started with --no-metering)
    0x00  bit 14 with anything else set (an older vPDU also answers 0x00: it knows no power report)

Watts, amps and volts are the outlet's reading now, energy_wh its cumulative counter (Wh, since the vPDU
started; it never decreases). Each outlet follows its DUT's phase (``vivian/power.py``): OFF 0 W, then
firmware ~30-45 W, boot ~60-90 W (spiky), idle ~25-35 W, a job's work ~90-140 W, a hung DUT one flat level;
an outlet with nothing plugged in (``--empty-outlet N``) draws 0 W but is still metered. Volts ~230, amps
= W / V. ``--power-seed S`` makes the noise deterministic. Try it: ``python vivian/client.py --power``.

Run it: ``python vivian/vpdu.py --port 9191 --api http://127.0.0.1:8000 --console 127.0.0.1:8100``.

With ``--snmp-port P`` the vPDU also answers SNMP on UDP port P as an APC MasterSwitch (driver
``apc_masterswitch``; communities ``public`` read-only and ``private`` read-write): Debian's
``snmpd`` runs with ``vivian/snmp_agent.py`` as its pass_persist helper. APC outlet N is vPDU outlet N-1.
A metering vPDU also serves APC's rPDU2 metered outlet table and device power/energy there (see that module).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import signal
import struct
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: ``python vivian/vpdu.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vivian.power import PHASES, PowerMeter, format_report, phase_by_time  # noqa: E402

log = logging.getLogger("vivian.vpdu")

CMD_COUNT, CMD_ON, CMD_OFF, CMD_STATUS = 0, 1, 2, 3
CMD_MASK = 0x0003
PORT_MASK = 0x1FFC
SHUTDOWN_FLAG = 0x2000
POWER_FLAG = 0x4000
RESERVED_MASK = 0xFFFF8000
MAX_PORTS = 2047

REPLY_ERROR = 0x00
REPLY_OK = 0x01
REPLY_ON = 0x03
REPLY_OFF = 0x04
REPLY_UNKNOWN = 0x05
REPLY_POWER = 0x06
REPLY_NOT_METERED = 0x07
METER_TICK = 0.5  # seconds between two integrations of the energy counters

READ_TIMEOUT = 5.0
KILL_GRACE = 2.0
DUT_SCRIPT = Path(__file__).resolve().with_name("dut.py")
QEMU_SCRIPT = Path(__file__).resolve().with_name("qemu.py")  # --dut qemu: a QEMU VM that network-boots


def outlet_mac(index: int) -> str:
    """MAC address of the DUT behind outlet ``index``: ``52:54:00:11:22:<index in hex>``.

    Outlets above 255 carry into the fifth byte (0x23, 0x24, ...) so every MAC stays valid and unique.
    """
    high, low = divmod(index, 256)
    return f"52:54:00:11:{0x22 + high:02x}:{low:02x}"


@dataclass
class RunningDut:
    """A DUT process powered by one outlet."""

    outlet: int
    mac: str
    process: asyncio.subprocess.Process
    log_path: Path | None
    started_at: float

    @property
    def pid(self) -> int:
        return self.process.pid


class VirtualPDU:
    """A virtual PDU with ``num_ports`` outlets (0..N-1), all OFF at start.

    Each outlet powers one simulated DUT; ``start()`` serves the vPDU protocol on TCP and ``stop()``
    closes the server and powers every DUT off.
    """

    def __init__(
        self,
        num_ports: int = 16,
        api: str = "http://127.0.0.1:8000",
        console: str = "127.0.0.1:8100",
        dut: str = "sim",
        dut_args: Sequence[str] = (),
        log_dir: str | os.PathLike[str] | None = None,
        *,
        allow_remote_shutdown: bool = False,
        metering: bool = True,
        power_seed: int | None = None,
        empty_outlets: Sequence[int] = (),
    ) -> None:
        if dut not in ("sim", "qemu"):
            raise ValueError(f"unknown DUT kind {dut!r}: use --dut sim or --dut qemu")
        if dut == "qemu" and shutil.which("qemu-system-x86_64") is None:
            raise ValueError("--dut qemu needs qemu-system-x86_64 (apt-get install qemu-system-x86 ipxe-qemu)")
        if not 1 <= num_ports <= MAX_PORTS:
            raise ValueError(f"num_ports must be between 1 and {MAX_PORTS}, not {num_ports}")
        self.num_ports = num_ports
        self.api = api
        self.console = console
        self.dut = dut
        self.dut_args = tuple(dut_args)
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.allow_remote_shutdown = allow_remote_shutdown
        self._on = [False] * num_ports
        self._duts: dict[int, RunningDut] = {}
        self._locks: dict[int, asyncio.Lock] = {}
        self._watchers: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._stopped = asyncio.Event()
        self._stopping = False
        self._shutdown_task: asyncio.Task[None] | None = None
        self.metering = metering
        self.empty_outlets = frozenset(empty_outlets)
        if any(not 0 <= i < num_ports for i in self.empty_outlets):
            raise ValueError(f"an empty outlet must be between 0 and {num_ports - 1}")
        self._phase_dir: Path | None = None
        self.meter = PowerMeter(num_ports, self.phase_of, power_seed) if metering else None
        self._meter_task: asyncio.Task[None] | None = None

    # -- outlets -------------------------------------------------------------------------------

    def state(self, index: int) -> bool:
        """True if outlet ``index`` is ON."""
        self._check(index)
        return self._on[index]

    @property
    def running_duts(self) -> dict[int, RunningDut]:
        """The DUT processes currently alive, by outlet."""
        return {i: d for i, d in self._duts.items() if d.process.returncode is None}

    async def set_outlet(self, index: int, on: bool) -> None:
        """Switch outlet ``index`` ON (start its DUT) or OFF (kill its DUT). No-op if already there."""
        self._check(index)
        lock = self._locks.setdefault(index, asyncio.Lock())
        async with lock:
            if on and not self._on[index]:
                self._meter_update()  # the counters up to the switch, at the old draw
                if index not in self.empty_outlets:
                    await self._power_on(index)
                self._on[index] = True
                self._meter_update()
            elif not on and self._on[index]:
                self._meter_update()
                self._on[index] = False
                await self._power_off(index)
                self._meter_update()

    # -- metering ------------------------------------------------------------------------------

    def _meter_update(self) -> None:
        if self.meter is not None:
            self.meter.update()

    def _phase_file(self, index: int) -> Path | None:
        return None if self._phase_dir is None else self._phase_dir / f"outlet-{index}.phase"

    def phase_of(self, index: int) -> str:
        """What the DUT behind outlet ``index`` does now (a ``vivian.power.PHASES`` word)."""
        if not self._on[index]:
            return "off"
        dut = self._duts.get(index)
        if dut is None or dut.process.returncode is not None:  # nothing plugged in, or the DUT is gone
            return "off"
        path = self._phase_file(index)
        if path is not None and self.dut == "sim":
            try:
                word = path.read_text(errors="replace")[:16].strip()
            except OSError:
                word = ""
            if word in PHASES and word != "off":
                return word
        return phase_by_time(time.monotonic() - dut.started_at)

    def power_report(self) -> str | None:
        """The power report's text (see the module docstring), or None when this vPDU does not meter."""
        if self.meter is None:
            return None
        return format_report(self.meter.read())

    async def _meter_loop(self) -> None:
        while True:
            await asyncio.sleep(METER_TICK)
            try:
                self._meter_update()
            except Exception:  # a meter must never take the vPDU down
                log.exception("power meter update failed")

    def _check(self, index: int) -> None:
        if not 0 <= index < self.num_ports:
            raise IndexError(f"outlet {index} out of range 0..{self.num_ports - 1}")

    async def _power_on(self, index: int) -> None:
        mac = outlet_mac(index)
        cmd = [
            sys.executable,
            str(DUT_SCRIPT),
            "--mac",
            mac,
            "--api",
            self.api,
            "--console",
            self.console,
            *self.dut_args,
        ]
        if self.metering and self.dut == "sim":  # the DUT tells its phase through a small file
            if self._phase_dir is None:
                self._phase_dir = Path(tempfile.mkdtemp(prefix="vpdu-phases-"))
            phase_file = self._phase_file(index)
            assert phase_file is not None
            phase_file.unlink(missing_ok=True)
            cmd += ["--phase-file", str(phase_file)]
        if self.dut == "qemu":  # qemu.py sets PDEATHSIG, then execs QEMU in the DUT's process group
            cmd[1:2] = [str(QEMU_SCRIPT), "--outlet", str(index)]
        log_path: Path | None = None
        out = asyncio.subprocess.DEVNULL
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            stamp = time.strftime("%Y%m%d-%H%M%S")
            log_path = self.log_dir / f"dut-{mac.replace(':', '')}-{stamp}.log"
            out = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            process = await asyncio.create_subprocess_exec(
                *cmd, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
            )
        finally:
            if log_path is not None:
                os.close(out)
        dut = RunningDut(index, mac, process, log_path, time.monotonic())
        self._duts[index] = dut
        log.info("outlet %d ON: started DUT %s (pid %d)", index, mac, process.pid)
        task = asyncio.create_task(self._watch(dut))
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    async def _watch(self, dut: RunningDut) -> None:
        """Note in the log a DUT that exits while its outlet is still ON (power stays on)."""
        rc = await dut.process.wait()
        if self._duts.get(dut.outlet) is dut and self._on[dut.outlet]:
            log.warning(
                "outlet %d: DUT %s (pid %d) exited by itself with code %s; the outlet stays ON",
                dut.outlet,
                dut.mac,
                dut.pid,
                rc,
            )

    async def _power_off(self, index: int) -> None:
        dut = self._duts.pop(index, None)
        if dut is None:
            return
        await _kill_group(dut.process)
        path = self._phase_file(index)
        if path is not None:
            path.unlink(missing_ok=True)
        log.info("outlet %d OFF: DUT %s (pid %d) stopped", index, dut.mac, dut.pid)

    # -- server --------------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 9191) -> int:
        """Listen on ``host:port`` (0 picks a free port) and return the bound port."""
        if self._server is not None:
            raise RuntimeError("this vPDU is already started")
        self._server = await asyncio.start_server(self._handle, host, port)
        if self.meter is not None:
            self._meter_update()
            self._meter_task = asyncio.create_task(self._meter_loop())
        bound: int = self._server.sockets[0].getsockname()[1]
        log.info("vPDU listening on %s:%d with %d outlets", host, bound, self.num_ports)
        return bound

    async def stop(self) -> None:
        """Stop serving and power every outlet off, waiting for the DUT processes to end."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        if self._server is not None:
            self._server.close()
        await asyncio.gather(*(self.set_outlet(i, False) for i in range(self.num_ports) if self._on[i]))
        for task in list(self._watchers):
            task.cancel()
        if self._meter_task is not None:
            self._meter_task.cancel()
        if self._phase_dir is not None:
            shutil.rmtree(self._phase_dir, ignore_errors=True)
            self._phase_dir = None
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
        self._stopped.set()

    async def wait_stopped(self) -> None:
        """Wait until ``stop()`` has finished (for example after a remote shutdown)."""
        await self._stopped.wait()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        shutdown = False
        try:
            try:
                data = await asyncio.wait_for(reader.readexactly(4), READ_TIMEOUT)
            except asyncio.IncompleteReadError as exc:
                log.warning("short read from %s: %d byte(s) %r", peer, len(exc.partial), exc.partial)
                answer = bytes([REPLY_ERROR])
            except TimeoutError:
                log.warning("no complete command from %s within %.0f s", peer, READ_TIMEOUT)
                answer = bytes([REPLY_ERROR])
            else:
                word = struct.unpack(">I", data)[0]
                if word & POWER_FLAG:
                    answer = self._power_answer(word, peer)
                else:
                    reply, shutdown = await self._execute(word, peer)
                    answer = bytes([reply])
            writer.write(answer)
            await writer.drain()
        except Exception:  # a client must never take the server down
            log.exception("error while serving %s", peer)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        if shutdown:
            log.info("remote shutdown requested by %s", peer)
            self._shutdown_task = asyncio.create_task(self.stop())

    def _power_answer(self, word: int, peer: object) -> bytes:
        """The answer to a power report request (the module docstring has the format)."""
        if word != POWER_FLAG:
            log.warning("bad word 0x%08x from %s: the power report is 0x%08x alone", word, peer, POWER_FLAG)
            return bytes([REPLY_ERROR])
        report = self.power_report()
        if report is None:
            return bytes([REPLY_NOT_METERED])
        body = report.encode("ascii")
        return bytes([REPLY_POWER]) + struct.pack(">I", len(body)) + body

    async def _execute(self, word: int, peer: object) -> tuple[int, bool]:
        """Run one command word; return the reply byte and whether to shut down afterwards."""
        if word & RESERVED_MASK:
            log.warning("bad word 0x%08x from %s: reserved bits set", word, peer)
            return REPLY_ERROR, False
        cmd = word & CMD_MASK
        index = (word & PORT_MASK) >> 2
        shutdown = bool(word & SHUTDOWN_FLAG)
        if shutdown and not self.allow_remote_shutdown:
            log.warning("refused shutdown word 0x%08x from %s (remote shutdown not allowed)", word, peer)
            return REPLY_ERROR, False
        if cmd == CMD_COUNT:
            return min(self.num_ports, 255), shutdown
        if index >= self.num_ports:
            log.warning("bad word 0x%08x from %s: outlet %d out of range 0..%d", word, peer, index, self.num_ports - 1)
            return REPLY_ERROR, False
        if cmd == CMD_STATUS:
            return (REPLY_ON if self._on[index] else REPLY_OFF), shutdown
        if self._stopping:
            log.warning("refused word 0x%08x from %s: the vPDU is stopping", word, peer)
            return REPLY_ERROR, False
        try:
            await self.set_outlet(index, cmd == CMD_ON)
        except Exception:
            log.exception("outlet %d: could not switch %s", index, "ON" if cmd == CMD_ON else "OFF")
            return REPLY_ERROR, False
        return REPLY_OK, shutdown


SNMP_AGENT = Path(__file__).resolve().with_name("snmp_agent.py")
APC_SUBTREE = ".1.3.6.1.4.1.318.1.1.4"
APC_RPDU2_SUBTREE = ".1.3.6.1.4.1.318.1.1.26"  # metering (rPDU2 objects); empty when the vPDU does not meter
SNMPD_START_TIMEOUT = 10.0


class SnmpFace:
    """Debian's snmpd on ``udp:host:port`` serving the APC MasterSwitch subtree through snmp_agent.py."""

    def __init__(self, host: str, port: int, vpdu_port: int) -> None:
        self.host, self.port, self.vpdu_port = host, port, vpdu_port
        self.process: asyncio.subprocess.Process | None = None
        self.dir: Path | None = None

    async def start(self) -> None:
        snmpd = shutil.which("snmpd") or next((p for p in ("/usr/sbin/snmpd",) if os.path.exists(p)), None)
        if snmpd is None:
            raise RuntimeError("snmpd is not installed (apt-get install snmpd)")
        self.dir = Path(tempfile.mkdtemp(prefix="vpdu-snmp-"))
        vpdu_host = "127.0.0.1" if self.host in ("0.0.0.0", "", "localhost") else self.host
        if vpdu_host == "::":
            vpdu_host = "::1"
        conf = self.dir / "snmpd.conf"
        conf.write_text(
            "rocommunity public default\n"
            "rwcommunity private default\n"
            "dontLogTCPWrappersConnects yes\n"
            f"pass_persist {APC_SUBTREE} {sys.executable} {SNMP_AGENT} --vpdu {vpdu_host}:{self.vpdu_port}\n"
            f"pass_persist {APC_RPDU2_SUBTREE} {sys.executable} {SNMP_AGENT} --vpdu {vpdu_host}:{self.vpdu_port}"
            f" --subtree {APC_RPDU2_SUBTREE}\n"
        )
        log_path = self.dir / "snmpd.log"
        log_path.touch()
        address = f"udp6:[{self.host}]:{self.port}" if ":" in self.host else f"udp:{self.host}:{self.port}"
        env = {**os.environ, "MIBS": "", "SNMP_PERSISTENT_DIR": str(self.dir / "persist")}
        self.process = await asyncio.create_subprocess_exec(
            snmpd, "-f", "-Lf", str(log_path), "-C", "-c", str(conf), "-p", str(self.dir / "snmpd.pid"), address,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            env=env, start_new_session=True,
        )
        deadline = time.monotonic() + SNMPD_START_TIMEOUT
        while True:
            text = log_path.read_text(errors="replace")
            if "NET-SNMP version" in text:
                return
            if self.process.returncode is not None or "Error opening specified endpoint" in text:
                await self.stop()
                reason = text.strip().splitlines()[-1] if text.strip() else "snmpd exited"
                raise RuntimeError(f"snmpd cannot serve {address}: {reason}")
            if time.monotonic() > deadline:
                await self.stop()
                raise RuntimeError(f"snmpd did not start on {address} within {SNMPD_START_TIMEOUT:g} s")
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self.process is not None:
            process, self.process = self.process, None
            await _kill_group(process)
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


async def _kill_group(process: asyncio.subprocess.Process) -> None:
    """SIGTERM the process group, SIGKILL it after KILL_GRACE seconds, then reap the process."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), KILL_GRACE)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
    await process.wait()


def _port_count(text: str) -> int:
    value = int(text)
    if not 1 <= value <= MAX_PORTS:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_PORTS}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Vivian's virtual PDU (vPDU protocol server).")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=9191, help="TCP port to listen on (default 9191)")
    p.add_argument("--num-ports", type=_port_count, default=16, help="number of outlets (1..2047)")
    p.add_argument("--api", default="http://127.0.0.1:8000", help="gateway API URL given to the DUTs")
    p.add_argument("--console", default="127.0.0.1:8100", help="gateway netconsole HOST:PORT for the DUTs")
    p.add_argument(
        "--dut",
        choices=("sim", "qemu"),
        default="sim",
        help="DUT behind each outlet: sim (vivian/dut.py) or qemu (vivian/qemu.py, a VM that network-boots)",
    )
    p.add_argument("--log-dir", help="write each DUT's stdout/stderr to a file in this directory")
    p.add_argument("--allow-remote-shutdown", action="store_true", help="honour the protocol's shutdown flag (bit 13)")
    p.add_argument(
        "--dut-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument passed to every DUT (repeatable), e.g. --dut-arg=--chatty=11520",
    )
    p.add_argument(
        "--snmp-port",
        type=int,
        metavar="P",
        help="also answer SNMP on UDP port P as an APC MasterSwitch (runs Debian's snmpd)",
    )
    p.add_argument(
        "--no-metering", action="store_true", help="do not meter power (the power report answers 'not metered')"
    )
    p.add_argument("--power-seed", type=int, metavar="S", help="deterministic meter noise from this seed (tests)")
    p.add_argument(
        "--empty-outlet",
        type=int,
        action="append",
        default=[],
        metavar="N",
        help="nothing is plugged into outlet N (repeatable): it switches, draws 0 W and is still metered",
    )
    p.add_argument("--log-level", default="INFO", help="logging level on stderr (default INFO)")
    return p


async def _serve(args: argparse.Namespace) -> int:
    try:
        pdu = VirtualPDU(
            args.num_ports,
            args.api,
            args.console,
            args.dut,
            args.dut_arg,
            args.log_dir,
            allow_remote_shutdown=args.allow_remote_shutdown,
            metering=not args.no_metering,
            power_seed=args.power_seed,
            empty_outlets=args.empty_outlet,
        )
    except ValueError as exc:
        print(f"vpdu: {exc}", file=sys.stderr)
        return 2
    try:
        port = await pdu.start(args.host, args.port)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        print(f"vpdu: cannot listen on {args.host}:{args.port}: {reason}", file=sys.stderr)
        return 2
    snmp: SnmpFace | None = None
    if args.snmp_port is not None:
        snmp = SnmpFace(args.host, args.snmp_port, port)
        try:
            await snmp.start()
        except RuntimeError as exc:
            print(f"vpdu: {exc}", file=sys.stderr)
            await pdu.stop()
            return 2
    loop = asyncio.get_running_loop()
    quit_requested = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, quit_requested.set)
    print(f"vPDU listening on {args.host}:{port} with {args.num_ports} outlets", flush=True)
    if snmp is not None:
        print(f"vPDU answering SNMP (APC MasterSwitch) on udp {args.host}:{args.snmp_port}", flush=True)
    quit_task = asyncio.create_task(quit_requested.wait())
    stopped_task = asyncio.create_task(pdu.wait_stopped())
    try:
        await asyncio.wait({quit_task, stopped_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if snmp is not None:
            await snmp.stop()
        await pdu.stop()
        quit_task.cancel()
        stopped_task.cancel()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return asyncio.run(_serve(args))


if __name__ == "__main__":
    sys.exit(main())
