"""Issue 15, reproduction 6: the data dir and the secrets in it are private to the backend's user.

Before: the data dir was 0755 and the database and its WAL 0644 (the unit has no ``UMask=``), so any
local user (``nobody``) could read GitLab tokens out of ``valve-console.db-wal``. Now the data dir is
created 0700 (0711 with the managed dnsmasq, which drops to an unprivileged user and must reach its
TFTP root and hosts file), the database, its -wal and -shm and the token 0600, and wrong modes found at
start are fixed (and logged). The backend runs as a real process with the test's umask (022).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from tests.e2e.helpers import Backend
from valve_console.backend.farm import secure_data_dir

SECRETS = ("valve-console.db", "valve-console.db-wal", "valve-console.db-shm", "token")


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o7777


def as_nobody(*argv: str) -> subprocess.CompletedProcess:
    if os.geteuid() != 0:
        pytest.skip("reading as another user needs root (to switch to nobody)")
    return subprocess.run(argv, user="nobody", capture_output=True, text=True, timeout=30)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory everybody may enter (pytest's tmp_path is under a 0700 directory, which would hide
    the data dir from ``nobody`` whatever its own modes)."""
    path = Path(tempfile.mkdtemp(prefix="vc15-files-", dir="/tmp"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def store_something(backend: Backend) -> None:
    """A write, so that the WAL holds something (a machine registration)."""
    with backend.http() as http:
        r = http.post("/api/v1/machine/", json={"base_name": "dut", "tags": ["glpat-not-a-secret"],
                                                "mac_address": "02:00:00:00:15:06", "ip_address": "10.0.0.6"})
        assert r.status_code == 200, r.text


def test_a_new_data_dir_is_private(open_dir: Path) -> None:
    data = open_dir / "data"
    backend = Backend(data).start()
    try:
        store_something(backend)
        wal = as_nobody("cat", str(data / "valve-console.db-wal"))
        assert wal.returncode != 0 and "Permission denied" in wal.stderr, "nobody read the WAL"
        listing = as_nobody("ls", str(data))
        assert listing.returncode != 0 and "Permission denied" in listing.stderr, listing
        assert mode(data) == 0o700
        for name in SECRETS:
            assert mode(data / name) == 0o600, f"{name} is {mode(data / name):04o}"
        assert mode(data / "api.sock") == 0o600
    finally:
        backend.stop()


def test_wrong_modes_are_fixed_at_start(open_dir: Path) -> None:
    data = open_dir / "data"
    backend = Backend(data).start()
    store_something(backend)
    backend.stop()
    # As an older version (or a umask of 022) left them.
    os.chmod(data, 0o755)
    for name in ("valve-console.db", "token"):
        os.chmod(data / name, 0o644)
    (data / "web-password").write_text("scrypt$...\n")
    os.chmod(data / "web-password", 0o644)
    (data / "consoles").mkdir(exist_ok=True)
    os.chmod(data / "consoles", 0o755)
    backend = Backend(data).start()
    try:
        store_something(backend)
        assert mode(data) == 0o700
        for name in (*SECRETS, "web-password"):
            assert mode(data / name) == 0o600, f"{name} is {mode(data / name):04o}"
        assert mode(data / "consoles") == 0o700
        db = as_nobody("cat", str(data / "valve-console.db"))
        assert db.returncode != 0 and "Permission denied" in db.stderr, db
    finally:
        backend.stop()
    assert "modes fixed" in backend.log_text()


def test_with_the_managed_dnsmasq_only_its_files_are_reachable(open_dir: Path) -> None:
    """dnsmasq drops to an unprivileged user: it must still reach tftp/ and dnsmasq/hosts.dhcp."""
    data = open_dir / "data"
    (data / "tftp").mkdir(parents=True)
    (data / "tftp" / "undionly.kpxe").write_bytes(b"rom")
    os.chmod(data / "tftp" / "undionly.kpxe", 0o644)
    (data / "valve-console.db").write_text("secret")
    os.chmod(data / "valve-console.db", 0o644)
    secure_data_dir(data, dnsmasq=True)
    (data / "dnsmasq" / "hosts.dhcp").write_text("02:00:00:00:15:06,10.0.0.6\n")
    os.chmod(data / "dnsmasq" / "hosts.dhcp", 0o644)
    assert mode(data) == 0o711 and mode(data / "tftp") == 0o755 and mode(data / "dnsmasq") == 0o755
    assert mode(data / "valve-console.db") == 0o600
    assert as_nobody("cat", str(data / "tftp" / "undionly.kpxe")).stdout == "rom"
    assert as_nobody("cat", str(data / "dnsmasq" / "hosts.dhcp")).returncode == 0
    assert as_nobody("cat", str(data / "valve-console.db")).returncode != 0
    assert as_nobody("ls", str(data)).returncode != 0  # traversable, not listable


def test_a_group_given_the_data_dir_keeps_the_right_to_enter_it(open_dir: Path) -> None:
    """valve-console.service gives the data dir to valve-operators (chgrp, chmod g+x) so that their ssh
    logins read the token (0640 to that group): kept at the next start; group rights on files are not."""
    import grp

    if os.geteuid() != 0:
        pytest.skip("giving the directory to another group needs root")
    data = open_dir / "data"
    data.mkdir(mode=0o755)
    (data / "token").write_text("t" * 43)
    os.chmod(data / "token", 0o640)
    other = next(g.gr_gid for g in grp.getgrall() if g.gr_gid != os.getegid())
    os.chown(data, -1, other)
    secure_data_dir(data)
    assert mode(data) == 0o710 and mode(data / "token") == 0o600
    os.chown(data, -1, os.getegid())  # its owner's own group: nothing was granted on purpose
    os.chmod(data, 0o755)
    secure_data_dir(data)
    assert mode(data) == 0o700
