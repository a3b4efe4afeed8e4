"""A simulated DUT (device under test), started by the vPDU when its outlet is switched ON.

It plays what a real DUT shows the gateway:

1. it connects by TCP to the gateway's netconsole (its "serial port", ttyS1) and prints firmware and
   kernel boot lines there, announcing ``SALAD.machine_id=<mac>``;
2. it registers like valve-infra's ``machine_registration``: a ``SALAD.ping``/``SALAD.pong`` check of
   the console, then ``POST <api>/api/v1/machine/`` (PATCH ``.../<mac>/`` on HTTP 400);
3. it then serves a tiny shell on the console (``echo``, ``uname -a``) and, with ``--chatty N``, keeps
   printing kernel-log lines at about N bytes per second.

It follows its boot config: on power-on it fetches ``<api>/boot/<mac>/boot.ipxe`` like iPXE. The
registration boot (or no answer) gives the behaviour above; a job's deployment is "booted" instead:
kernel lines with the command line received, then what the test hooks of that command line say:

- ``vivian.script=pass|fail|hang|reboot|garbage`` (default ``pass``): ``pass`` prints ``+ job output``
  lines, ``Execution is over, pipeline status: 0`` and ``It's now safe to turn off your computer``;
  ``fail`` the same with status 1; ``hang`` nothing more; ``reboot`` prints the reboot line once (the
  next boot of this DUT behaves like ``pass``); ``garbage`` prints binary garbage, then like ``pass``;
- ``vivian.delay=<seconds>``: wait before the script's output;
- ``vivian.lines=<N>``: how many numbered ``+ job output <n>`` lines ``pass``/``fail`` print (default 3);
- ``vivian.reboot_line=<text>``: the reboot line (``_`` for spaces; default ``vivian: reboot requested``);
- ``vivian.script=unfit`` prints one output line, then ``vivian: GPU lost: machine unfit for service`` and hangs.

Sgt. Hartman's boot loop (``machine_registration ... check`` in the command line) boots like a
registration, checks the console (ping/pong) and its record (``GET <api>/api/v1/machine/<mac>/``), then
prints valve-infra's ``Execution is over, pipeline status: 0|1`` and ``It's now safe to turn off your
computer``. ``--flaky N`` makes every Nth check of this DUT fail (counted per vPDU and MAC), so a
flaky machine does not qualify. The ``MaRS: Registration ...`` line ends with a bare ``\n`` (as
machine_registration writes it), so that valve-infra's ``^MaRS: Registration complete$`` matches.

With ``--phase-file PATH`` (the vPDU gives it when it meters) the DUT writes what it does, one word, into
PATH for its outlet's power profile (``vivian/power.py``): ``firmware``, ``boot``, ``idle`` (prompt, job
over), ``busy`` (a job's work: its delay, container and output) or ``hung`` (``vivian.script=hang``/``unfit``).

SIGTERM (power off) ends it at once with exit code 0.
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence

PROMPT = "/ # "
PONG = "SALAD.pong"
KERNEL = "6.1.0-vivian"
TAGS = ("virtio:pciid:0x1af4:0x1050", "virtio:family:VIRTIO")  # what gfxinfo finds on this "GPU"
UNAME = f"Linux vivian-dut {KERNEL} #1 SMP PREEMPT_DYNAMIC Thu Jan  1 00:00:00 UTC 2024 x86_64 GNU/Linux"
CONNECT_PATIENCE = 10.0
PONG_WAIT = 2.0
REGISTER_PATIENCE = 10.0
GREEN_OK = "[  \x1b[0;32mOK\x1b[0m  ]"


_phase_path: str | None = None
_phase = ""


def set_phase(phase: str) -> None:
    """Tell the vPDU's meter what this DUT does now (no-op without ``--phase-file``). Atomic, one word."""
    global _phase
    _phase = phase
    if _phase_path is None:
        return
    try:
        tmp = f"{_phase_path}.tmp"
        with open(tmp, "w") as handle:
            handle.write(phase + "\n")
        os.replace(tmp, _phase_path)
    except OSError as exc:  # the meter's trouble, never the DUT's
        _err(f"cannot write the phase file {_phase_path}: {exc}")


def _err(message: str) -> None:
    """Log a line on stderr (the vPDU sends it to the DUT's log file)."""
    print(f"dut: {message}", file=sys.stderr, flush=True)


class Console:
    """The DUT's serial console: a TCP connection to the gateway's netconsole.

    Output uses "\\r\\n" line ends. Without a connection, output goes to stderr instead; once a
    connection is lost, output is dropped (like a serial cable pulled out).
    """

    def __init__(self) -> None:
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.ever_connected = False
        self.pong = asyncio.Event()
        self.shell_active = False
        self._line = ""
        self._held = ""  # echo held back while the input may still become "SALAD.pong"
        self._last_cr = False
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._reader_task: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self.writer is not None and not self.writer.is_closing()

    async def connect(self, address: str, patience: float = CONNECT_PATIENCE) -> bool:
        """Connect to ``HOST:PORT``, retrying for up to ``patience`` seconds."""
        host, _, port = address.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        deadline = time.monotonic() + patience
        while True:
            try:
                self.reader, self.writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 2.0)
                break
            except (OSError, TimeoutError, ValueError) as exc:
                if time.monotonic() >= deadline:
                    _err(f"console {address} unreachable ({exc}); printing to stderr")
                    return False
                await asyncio.sleep(0.2)
        self.ever_connected = True
        self._reader_task = asyncio.create_task(self._read_loop())
        return True

    def write_raw(self, data: bytes) -> None:
        if self.connected:
            assert self.writer is not None
            try:
                self.writer.write(data)
            except (OSError, RuntimeError):
                self._lost()
        elif not self.ever_connected:
            sys.stderr.write(data.decode("utf-8", "replace"))
            sys.stderr.flush()

    def write(self, text: str) -> None:
        """Write text, turning every line end into "\\r\\n"."""
        self.write_raw(text.replace("\r\n", "\n").replace("\n", "\r\n").encode())

    async def drain(self) -> None:
        if self.connected:
            assert self.writer is not None
            try:
                await self.writer.drain()
            except (OSError, RuntimeError):
                self._lost()

    async def print(self, line: str) -> None:
        """Print one line and wait until it is sent."""
        self.write(line + "\n")
        await self.drain()

    def _lost(self) -> None:
        if self.writer is not None:
            _err("console connection lost; output is dropped from now on")
            self.writer.close()
            self.writer = None

    async def _read_loop(self) -> None:
        assert self.reader is not None
        while True:
            try:
                data = await self.reader.read(4096)
            except (OSError, RuntimeError):
                data = b""
            if not data:
                self._lost()
                return
            for ch in self._decoder.decode(data):
                self._feed(ch)

    def start_shell(self) -> None:
        """Show the prompt and start answering input lines."""
        self.shell_active = True
        self._line = self._held = ""
        self.write(PROMPT)

    def _feed(self, ch: str) -> None:
        """Take one input character: echo it (in the shell) and act on complete lines."""
        if ch in "\r\n":
            if ch == "\n" and self._last_cr:
                self._last_cr = False
                return
            self._last_cr = ch == "\r"
            line, held = self._line, self._held
            self._line = self._held = ""
            self._on_line(line, held)
            return
        self._last_cr = False
        if ch in "\x7f\b":
            if self._line:
                self._line = self._line[:-1]
                if self._held:
                    self._held = self._held[:-1]
                elif self.shell_active:
                    self.write("\b \b")
            return
        if ch == "\x03":
            if self.shell_active:
                self.write("^C\n" + PROMPT)
            self._line = self._held = ""
            return
        if ch < " " and ch != "\t":
            return
        self._line += ch
        if not self.shell_active:
            return
        if self._held == self._line[:-1] and PONG.startswith(self._line):
            self._held = self._line
        else:
            self.write(self._held + ch)
            self._held = ""

    def _on_line(self, line: str, held: str) -> None:
        if line.strip() == PONG:
            self.pong.set()
            return
        if not self.shell_active:
            return
        self.write(held + "\n")
        answer = shell_answer(line.strip())
        if answer is not None:
            self.write(answer + "\n")
        self.write(PROMPT)


def shell_answer(command: str) -> str | None:
    """What the tiny shell prints for one command line (None: nothing)."""
    if not command or command == "SALAD.ping":
        return None
    words = command.split(None, 1)
    if words[0] == "echo":
        return words[1] if len(words) > 1 else ""
    if words[0] == "uname":
        return UNAME if command == "uname -a" else "Linux"
    return f"sh: {words[0]}: not found"


def default_ip(mac: str) -> str:
    """``10.42.0.<10 + last MAC byte>`` (carrying into the third byte past 255)."""
    high, low = divmod(10 + int(mac.split(":")[-1], 16), 256)
    return f"10.42.{high}.{low}"


def firmware_lines(mac: str, ip: str) -> list[str]:
    return [
        "SeaBIOS (version 1.16.3-debian-1.16.3-2)",
        "iPXE (https://ipxe.org) 00:03.0 CA00 PCI2.10 PnP PMM+7EFCB0A0+7EF0B0A0 CA00",
        "Booting from ROM...",
        "iPXE initialising devices...ok",
        "iPXE 1.21.1 -- Open Source Network Boot Firmware -- https://ipxe.org",
        "Features: DNS HTTP HTTPS iSCSI TFTP VLAN ELF MBOOT PXE bzImage Menu PXEXT",
        f"net0: {mac} using virtio-net on 0000:00:03.0 (Ethernet) [open]",
        f"Configuring (net0 {mac})...... ok",
        f"net0: {ip}/255.255.255.0 gw 10.42.0.1",
        f"SALAD.machine_id={mac}",
        f"http://10.42.0.1/boot/{mac}/boot.ipxe... ok",
        "http://10.42.0.1/files/kernel... ok",
        "http://10.42.0.1/files/initramfs.cpio.xz... ok",
    ]


def kernel_lines(mac: str, ip: str) -> list[str]:
    log = [
        (
            0.0,
            (
                f"Linux version {KERNEL} (vivian@builder) (gcc (Debian 12.2.0-14) 12.2.0, "
                f"GNU ld (GNU Binutils for Debian) 2.40) #1 SMP PREEMPT_DYNAMIC"
            ),
        ),
        (
            0.0,
            (
                'Command line: b2c.container="-ti docker://registry.freedesktop.org/mupuf/valve-infra/'
                'machine_registration:latest register" b2c.ntp_peer=10.42.0.1 b2c.cache_device=none '
                f"console=ttyS1,115200 SALAD.machine_id={mac}"
            ),
        ),
        (0.0, "DMI: QEMU Standard PC (Q35 + ICH9, 2009), BIOS 1.16.3-debian-1.16.3-2 04/01/2014"),
        (0.004113, "Memory: 1982332K/2096632K available (16384K kernel code)"),
        (0.151022, "smpboot: CPU0: Vivian Virtual CPU @ 2.00GHz (family: 0x6, model: 0x55)"),
        (0.402871, "PCI: Using configuration type 1 for base access"),
        (0.611345, "Serial: 8250/16550 driver, 4 ports, IRQ sharing enabled"),
        (0.612009, "00:05: ttyS1 at I/O 0x2f8 (irq = 3, base_baud = 115200) is a 16550A"),
        (0.734551, "virtio_net virtio0 eth0: renamed from enp0s3"),
        (0.901230, "[drm] pci: virtio-vga detected at 0000:00:01.0"),
        (0.955871, "[drm] Initialized virtio_gpu 0.1.0 0 for 0000:00:01.0 on minor 0"),
        (1.104532, "Freeing unused kernel image (initmem) memory: 2048K"),
        (1.201877, "Run /init as init process"),
    ]
    lines = [f"[{t:12.6f}] {text}" for t, text in log]
    lines += [
        f"{GREEN_OK} Started Journal Service.",
        f"{GREEN_OK} Reached target Network.",
        f"+ b2c: eth0 is up, address {ip}",
        "+ b2c: running machine_registration register",
    ]
    return lines


async def boot(console: Console, mac: str, ip: str, delay: float) -> None:
    """Print the firmware and kernel boot log, one line every ``delay`` seconds."""
    set_phase("firmware")
    for line in firmware_lines(mac, ip):
        await console.print(line)
        if delay > 0:
            await asyncio.sleep(delay)
    set_phase("boot")
    for line in kernel_lines(mac, ip):
        await console.print(line)
        if delay > 0:
            await asyncio.sleep(delay)


def _http(method: str, url: str, body: dict[str, object], timeout: float = 5.0) -> int:
    """Send JSON and return the HTTP status (also for 4xx/5xx). Proxies are never used."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with opener.open(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def post_registration(api: str, body: dict[str, object], patience: float = REGISTER_PATIENCE) -> bool:
    """POST the machine to ``<api>/api/v1/machine/`` (PATCH on 400); retry connection errors."""
    url = api.rstrip("/") + "/api/v1/machine/"
    deadline = time.monotonic() + patience
    while True:
        try:
            status = _http("POST", url, body)
            if status == 400:
                _err("POST answered 400; trying PATCH")
                status = _http("PATCH", f"{url}{body['mac_address']}/", body)
            _err(f"registration answered HTTP {status}")
            return 200 <= status < 300
        except (urllib.error.URLError, OSError) as exc:
            if time.monotonic() >= deadline:
                _err(f"registration failed: {exc}")
                return False
            time.sleep(0.25)


async def register(console: Console, mac: str, ip: str, api: str, base_name: str = "virtio") -> bool:
    """Find the console by ping/pong, then register with the gateway's API."""
    if console.connected:
        console.pong.clear()
        await console.print("\nSALAD.ping")
        try:
            await asyncio.wait_for(console.pong.wait(), PONG_WAIT)
            await console.print(f"SALAD.machine_id={mac}")
        except TimeoutError:
            await console.print("The configured console is not connected to SALAD")
    else:
        _err("no console: ttyS1 is not connected to SALAD")
    body: dict[str, object] = {
        "base_name": base_name,
        "tags": list(TAGS),
        "mac_address": mac,
        "ip_address": ip,
        "local_tty_device": "ttyS1",
    }
    ok = await asyncio.to_thread(post_registration, api, body)
    console.write_raw(("MaRS: Registration complete" if ok else "MaRS: Registration failed").encode() + b"\n")
    await console.drain()
    return ok


def fetch_record(api: str, mac: str, timeout: float = 5.0) -> dict[str, object] | None:
    """The gateway's record of this machine (None: unreachable or unknown)."""
    url = f"{api.rstrip('/')}/api/v1/machine/{mac}/"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            data = json.loads(response.read().decode("utf-8", "replace"))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        _err(f"no machine record from {url}: {exc}")
        return None
    return data if isinstance(data, dict) else None


def record_mismatches(record: dict[str, object], local: dict[str, object]) -> list[str]:
    """``machine_registration check``'s comparison: each local value against the gateway's record, lists
    as sets and types that must match, one ``Mismatch for '<key>': <local> vs the expected <db>`` each."""
    problems = []
    for key, value in local.items():
        expected = record.get(key)
        if isinstance(value, list) and isinstance(expected, list):
            same = set(value) == set(expected)
        else:
            same = type(value) is type(expected) and value == expected
        if not same:
            problems.append(f"Mismatch for '{key}': {value} vs the expected {expected}")
    return problems


def _count_check(mac: str) -> int:
    """This DUT's check boots so far, this one included (kept per vPDU and MAC, like the reboot marker)."""
    path = _reboot_marker(mac).replace("reboot-", "checks-")
    try:
        with open(path) as handle:
            count = int(handle.read().strip() or 0)
    except (OSError, ValueError):
        count = 0
    count += 1
    with open(path, "w") as handle:
        handle.write(f"{count}\n")
    return count


async def check(console: Console, mac: str, ip: str, api: str, cmdline: str, flaky: int,
                base_name: str = "virtio") -> bool:
    """``machine_registration check``: Sgt. Hartman's boot loop. True when everything matched."""
    set_phase("firmware")
    for line in firmware_lines(mac, ip):
        await console.print(line)
    set_phase("boot")
    for line in (
        f"[    0.000000] Linux version {KERNEL} (vivian@builder) #1 SMP PREEMPT_DYNAMIC",
        f"[    0.000000] Command line: {cmdline}",
        "[    1.201877] Run /init as init process",
        f"+ b2c: eth0 is up, address {ip}",
        "+ b2c: running machine_registration check",
    ):
        await console.print(line)
    problems: list[str] = []
    if console.connected:
        console.pong.clear()
        await console.print("\nSALAD.ping")
        try:
            await asyncio.wait_for(console.pong.wait(), PONG_WAIT)
        except TimeoutError:  # bare "\n", like the MaRS lines: valve-infra's job_warn pattern ends in "$"
            console.write_raw(b"The configured console is not connected to SALAD\n")
            await console.drain()
    else:
        problems.append("the console is not connected")
    record = await asyncio.to_thread(fetch_record, api, mac)
    if record is None:
        problems.append("the gateway does not know this machine")
    else:
        problems += record_mismatches(record, {"base_name": base_name, "tags": list(TAGS), "mac_address": mac,
                                               "ip_address": ip})
    count = _count_check(mac)
    if flaky > 0 and count % flaky == 0:
        problems.append(f"vivian: flaky DUT: check {count} fails (every {flaky})")
    for problem in problems:
        await console.print(problem)
    if not problems:
        await console.print("No differences found!")
    await console.print(f"Execution is over, pipeline status: {1 if problems else 0}")
    await console.print("It's now safe to turn off your computer")
    return not problems


async def chatty(console: Console, rate: int) -> None:
    """Print kernel-log-like lines at about ``rate`` bytes per second, in 20 chunks a second."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    sent = 0
    pending = b""
    n = 0
    while True:
        await asyncio.sleep(0.05)
        now = loop.time()
        due = int((now - start) * rate) - sent
        if due > rate:  # fell behind by more than a second (slow reader): do not burst
            start, sent, due = now - 0.05, 0, int(rate * 0.05)
        while len(pending) < due:
            n += 1
            pending += (
                f"[{now:12.6f}] vivian: periodic status {n}: eth0 rx {n * 1514} tx {n * 66} irq {n * 3}\r\n"
            ).encode()
        chunk, pending = pending[:due], pending[due:]
        sent += due
        if chunk:
            console.write_raw(chunk)
            await console.drain()


def fetch_boot_script(api: str, mac: str, timeout: float = 3.0,
                      report: Callable[[str], None] | None = _err) -> str | None:
    """The gateway's iPXE boot script for ``mac`` (what iPXE fetches), or None when there is no answer."""
    url = f"{api.rstrip('/')}/boot/{mac}/boot.ipxe?platform=pcbios&buildarch=x86_64"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            return response.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        if report is not None:
            report(f"no boot script from {url}: {exc}")
        return None


def kernel_cmdline(script: str) -> str | None:
    """The kernel command line of an iPXE script's ``kernel`` line (None: no such line)."""
    for line in script.splitlines():
        words = line.split(None, 2)
        if words and words[0] == "kernel":
            rest = words[2] if len(words) > 2 else ""
            rest = rest.removeprefix("initrd=initrd").strip()
            return rest.replace("${semicolon:string}", ";")
    return None


def fetch_boot_cmdline(api: str, mac: str, timeout: float = 3.0) -> str | None:
    """The kernel command line of the DUT's iPXE boot script, or None when there is no answer."""
    script = fetch_boot_script(api, mac, timeout)
    return None if script is None else kernel_cmdline(script)


def is_registration(cmdline: str) -> bool:
    return "machine_registration" in cmdline or " register" in cmdline


def registration_mode(cmdline: str) -> str | None:
    """``register`` or ``check`` for a machine_registration boot, None for a job's own deployment."""
    if not is_registration(cmdline):
        return None
    for word in cmdline.replace('"', " ").split():
        if word in ("register", "check"):
            return word
    return "register"


def boot_hooks(cmdline: str) -> dict[str, str]:
    """``vivian.<name>=<value>`` words of a kernel command line."""
    hooks = {}
    for word in cmdline.split():
        if word.startswith("vivian.") and "=" in word:
            name, _, value = word[7:].partition("=")
            hooks[name] = value
    return hooks


def _reboot_marker(mac: str) -> str:
    import tempfile

    directory = os.environ.get("VIVIAN_STATE_DIR") or os.path.join(tempfile.gettempdir(), f"vivian-{os.getuid()}")
    os.makedirs(directory, exist_ok=True)
    # one vPDU (our parent) is one virtual farm: its DUTs' state is not another farm's
    return os.path.join(directory, f"reboot-{os.getppid()}-{mac.replace(':', '')}")


async def deploy(console: Console, mac: str, ip: str, cmdline: str, delay: float) -> None:
    """Boot a job's deployment and run its ``vivian.script``."""
    set_phase("firmware")
    for line in firmware_lines(mac, ip):
        await console.print(line)
        if delay > 0:
            await asyncio.sleep(delay)
    set_phase("boot")
    for line in (
        f"[    0.000000] Linux version {KERNEL} (vivian@builder) #1 SMP PREEMPT_DYNAMIC",
        f"[    0.000000] Command line: {cmdline}",
        "[    1.201877] Run /init as init process",
        f"+ b2c: eth0 is up, address {ip}",
    ):
        await console.print(line)
    hooks = boot_hooks(cmdline)
    script = hooks.get("script", "pass")
    try:
        pause = float(hooks.get("delay", "0"))
    except ValueError:
        pause = 0.0
    set_phase("hung" if script == "hang" else "busy")
    if pause > 0:
        await asyncio.sleep(min(pause, 3600))
    if script == "reboot":
        marker = _reboot_marker(mac)
        if os.path.exists(marker):
            os.unlink(marker)
            script = "pass"
        else:
            with open(marker, "w") as handle:
                handle.write("reboot pending\n")
            await console.print(hooks.get("reboot_line", "vivian:_reboot_requested").replace("_", " "))
            return
    elif os.path.exists(_reboot_marker(mac)):  # the boot after a reboot runs another script: consumed
        os.unlink(_reboot_marker(mac))
    if script == "hang":
        set_phase("hung")
        return
    if script == "unfit":
        await console.print("+ job output 1")
        await console.print("vivian: GPU lost: machine unfit for service")
        set_phase("hung")
        return
    if script == "garbage":
        console.write_raw(bytes(range(256)) + b"\xff\xfe\x00\x1b[999;999H\xc3\x28" + os.urandom(512) + b"\r\n")
        await console.drain()
        script = "pass"
    status = 1 if script == "fail" else 0
    try:
        count = max(0, min(int(hooks.get("lines", "3")), 100_000))
    except ValueError:
        count = 3
    await run_container(console, cmdline, hooks)
    for n in range(1, count + 1):
        await console.print(f"+ job output {n}")
    await console.print(f"Execution is over, pipeline status: {status}")
    await console.print("It's now safe to turn off your computer")
    set_phase("idle")


# ------------------------------------------------------------------ boot2container and the job share
# What a valve-infra job's deployment expects of b2c (valve-infra.md §1.4, §4): the container named by
# ``b2c.container="..."`` is "pulled" and "run"; a deqp-runner command prints what its watchdog patterns
# follow. The job share (backend/share.py) is reached over HTTP with the job's ``job_share_url``:
# - ``vivian.share=<job_share_url>``: the share's base URL;
# - ``vivian.share_put=NAME:TEXT``: PUT TEXT (``_`` for spaces) as NAME;
# - ``vivian.share_echo=SRC:DST``: GET SRC, PUT DST = ``vivian read SRC: <its text>``.


def b2c_container(cmdline: str) -> str | None:
    """The ``b2c.container`` argument of a command line (quotes removed), or None."""
    import shlex

    try:
        words = shlex.split(cmdline)
    except ValueError:
        return None
    for word in words:
        if word.startswith("b2c.container="):
            return word[len("b2c.container=") :]
    return None


def share_request(method: str, url: str, data: bytes | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    """(HTTP status, body) of a share request; proxies are never used."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/octet-stream")
    try:
        with opener.open(request, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


async def share_hooks(console: Console, hooks: dict[str, str]) -> None:
    """Run the ``vivian.share_*`` hooks against ``vivian.share``; each step is one console line."""
    base = hooks.get("share", "").rstrip("/")
    if not base:
        return
    steps: list[tuple[str, str, str]] = []  # (source to read or "", destination, text)
    if "share_echo" in hooks:
        src, _, dst = hooks["share_echo"].partition(":")
        steps.append((src, dst or "results.txt", ""))
    if "share_put" in hooks:
        name, _, text = hooks["share_put"].partition(":")
        steps.append(("", name, text.replace("_", " ")))
    for src, dst, text in steps:
        try:
            if src:
                status, body = await asyncio.to_thread(share_request, "GET", f"{base}/{src}")
                if status != 200:
                    await console.print(f"+ vivian: share GET {src}: HTTP {status} {body[:200]!r}")
                    continue
                await console.print(f"+ vivian: share GET {src}: {len(body)} bytes")
                text = f"vivian read {src}: {body.decode('utf-8', 'replace')}"
            status, body = await asyncio.to_thread(share_request, "PUT", f"{base}/{dst}", text.encode())
            await console.print(f"+ vivian: share PUT {dst}: HTTP {status}")
        except (urllib.error.URLError, OSError, ValueError) as exc:
            await console.print(f"+ vivian: share unreachable: {exc}")


async def run_container(console: Console, cmdline: str, hooks: dict[str, str]) -> None:
    """b2c's lines for the job's container (if any), the share hooks, and deqp-runner's output."""
    container = b2c_container(cmdline)
    if container is not None:
        image = next((w for w in container.split() if "://" in w), "the image")
        await console.print(f"+ b2c: pulling the container image {image}")
        await console.print(f"+ b2c: running the container: {container}")
    await share_hooks(console, hooks)
    if container is not None and "deqp-runner" in container:
        await console.print("+ deqp-runner: starting")
        for n in range(1, 4):
            await console.print(f"Pass: {n * 100}, Fail: 0, Skip: {n * 10}, Duration: {n}s")
        await console.print("+ deqp-runner: done")


async def run(args: argparse.Namespace) -> None:
    """Boot (a job's deployment, or register), then serve the shell until killed."""
    global _phase_path
    _phase_path = args.phase_file
    set_phase("firmware")
    ip = args.ip or default_ip(args.mac)
    console = Console()
    await console.connect(args.console)
    cmdline = None if args.no_boot_config else await asyncio.to_thread(fetch_boot_cmdline, args.api, args.mac)
    mode = registration_mode(cmdline) if cmdline is not None else None
    if cmdline is not None and mode is None:
        await deploy(console, args.mac, ip, cmdline, args.boot_delay)
        if _phase == "busy":  # a reboot request: the job's work is over
            set_phase("idle")
        console.start_shell()
        await console.drain()
        await asyncio.Event().wait()
    if cmdline is not None and mode == "check":
        await check(console, args.mac, ip, args.api, cmdline, args.flaky, args.base_name)
        set_phase("idle")
        console.start_shell()
        await console.drain()
        await asyncio.Event().wait()
    await boot(console, args.mac, ip, args.boot_delay)
    if not args.no_register:
        await register(console, args.mac, ip, args.api, args.base_name)
    set_phase("idle")
    console.start_shell()
    await console.drain()
    if args.chatty:
        await chatty(console, args.chatty)
    await asyncio.Event().wait()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="A simulated DUT for Vivian.")
    p.add_argument("--mac", required=True, help="the DUT's MAC address (its machine id)")
    p.add_argument("--api", required=True, help="gateway API base URL, e.g. http://10.42.0.1")
    p.add_argument("--console", required=True, help="gateway netconsole HOST:PORT")
    p.add_argument("--ip", help="IP address to report (default 10.42.0.<10 + last MAC byte>)")
    p.add_argument("--base-name", default="virtio", help="GPU base name to register (default virtio)")
    p.add_argument(
        "--chatty",
        type=int,
        default=0,
        metavar="BYTES_PER_SEC",
        help="after registration, print log lines at this rate",
    )
    p.add_argument(
        "--boot-delay", type=float, default=0.05, metavar="SECONDS", help="pause between boot lines (default 0.05)"
    )
    p.add_argument("--no-register", action="store_true", help="skip the machine registration")
    p.add_argument(
        "--flaky", type=int, default=0, metavar="N", help="every Nth boot-loop check (machine_registration check) fails"
    )
    p.add_argument("--no-boot-config", action="store_true", help="do not fetch the boot config: always register")
    p.add_argument("--phase-file", metavar="PATH", help="write what the DUT does (one word) here, for the power meter")
    return p


def _die_with_parent() -> None:
    """Power goes when the PDU goes: ask Linux to SIGTERM us if the vPDU process dies, however it dies."""
    parent = os.getppid()
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(0)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    args = _parser().parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: os._exit(0))
    _die_with_parent()
    try:
        asyncio.run(run(args))
    except (KeyboardInterrupt, BrokenPipeError, ConnectionError):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
