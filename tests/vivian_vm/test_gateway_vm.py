"""The seed's walk-through in the VM farm: the gateway image booted in QEMU (vivian/gateway_vm.py).

Everything is the deployed form: the image built by ``make -C containers`` (the one
tests/gateway/test_containerfile.py builds, reused when its source label matches this tree), systemd as
PID 1, udevd, journald, sshd, the managed dnsmasq on NIC 2, the vPDU on this host starting a QEMU DUT
whose NIC is on the DUT switch and whose serial port is a USB serial adapter of the gateway VM. The test
only reads and drives it from outside: the forwarded API, ssh (root with the VM's key; an operator), the
QEMU monitor (keys on tty2), the web front, and ``systemctl poweroff`` at the end.

Timings are printed (and kept in the run's status.json), never asserted: see bench/README.md.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import httpx
import pytest

from tests.conftest import poll_until
from tests.e2e.helpers import ROOT, free_port
from vivian import gateway_vm as gvm
from vivian.vpdu import outlet_mac

CONTAINERS = ROOT / "containers"
CONTAINER = "valve-console/gateway:pytest"  # what tests/gateway/test_containerfile.py builds
IMAGE = f"localhost/{CONTAINER}"
OUTLET = 3
MAC = outlet_mac(OUTLET)
ADAPTER = f"{gvm.adapter_serial(OUTLET)}-if00"  # the USB serial adapter of outlet 3, as udev names it
BY_PATH = f"/dev/serial/by-path/pci-0000:00:{gvm.PCI_XHCI:02x}.0-usb-0:{OUTLET + 1}:1.0-port0"
BOOT_PATIENCE = 15 * 60  # a cold disk build plus the first boot under TCG, on 2 busy cores
GATEWAY_VM = [sys.executable, str(ROOT / "vivian" / "gateway_vm.py")]

pytestmark = [
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="QEMU is not installed (qemu-system-x86)"),
    pytest.mark.skipif(shutil.which("podman") is None, reason="podman is not installed: it builds the gateway image"),
    pytest.mark.skipif(not Path("/usr/lib/ipxe/qemu/efi-virtio.rom").exists(),
                       reason="ipxe-qemu (the DUTs' network boot ROMs) is not installed"),
]


@pytest.fixture(scope="module")
def image() -> str:
    """The gateway image of this tree: built only when its source label does not match (make image-fresh)."""
    done = subprocess.run(["make", "-C", str(CONTAINERS), "image-fresh", f"CONTAINER={CONTAINER}"],
                          capture_output=True, text=True, timeout=20 * 60)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return IMAGE


def make_vivian(*args: str, path: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": path} if path is not None else None
    return subprocess.run(["/usr/bin/make", "--no-print-directory", "-C", str(CONTAINERS), *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


def complaint(done: subprocess.CompletedProcess[str]) -> list[str]:
    """The program's own lines on stderr (make's "*** [Makefile:N: vivian] Error 1" trailer left out)."""
    return [line for line in done.stderr.splitlines() if line.strip() and "***" not in line]


def test_bad_input_is_refused_in_one_line(image: str, tmp_path: Path) -> None:
    # No QEMU: make vivian says so before anything else.
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    done = make_vivian("vivian", path=str(empty))
    assert done.returncode != 0
    assert complaint(done) == [
        "vivian: qemu-system-x86_64 is not installed (apt-get install qemu-system-x86 ipxe-qemu)"], done.stderr
    done = subprocess.run([*GATEWAY_VM, "--state", str(tmp_path / "s0"), "run", "--qemu", "qemu-system-nowhere"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert complaint(done) == ["vivian: qemu-system-nowhere is not installed (apt-get install qemu-system-x86 "
                               "ipxe-qemu)"]
    # No kernel: the disk cannot be made.
    done = subprocess.run([*GATEWAY_VM, "--image", image, "--cache", str(tmp_path / "cache"), "disk",
                           "--kernel-package", "linux-image-vivian-nowhere"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1
    [line] = complaint(done)
    assert line.startswith("vivian: no gateway kernel: ") and "linux-image-vivian-nowhere" in line, line
    # A forwarded port in use: named, with the variable that moves it.
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    try:
        port = holder.getsockname()[1]
        done = make_vivian("vivian", f"CONTAINER={CONTAINER}", f"SSH_PORT={port}", f"VIVIAN_STATE={tmp_path / 's1'}")
        assert done.returncode != 0
        assert complaint(done) == [f"vivian: port {port} on 127.0.0.1 (the ssh forward) is in use: free it or pick "
                                   f"another, e.g. make vivian SSH_PORT={port + 1}"], done.stderr
    finally:
        holder.close()
    # make clean removes the disks and the volumes, and nothing else (not the downloaded kernel, not the image)
    cache, state, debs = tmp_path / "c" / "gateway-vm", tmp_path / "vm-state", tmp_path / "c" / "gateway-debs"
    for f in (cache / "disk-0123" / "root.ext4", state / "permanent.img", state / "tmp.img", debs / "k.deb",
              state / "notes.txt"):
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("x")
    done = make_vivian("clean", f"VIVIAN_CACHE={cache}", f"VIVIAN_STATE={state}")
    assert done.returncode == 0, done.stderr
    assert not cache.exists() and (debs / "k.deb").exists()
    assert sorted(p.name for p in state.iterdir()) == ["notes.txt"]  # not ours: kept
    assert subprocess.run(["podman", "--storage-driver", "vfs", "image", "exists", image]).returncode == 0


class Farm:
    """The running ``gateway_vm.py run`` (gateway VM + vPDU) of the walk-through, driven from outside."""

    def __init__(self, image: str, state: Path) -> None:
        self.state = gvm.StateDir(state)
        self.ports = gvm.Ports(free_port(), free_port(), free_port(), free_port())
        self.cfg = gvm.RunConfig(image=image, state=state, ports=self.ports)
        self.api = f"http://127.0.0.1:{self.ports.api}"
        self.out = open(state.parent / "gateway_vm.out", "w+b")  # noqa: SIM115 - closed in stop()
        self.proc: subprocess.Popen[bytes] | None = None
        self.token = ""

    def start(self) -> None:
        p = self.ports
        self.proc = subprocess.Popen(
            [*GATEWAY_VM, "--image", self.cfg.image, "--state", str(self.state.path), "run",
             "--ssh-port", str(p.ssh), "--api-port", str(p.api), "--web-port", str(p.web), "--vpdu-port", str(p.vpdu),
             "--outlets", "4",
             # Sgt. Hartman's counts, small enough for CI (the defaults are 20 loops, 19 to qualify)
             "--env", "VALVE_CONSOLE_TRAINING_LOOPS=2", "--env", "VALVE_CONSOLE_TRAINING_QUALIFY=2",
             "--env", "VALVE_CONSOLE_DEFAULT_PDU_OFF_DELAY=2"],
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=self.out, stderr=subprocess.STDOUT)

    def output(self) -> str:
        self.out.flush()
        return (self.state.path.parent / "gateway_vm.out").read_text(errors="replace")

    def status(self) -> dict:
        try:
            return json.loads(self.state.status.read_text())
        except (OSError, ValueError):
            return {}

    def ready(self) -> dict | None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"gateway_vm.py run exited with {self.proc.returncode}:\n{self.output()[-3000:]}")
        status = self.status()
        return status if status.get("state") == "ready" else None

    def guest(self, command: str, timeout: float = 60) -> str:
        done = gvm.guest(self.cfg, self.state, command, timeout=timeout)
        assert done.returncode == 0, f"{command!r} in the VM: {done.returncode} {done.stderr.strip()}"
        return done.stdout

    def http(self) -> httpx.Client:
        if not self.token:
            self.token = self.guest("cat /mnt/permanent/valve-console/token").strip()
        return httpx.Client(base_url=self.api, headers={"Authorization": f"Bearer {self.token}"}, timeout=30)

    def tty2(self) -> str:
        return gvm.read_vt(self.cfg, self.state, 2) or ""

    def key(self, key: str) -> None:
        """A key pressed on the VM's keyboard (QEMU monitor ``sendkey``): it goes to the foreground VT."""
        gvm.monitor(self.state, f"sendkey {key}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # an ACPI power-off, then QEMU and the vPDU end
            try:
                self.proc.wait(150)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for key in ("qemu_pid", "vpdu_pid"):
            pid = self.status().get(key)
            if isinstance(pid, int) and _alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.out.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").exists() and ") Z " not in Path(f"/proc/{pid}/stat").read_text()


def qemu_children(pid: int) -> list[int]:
    """PIDs of qemu-system processes whose parent is ``pid`` (the vPDU's DUTs)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if comm.startswith("qemu-system") and int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


class Tmux:
    """A terminal on this host (tmux, 120x40) running one command: what it shows, keys typed into it."""

    def __init__(self, command: list[str]) -> None:
        self.server = f"vivian-vm-{os.getpid()}"
        subprocess.run(["tmux", "-L", self.server, "new-session", "-d", "-s", "op", "-x", "120", "-y", "40",
                        "env", "TERM=xterm-256color", *command], check=True, timeout=30)
        subprocess.run(["tmux", "-L", self.server, "set-option", "-t", "op", "remain-on-exit", "on"], timeout=30)

    def screen(self) -> str:
        done = subprocess.run(["tmux", "-L", self.server, "capture-pane", "-p", "-t", "op"], capture_output=True,
                              text=True, timeout=30)
        return done.stdout

    def keys(self, *keys: str) -> None:
        subprocess.run(["tmux", "-L", self.server, "send-keys", "-t", "op", *keys], check=True, timeout=30)

    def dead(self) -> bool:
        done = subprocess.run(["tmux", "-L", self.server, "display-message", "-p", "-t", "op", "#{pane_dead}"],
                              capture_output=True, text=True, timeout=30)
        return done.stdout.strip() == "1"

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.server, "kill-server"], capture_output=True, timeout=30)


def web_request(port: int, method: str, path: str, body: str | None = None,
                headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request(method, path, body=body, headers=headers or {})
    return conn.getresponse()


def test_the_seed_walkthrough_in_the_vm_farm(image: str, tmp_path: Path) -> None:
    farm = Farm(image, tmp_path / "state")
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    farm.start()
    try:
        # The gateway boots: the runner waited for the API (through the forward) and for tty2 to be drawn.
        status = poll_until(farm.ready, "the gateway VM to boot (API up, tty2 drawn, systemd done)",
                            timeout=BOOT_PATIENCE, every=2)
        timings.update(ready_wall_s=round(time.monotonic() - t0, 1), api_ready_s=status["api_ready_s"],
                       tty2_drawn_s=status["tty2_drawn_s"], boot_finished_s=status["boot_finished_s"])
        assert status["system"] == "running", farm.output()[-1000:]  # no unit failed
        disk = json.loads((Path(status["disk"]) / "disk.json").read_text())
        out = farm.output()
        assert "the gateway VM is booting" in out and f"ssh -p {farm.ports.ssh} root@127.0.0.1" in out
        assert f"http://127.0.0.1:{farm.ports.web}/" in out and "stop:" in out

        # A second run from the same state directory is refused in words, by make vivian too.
        again = subprocess.run([*GATEWAY_VM, "--state", str(farm.state.path), "run"], capture_output=True, text=True,
                               timeout=60)
        assert again.returncode == 1 and "refused: a gateway VM already runs from" in again.stderr, again.stderr
        again = make_vivian("vivian", f"CONTAINER={CONTAINER}", f"VIVIAN_STATE={farm.state.path}")
        assert again.returncode != 0 and complaint(again) == [
            f"vivian: refused: a gateway VM already runs from {farm.state.path} (pid {farm.proc.pid}); "
            "connect with make vivian-connect, or stop it with make vivian-stop"], again.stderr
        refused = make_vivian("clean", f"VIVIAN_STATE={farm.state.path}", f"VIVIAN_CACHE={tmp_path / 'no-cache'}")
        assert refused.returncode != 0 and "refused: a gateway VM runs from" in refused.stderr
        assert farm.state.permanent.exists() and Path(status["disk"]).is_dir()

        # 1. Every service is healthy: systemd (PID 1), udevd, journald, sshd, the farm's units, the managed dnsmasq.
        assert farm.guest("cat /proc/1/comm").strip() == "systemd"
        units = ["valve-console.service", "valve-console-tty2.service", "valve-console-web.service", "ssh.service",
                 "systemd-udevd.service", "systemd-journald.service", "systemd-networkd.service"]
        assert farm.guest(f"systemctl is-active {' '.join(units)}").split() == ["active"] * len(units)
        assert farm.guest("systemctl show -p NRestarts --value valve-console-tty2.service").strip() == "0"
        assert farm.guest("systemctl --failed --plain --no-legend").strip() == ""
        # tty2 (it started beside the backend, not after it) shows every service as the API does
        # (the Overview's first line: "services all N ok", or the ones that are not, by name and state)
        overview = poll_until(lambda: (s := farm.tty2()) and re.search(r"services all \d+ ok", s) and s,
                              "tty2 to show every service OK", timeout=60)
        assert "STARTING" not in overview and "DEGRADED" not in overview and "FAILED" not in overview
        with farm.http() as api:
            health = api.get("/api/v1/health").json()
            assert health["status"] == "ok", health
            assert {k: v["state"] for k, v in health["services"].items()} == {
                "storage": "ok", "registration": "ok", "power": "ok", "consoles": "ok", "api": "ok", "boot": "ok",
                "gitlab": "ok", "journal": "ok"}
            dnsmasq = farm.guest("ps -o args= -C dnsmasq")
            assert "--conf-file=/mnt/permanent/valve-console/dnsmasq/dnsmasq.conf" in dnsmasq
            conf = farm.guest("cat /mnt/permanent/valve-console/dnsmasq/dnsmasq.conf")
            assert f"interface={gvm.PRIVATE_IFACE}" in conf
            assert farm.guest("ls /mnt/permanent/valve-console/tftp").split() == ["ipxe.efi", "undionly.kpxe"]
            # ssh's host keys were made at the first boot on the permanent volume; the image has none
            assert farm.guest("ls /mnt/permanent/ssh").split() == [
                "ssh_host_ecdsa_key", "ssh_host_ecdsa_key.pub", "ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"]
            assert farm.guest("ls /etc/ssh/ | grep -c ssh_host_ || true").strip() == "0"
            # the volumes are the VM's virtio disks, the data lives on the permanent one
            mounts = farm.guest("findmnt -rno TARGET,SOURCE /mnt/permanent; findmnt -rno TARGET,SOURCE /mnt/tmp")
            assert mounts.split() == ["/mnt/permanent", "/dev/vdb", "/mnt/tmp", "/dev/vdc"]
            # The Journal screen's source is the real journal: our own ssh logins are in it.
            journal = api.get("/api/v1/journal", params={"lines": 2000}).json()
            assert journal["state"] == "ok"
            assert any(e["unit"] == "ssh.service" and "Accepted publickey for root" in e["message"]
                       for e in journal["entries"]), journal["entries"][-5:]

            # 2-4. vPDU: all outlets OFF, one PDU registered (vpdu1, on this host as 10.0.2.2), no DUTs yet.
            vport = farm.ports.vpdu
            client = [sys.executable, "vivian/client.py", "--port", str(vport)]
            status_out = subprocess.run([*client, "--status"], cwd=ROOT, capture_output=True, text=True, timeout=30)
            assert status_out.returncode == 0 and status_out.stdout.count(": OFF") == 4
            pdus = api.get("/api/v1/pdus").json()["pdus"]
            assert list(pdus) == ["vpdu1"] and len(pdus["vpdu1"]["ports"]) == 4
            assert api.get("/api/v1/pdu/vpdu1").json()["config"]["hostname"] == f"10.0.2.2:{vport}"
            assert api.get("/api/v1/machines").json()["machines"] == {}

            # The adapters: udev loaded ftdi_sio and named them; the backend opened each through pyudev.
            assert {"ftdi_sio", "usbserial", "xhci_pci"} <= set(farm.guest("lsmod").split())
            devices = api.get("/api/v1/consoles").json()["devices"]
            adapter = devices[ADAPTER]
            assert adapter["by_path"] == BY_PATH and adapter["source"] == "udev" and adapter["open"]
            assert (adapter["vid"], adapter["pid"], adapter["serial"]) == ("0403", "6001", gvm.adapter_serial(OUTLET))
            assert farm.guest(f"readlink -f {BY_PATH}").strip() == adapter["devnode"]
            assert adapter["devnode"].startswith("/dev/ttyUSB")

            # 5. Power on a virtual test device: outlet 3, with the seed's client.
            t_on = time.monotonic()
            on = subprocess.run([*client, "--outlet", str(OUTLET), "--on"], cwd=ROOT, capture_output=True, text=True,
                                timeout=30)
            assert on.returncode == 0, on.stderr
            # 6. It gets its lease from the gateway's dnsmasq, iPXE-boots from the gateway's API and registers.
            machine = poll_until(lambda: api.get("/api/v1/machines").json()["machines"].get(MAC),
                                 "the QEMU DUT to register", timeout=300, every=1)
            timings["dut_registered_s"] = round(time.monotonic() - t_on, 1)
            ip = machine["ip_address"]
            assert ip.startswith("10.42.0.") and 10 <= int(ip.rsplit(".", 1)[1]) <= 100, ip
            assert MAC in farm.guest("cat /mnt/permanent/valve-console/dnsmasq/dnsmasq.leases")
            dhcp_log = farm.guest("cat /mnt/permanent/valve-console/dnsmasq/dnsmasq.log")
            assert f"DHCPACK({gvm.PRIVATE_IFACE}) {ip} {MAC}" in dhcp_log
            # iPXE (QEMU's NIC ROM) is told where its boot script is; it fills in its own MAC
            assert "bootfile-name  http://10.42.0.1:8000/boot/${netX/mac}/boot.ipxe?platform=" in dhcp_log
            log = poll_until(lambda: (t := api.get(f"/api/v1/console/{MAC}/log").text)
                             and "safe to turn off" in t and t, "the end of the registration boot", timeout=120)
            assert "iPXE" in log and f"http://10.42.0.1:8000/boot/{MAC}/boot.ipxe" in log
            assert re.search(r"http://10\.42\.0\.1:8000/files/kernel\.\.\.[^\n]* ok\r?\n", log)  # iPXE's progress
            assert "machine_registration:latest -m 10.42.0.1:8000 register" in log
            assert f"+ b2c: eth0 is up, address {ip}" in log and "MaRS: Registration complete" in log
            # 7. Not ready for service yet (no outlet: Sgt. Hartman cannot train it).
            assert machine["ready_for_service"] is False and machine["state"] == "WAIT_FOR_CONFIG"
            # Its console is bound over the USB serial adapter (console association through pyudev, for real).
            console = api.get(f"/api/v1/console/{MAC}").json()
            assert console["connected"] and console["source"] == f"serial:{ADAPTER}" and console["device"] == ADAPTER
            assert api.get("/api/v1/consoles").json()["devices"][ADAPTER]["machine"] == MAC
            # 10. Its local TTY is the port the adapter is wired to, autoconfigured (the seed saw ttyS1).
            assert machine["local_tty_device"] == "ttyS0"

            # The units' hardening, as systemd applied it: the data dir is the service's (valve-operators
            # may enter it, the managed dnsmasq traverse it), the database and its WAL (runner tokens)
            # 0600 under UMask=0077, the token readable by valve-operators only; the netconsole on the
            # private address alone (bound before that NIC may have been up); the descriptor limit.
            modes = dict(line.split(" ", 1)[::-1] for line in farm.guest(
                "cd /mnt/permanent/valve-console && stat -c '%a:%G %n' . token valve-console.db*").splitlines())
            assert modes["."] == "711:valve-operators" and modes["token"] == "640:valve-operators", modes
            assert {modes[n] for n in modes if n.startswith("valve-console.db")} == {"600:root"}, modes
            assert "valve-console.db-wal" in modes
            assert farm.guest("ss -ltnH 'sport = :8100' | awk '{print $4}'").split() == ["10.42.0.1:8100"]
            assert farm.guest("systemctl show -p UMask,LimitNOFILE valve-console").split() == [
                "UMask=0077", "LimitNOFILE=65536"]

            # tty2 shows the farm: ctrl+alt+F2 brings it to the front; 3 is the PDU screen, 4 the DUTs.
            farm.key("ctrl-alt-f2")
            poll_until(lambda: farm.guest("cat /sys/class/tty/tty0/active").strip() == "tty2", "tty2 in front")
            farm.key("3")
            # (each screen waited for by its own words: the Overview names vpdu1 and the DUT too)
            pdu_screen = poll_until(lambda: (s := farm.tty2()) and "driver vpdu" in s and s, "vpdu1 on tty2",
                                    timeout=60)
            farm.key("4")
            dut_screen = poll_until(lambda: (s := farm.tty2()) and "sorted by" in s and machine["full_name"] in s
                                    and s, "the new DUT on tty2", timeout=60)
            assert MAC in dut_screen or ip in dut_screen, dut_screen
            assert "valve-console" in pdu_screen
            farm.key("2")  # the Journal screen: the system journal (our root ssh logins are in it)
            poll_until(lambda: "Accepted publickey for root" in farm.tty2(), "the journal on tty2", timeout=60)
            farm.key("1")

            # 9 and 11. The operator gives it its outlet; Sgt. Hartman trains it to ready for service.
            t_train = time.monotonic()
            r = api.patch(f"/api/v1/machine/{MAC}/", json={"pdu": "vpdu1", "pdu_port_id": OUTLET})
            assert r.status_code == 200, r.text
            trained = poll_until(lambda: (m := api.get(f"/api/v1/machine/{MAC}/").json())["ready_for_service"] and m,
                                 "training to ready for service", timeout=600, every=2)
            timings["training_s"] = round(time.monotonic() - t_train, 1)
            training = trained["training"]
            assert (training["state"], training["loops"], training["passes"]) == ("qualified", 2, 2), training
            assert trained["state"] in ("IDLE", "TRAINING") and trained["ip_address"] == ip

            # ssh as an operator lands in the console (ForceCommand --attach), and in nothing else.
            farm.guest("id op >/dev/null 2>&1 || useradd -m -G valve-operators op; install -d -o op -m 700 ~op/.ssh; "
                       "install -o op -m 600 /root/.ssh/authorized_keys ~op/.ssh/authorized_keys")
            op_ssh = gvm.ssh_command(farm.cfg, farm.state, user="op", tty=True)
            no_tty = subprocess.run([*gvm.ssh_command(farm.cfg, farm.state, user="op"), "sh -c id"],
                                    capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
            assert no_tty.returncode != 0 and "the console needs a terminal" in no_tty.stderr, no_tty
            term = Tmux(op_ssh)
            try:
                screen = poll_until(lambda: (s := term.screen()) and gvm.tty2_drawn(s) and s,
                                    "the console over ssh", timeout=120, every=1)
                assert "farm vivian" in screen or "vivian" in screen.splitlines()[0]
                term.keys("4")
                poll_until(lambda: machine["full_name"] in term.screen(), "the DUT in the ssh console", timeout=60)
                term.keys("C-q")
                poll_until(term.dead, "the ssh console to end on ctrl+q", timeout=60)
            finally:
                term.close()

            # The web front answers its login page through the forwarded port, and the token logs in.
            web = farm.ports.web
            first = web_request(web, "GET", "/")
            assert first.status == 303 and first.getheader("Location") == "/login"
            page = web_request(web, "GET", "/login")
            body = page.read().decode()
            assert page.status == 200 and 'name="password"' in body and "valve-console" in body
            login = web_request(web, "POST", "/login", urllib.parse.urlencode({"password": farm.token}),
                                {"Content-Type": "application/x-www-form-urlencoded"})
            cookie = (login.getheader("Set-Cookie") or "").split(";", 1)[0]
            assert login.status == 303 and cookie, login.status
            assert web_request(web, "GET", "/", headers={"Cookie": cookie}).status == 200

            # Outlet OFF stops the DUT; its adapter stays plugged, as on real hardware.
            vpdu_pid = farm.status()["vpdu_pid"]
            r = api.post(f"/api/v1/pdu/vpdu1/port/{OUTLET}/state", json={"state": "off"})
            assert r.json()["state"] == "OFF", r.text
            poll_until(lambda: not qemu_children(vpdu_pid), "the DUT's QEMU to stop", timeout=30)
            assert farm.guest(f"readlink -f {BY_PATH}").strip() == adapter["devnode"]
            assert api.get("/api/v1/consoles").json()["devices"][ADAPTER]["open"]

        # The gateway shuts down cleanly: systemctl poweroff, QEMU exits 0 (so does the runner).
        t_off = time.monotonic()
        gvm.guest(farm.cfg, farm.state, "systemctl poweroff", timeout=60)
        assert farm.proc is not None
        assert farm.proc.wait(180) == 0, farm.output()[-2000:]
        timings["poweroff_s"] = round(time.monotonic() - t_off, 1)
        assert farm.status()["exit_code"] == 0
        serial = farm.state.serial_log.read_text(errors="replace")
        assert serial.rstrip().endswith("reboot: Power down"), serial[-1500:]
        assert "A stop job is running" not in serial and "Failed unmounting" not in serial
        assert not _alive(vpdu_pid)
        timings["walkthrough_wall_s"] = round(time.monotonic() - t0, 1)
        timings.update(disk_s=status["disk_s"], disk_built=status["disk_built"], disk_build_s=disk["build_s"])
        print(f"\ngateway VM walk-through timings ({status['accel']}): {json.dumps(timings)}")
        (tmp_path / "timings.json").write_text(json.dumps(timings, indent=1))
    finally:
        farm.stop()
