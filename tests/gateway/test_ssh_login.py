"""End to end over real OpenSSH: the image's sshd snippet puts an operator in the console and nowhere else.

``sshd_config.d/valve-console.conf`` is only worth something if a login really lands in
``valve-console --attach``, a command given on the ssh line does not run, and port forwarding is refused.
So a private ``sshd -D`` (own port, host key and authorized key in ``tmp_path``) runs the snippet's own
text, with two substitutions only: ``Match User root`` for ``Match Group valve-operators`` (no account to
create) and the venv's ``valve-console`` with this backend's data dir and URL for the image's path. Every
other directive is kept as written, so the test proves them valid and effective. The backend is the real
``valve-console --backend-only`` with a Vivian vPDU, so the PDU screen seen through ssh has outlets.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import poll_until
from tests.e2e.helpers import ROOT, Backend, Vpdu, free_port
from tests.e2e.test_tui_tmux import Tmux

SNIPPET = ROOT / "rootfs" / "etc" / "ssh" / "sshd_config.d" / "valve-console.conf"
PROGRAM = Path(sys.executable).parent / "valve-console"
SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None)
SSH = shutil.which("ssh")
SSH_KEYGEN = shutil.which("ssh-keygen")


def _missing() -> str | None:
    """Why this machine cannot run the test, in words (None when it can)."""
    for name, path in (("sshd (openssh-server)", SSHD), ("ssh (openssh-client)", SSH),
                       ("ssh-keygen (openssh-client)", SSH_KEYGEN), ("tmux", shutil.which("tmux"))):
        if path is None:
            return f"{name} is not installed"
    if os.geteuid() != 0:
        return "sshd must run as root to log a user in (privilege separation, setuid to the user)"
    return None


def _root_password_locked() -> bool:
    """Root's password locked with "!" in /etc/shadow: without PAM, sshd then refuses even a key
    login ("account is locked"); through PAM's account check a key login still works."""
    try:
        for line in Path("/etc/shadow").read_text().splitlines():
            if line.startswith("root:"):
                return line.split(":")[1].startswith("!")
    except OSError:
        pass
    return False


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 10 s."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _end_leftover_consoles(data_dir: Path) -> None:
    """End ``valve-console --attach`` processes sshd started for this test (they name our data dir).

    Stopping the sshd listener leaves running sessions alone, so a failed check could otherwise
    leave a console behind. Only processes whose command line names this test's own data dir match.
    """
    needle = str(data_dir).encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            if needle in cmdline and b"--attach" in cmdline:
                os.kill(int(proc.name), signal.SIGTERM)
        except OSError:
            continue


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    """The real backend with a 16-outlet Vivian vPDU registered as ``vpdu1``."""
    reason = _missing()
    if reason:
        pytest.skip(reason)
    assert PROGRAM.exists(), f"{PROGRAM} is missing: install the package in the venv"
    tmp = tmp_path_factory.mktemp("farm")
    backend = Backend(tmp / "data").start(timeout=30)
    vpdu = Vpdu(backend, tmp / "vivian").start()
    try:
        with backend.http() as http:
            assert len(vpdu.add_to(http)["ports"]) == 16
        yield backend
    finally:
        vpdu.stop()
        _end_leftover_consoles(backend.data_dir)
        assert backend.stop() == 0


@dataclass
class Sshd:
    port: int
    key: Path
    log: Path

    def ssh(self, *options: str, log_level: str = "ERROR") -> list[str]:
        """An ssh command line that reads no user config and trusts our throw-away host key."""
        return [SSH, "-F", "/dev/null", "-i", str(self.key), "-p", str(self.port),
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
                "-o", f"LogLevel={log_level}", *options, "root@127.0.0.1"]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def sshd_config(snippet: str, port: int, work: Path, backend: Backend) -> str:
    """Our own sshd's settings, then the snippet's text with only its Match and its command replaced."""
    match, n_match = re.subn(r"^Match Group valve-operators$", "Match User root", snippet, flags=re.M)
    assert n_match == 1, f"the snippet no longer has one 'Match Group valve-operators' line:\n{snippet}"
    command = shlex.join([str(PROGRAM), "--data-dir", str(backend.data_dir), "--attach", backend.url])
    text, n_command = re.subn(r"^(\s*ForceCommand)\s.*$", lambda m: f"{m.group(1)} {command}", match, flags=re.M)
    assert n_command == 1, f"the snippet no longer has one ForceCommand line:\n{snippet}"
    head = "\n".join([
        f"Port {port}",
        "ListenAddress 127.0.0.1",
        f"HostKey {work / 'host_key'}",
        f"PidFile {work / 'sshd.pid'}",
        f"AuthorizedKeysFile {work / 'authorized_keys'}",
        "StrictModes no",
        f"UsePAM {'yes' if _root_password_locked() else 'no'}",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password",
        "LogLevel VERBOSE",
    ])
    return f"{head}\n\n{text}"


@pytest.fixture(scope="module")
def sshd(farm: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    """``sshd -D`` on a free loopback port with the snippet; stopped (and its sessions' consoles) after."""
    work = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "client_key"):
        subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-f", str(work / name)], check=True, timeout=30)
    (work / "authorized_keys").write_text((work / "client_key.pub").read_text())
    port = free_port()
    config = work / "sshd_config"
    config.write_text(sshd_config(SNIPPET.read_text(), port, work, farm))
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege separation directory
    check = subprocess.run([SSHD, "-t", "-f", str(config)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, f"sshd -t refuses the config:\n{check.stderr}\n{config.read_text()}"
    log = work / "sshd.log"
    with log.open("w") as log_file:
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log_file, stderr=subprocess.STDOUT)
    server = Sshd(port, work / "client_key", log)
    try:
        def banner() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"sshd exited {proc.returncode}:\n{server.log_text()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                    return sock.recv(64).startswith(b"SSH-2.0-")
            except OSError:
                return False

        poll_until(banner, "sshd's banner", timeout=30)
        yield server
    finally:
        _stop(proc)
        _end_leftover_consoles(farm.data_dir)


def test_login_lands_in_the_console(sshd: Sshd) -> None:
    """``ssh -tt`` in a pane with TERM=linux: the dashboard, the PDU screen with vpdu1, ``q`` ends the session."""
    tmux = Tmux(f"valve-ssh-{uuid.uuid4().hex[:8]}")
    # COLUMNS/LINES (set in pytest's environment) would override the pane's real size.
    command = f"env -u COLUMNS -u LINES TERM=linux {shlex.join(sshd.ssh('-tt'))}; echo SSH-EXIT=$?; sleep 30"
    tmux.start(command)
    try:
        try:
            tmux.wait("Backend services", timeout=30)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nsshd's log:\n{sshd.log_text()}") from None
        tmux.keys("3")
        screen = tmux.wait("vpdu1", timeout=30)
        assert "SSH-EXIT=" not in screen
        tmux.keys("q")  # the console's quit key: the ForceCommand ends, so does the session
        screen = tmux.wait("SSH-EXIT=", timeout=30)
        assert "SSH-EXIT=0" in screen, screen
        assert tmux.run("display", "-p", "-t", tmux.name, "#{pane_current_command}").strip() != "ssh"
    finally:
        tmux.kill()


def test_a_command_on_the_ssh_line_does_not_run(sshd: Sshd) -> None:
    """ForceCommand replaces the operator's command; without a tty the console refuses to start
    (it would draw into the channel and wait for keys for ever) and says why."""
    result = subprocess.run([*sshd.ssh("-T"), "echo PWNED-$((6*7))"], stdin=subprocess.DEVNULL,
                            capture_output=True, timeout=60)
    seen = (result.stdout + result.stderr).decode(errors="replace")
    assert "PWNED-42" not in seen, seen[-2000:]
    # 255 is ssh's own failure (no login): then nothing was tested
    assert result.returncode == 2, f"ssh exited {result.returncode}: {seen[-2000:]}\nsshd's log:\n{sshd.log_text()}"
    assert "the console needs a terminal (over ssh: ssh -t" in seen, seen[-2000:]


def _http_get_through(port: int) -> bytes:
    """Send GET /api/v1/health to a local port and read what comes back until the connection closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        answer = b""
        try:
            while chunk := sock.recv(4096):
                answer += chunk
        except (ConnectionResetError, TimeoutError):
            pass
        return answer


def test_port_forwarding_is_refused(sshd: Sshd, farm: Backend, tmp_path: Path) -> None:
    """``ssh -N -L`` to the API: the local end accepts, sshd refuses the channel, no HTTP comes back."""
    local = free_port()
    stderr = tmp_path / "ssh.stderr"
    with stderr.open("w") as err:
        # ssh reports the refused channel at INFO
        proc = subprocess.Popen(sshd.ssh("-N", "-L", f"{local}:127.0.0.1:{farm.port}", log_level="INFO"),
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    try:
        def listening() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"ssh -N -L exited {proc.returncode}: {stderr.read_text()}\n{sshd.log_text()}")
            try:
                socket.create_connection(("127.0.0.1", local), timeout=5).close()
                return True
            except OSError:
                return False

        poll_until(listening, "ssh's local forwarding port", timeout=30)
        assert _http_get_through(local) == b""
        # the API itself answers the same request directly: the refusal is sshd's
        assert _http_get_through(farm.port).startswith(b"HTTP/1.1 200")
        try:
            poll_until(lambda: "administratively prohibited" in stderr.read_text(), "ssh's report of the refusal",
                       timeout=30)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; ssh's stderr: {stderr.read_text()!r}") from None
    finally:
        _stop(proc)
