"""rootfs/: the systemd units pass ``systemd-analyze verify``, their command lines parse with our CLI,
and the backend tells systemd (Type=notify) when it is ready and when it stops."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.helpers import Backend
from valve_console.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "rootfs" / "etc" / "systemd" / "system"
SSHD_SNIPPET = ROOT / "rootfs" / "etc" / "ssh" / "sshd_config.d" / "valve-console.conf"
INSTALLED = "/usr/local/bin/valve-console"  # where `pip install` in the image puts the entry point
UNIT_NAMES = [
    "valve-console.service",
    "valve-console.target",
    "valve-console-tty2.service",
    "valve-console-web.service",
]
HOSTKEYS_UNIT = "valve-console-ssh-hostkeys.service"  # ssh's host keys, made at first boot on /mnt/permanent

needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")


def _entry_point() -> str:
    """The venv's valve-console script: the units' ExecStart must name an executable that exists."""
    path = Path(sys.executable).parent / "valve-console"
    assert path.exists(), f"{path} missing: run make venv"
    return str(path)


def _verify(unit_dir: Path, unit: str) -> subprocess.CompletedProcess:
    # SYSTEMD_UNIT_PATH "DIR:" = our copies first, then the system's units (multi-user.target, getty@...)
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{unit_dir}:", "SYSTEMD_LOG_COLOR": "0"}
    return subprocess.run(
        ["systemd-analyze", "verify", str(unit_dir / unit)], env=env, capture_output=True, text=True, timeout=60
    )


def _copies(tmp_path: Path) -> Path:
    out = tmp_path / "units"
    out.mkdir()
    hostkeys = ROOT / "rootfs" / "usr" / "local" / "sbin" / "valve-console-ssh-hostkeys"
    for unit in UNITS.iterdir():
        text = unit.read_text().replace(INSTALLED, _entry_point()).replace(f"/{hostkeys.relative_to(ROOT / 'rootfs')}",
                                                                            str(hostkeys))
        (out / unit.name).write_text(text)
    return out


def test_rootfs_has_the_units() -> None:
    assert sorted(p.name for p in UNITS.iterdir()) == sorted([*UNIT_NAMES, HOSTKEYS_UNIT])
    backend = (UNITS / "valve-console.service").read_text()
    assert "Type=notify" in backend and "Restart=on-failure" in backend and "--backend-only" in backend
    # the DUTs reach registration and their boot files on the private NIC: not loopback only
    assert "Environment=VALVE_CONSOLE_LISTEN=0.0.0.0:8000" in backend
    tty2 = (UNITS / "valve-console-tty2.service").read_text()
    assert "TTYPath=/dev/tty2" in tty2 and "Environment=TERM=linux" in tty2 and "--attach" in tty2
    # Textual draws on stderr, and the console refuses to start when it is not a terminal
    assert re.search(r"^StandardError=tty$", tty2, re.M) and re.search(r"^StandardOutput=tty$", tty2, re.M)
    target = (UNITS / "valve-console.target").read_text()
    for unit in UNIT_NAMES[2:] + UNIT_NAMES[:1]:
        assert unit in target


@needs_analyze
@pytest.mark.parametrize("unit", [*UNIT_NAMES, HOSTKEYS_UNIT])
def test_unit_passes_systemd_analyze_verify(tmp_path: Path, unit: str) -> None:
    result = _verify(_copies(tmp_path), unit)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr


@needs_analyze
def test_verify_would_catch_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a typo'd key, a bad Type= and a missing binary are all reported."""
    units = _copies(tmp_path)
    text = (units / "valve-console.service").read_text()
    text = text.replace("Type=notify", "Type=notifyy").replace("Restart=on-failure", "Restart=on-failure\nRestat=1")
    (units / "valve-console.service").write_text(text.replace(_entry_point(), "/nonexistent/valve-console"))
    result = _verify(units, "valve-console.service")
    assert "notifyy" in result.stderr and "Restat" in result.stderr
    assert "/nonexistent/valve-console" in result.stderr and result.returncode != 0


def _command_lines() -> list[tuple[str, list[str]]]:
    """Every valve-console command line in rootfs/, with ${VAR} replaced by the unit's Environment= value."""
    lines = []
    for path in [*UNITS.iterdir(), SSHD_SNIPPET]:
        text = path.read_text()
        env = dict(re.findall(r"^Environment=(\w+)=(\S*)$", text, re.M))
        for match in re.finditer(r"^\s*(?:ExecStart=|ForceCommand )(/usr/local/bin/valve-console .*)$", text, re.M):
            line = re.sub(r"\$\{(\w+)\}", lambda m, env=env: env[m.group(1)], match.group(1))
            lines.append((path.name, shlex.split(line)[1:]))
    return lines


def test_unit_command_lines_parse_with_our_cli() -> None:
    lines = _command_lines()
    assert {name for name, _ in lines} == {*UNIT_NAMES[:1], *UNIT_NAMES[2:], SSHD_SNIPPET.name}
    for name, argv in lines:
        args = build_parser().parse_args(argv)  # an unknown flag exits (SystemExit) and fails the test
        assert args.backend_only or args.attach or args.command == "serve", name
        if args.command == "serve":
            assert args.serve_listen.startswith("127.0.0.1:"), "the web console binds to loopback by default"


def _receive(sock: socket.socket) -> list[str]:
    data = sock.recv(4096).decode()
    return data.split("\n")


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_backend_notifies_ready_then_stopping(tmp_path: Path, abstract: bool) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"valve-console-test-{os.getpid()}-{id(sock)}"
        sock.bind("\0" + name)
        address = "@" + name
    else:
        address = str(tmp_path / "notify")
        sock.bind(address)
    sock.settimeout(20)
    backend = Backend(tmp_path / "data", env={"NOTIFY_SOCKET": address})
    try:
        backend.start()  # returns once /api/v1/health answers
        first = _receive(sock)
        assert "READY=1" in first, first
        assert any(f"STATUS=API http://127.0.0.1:{backend.port}" == line for line in first), first
        assert backend.stop() == 0
        assert _receive(sock) == ["STOPPING=1"]
    finally:
        if backend.proc is not None and backend.proc.poll() is None:
            backend.stop()
        sock.close()


def test_backend_with_nobody_on_the_notify_socket_still_runs(tmp_path: Path) -> None:
    backend = Backend(tmp_path / "data", env={"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")}).start()
    try:
        assert backend.http().get("/api/v1/health").status_code == 200
    finally:
        assert backend.stop() == 0


SSHD = "/usr/sbin/sshd"


def _sshd_config(tmp_path: Path, group: str) -> Path:
    """A minimal sshd config around our snippet, its Match Group changed to ``group``."""
    if not Path(SSHD).exists():
        pytest.skip("openssh-server is not installed (make test installs it)")
    if not Path("/run/sshd").is_dir():  # sshd -t wants its privilege separation directory
        try:
            Path("/run/sshd").mkdir(mode=0o755)
        except OSError:
            pytest.skip("/run/sshd is missing and cannot be made here (not root)")
    tmp_path.mkdir(parents=True, exist_ok=True)
    key = tmp_path / "host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=30)
    snippet = tmp_path / "valve-console.conf"
    snippet.write_text(SSHD_SNIPPET.read_text().replace("Match Group valve-operators", f"Match Group {group}"))
    config = tmp_path / "sshd_config"
    config.write_text(f"HostKey {key}\nInclude {snippet}\n")
    return config


def _effective(config: Path) -> dict[str, str]:
    """``sshd -T``: the settings a login by root from 127.0.0.1 gets."""
    out = subprocess.run(
        [SSHD, "-T", "-f", str(config), "-C", "user=root,host=localhost,addr=127.0.0.1"],
        capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 0, out.stderr
    return dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)


def test_sshd_snippet_is_valid_and_forces_operators_into_the_console(tmp_path: Path) -> None:
    operators = _sshd_config(tmp_path, "root")  # root stands in for a member of valve-operators
    check = subprocess.run([SSHD, "-t", "-f", str(operators)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    settings = _effective(operators)
    argv = shlex.split(settings["forcecommand"])
    assert argv[0] == INSTALLED and build_parser().parse_args(argv[1:]).attach == ["http://127.0.0.1:8000"]
    assert settings["allowtcpforwarding"] == "no" and settings["permittunnel"] == "no"
    assert settings["x11forwarding"] == "no" and settings["allowagentforwarding"] == "no"
    # a user outside the group keeps the normal sshd behaviour
    others = _effective(_sshd_config(tmp_path / "o", "valve-operators-missing-group"))
    assert others["forcecommand"] == "none"
