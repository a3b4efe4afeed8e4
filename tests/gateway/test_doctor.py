"""`valve-console doctor`: verdicts against fake /sys/class/net trees, /proc files and /dev, real
sockets and databases, a real backend, and one run of the real command on this machine."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import make_settings
from valve_console import doctor
from valve_console.doctor import FAIL, OK, WARN, Host

ROOT = Path(__file__).resolve().parents[2]
ALL_CAPS = "000001ffffffffff"


def nic(root: Path, name: str, *, up=True, operstate="up", carrier="1", physical=True) -> None:
    d = root / name
    d.mkdir(parents=True)
    (d / "flags").write_text("0x1003\n" if up else "0x1002\n")
    (d / "operstate").write_text(operstate + "\n")
    (d / "carrier").write_text(carrier + "\n")
    if physical:
        (d / "device").mkdir()


def route_file(path: Path, default_iface: str | None, gw: str = "0100000A") -> Path:
    lines = ["Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT"]
    if default_iface:
        lines.append(f"{default_iface}\t00000000\t{gw}\t0003\t0\t0\t0\t00000000\t0\t0\t0")
    lines.append("eth1\t002A0A00\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0")
    path.write_text("\n".join(lines) + "\n")
    return path


def host(tmp_path: Path, caps: str = ALL_CAPS, **kw) -> Host:
    (tmp_path / "net").mkdir(exist_ok=True)
    (tmp_path / "dev").mkdir(exist_ok=True)
    status = tmp_path / "status"
    status.write_text(f"Name:\tpython\nCapInh:\t0000000000000000\nCapEff:\t{caps}\n")
    values = dict(
        sys_class_net=tmp_path / "net",
        proc_net_route=tmp_path / "route",
        proc_status=status,
        dev=tmp_path / "dev",
        permanent=tmp_path / "perm",
        tmp=tmp_path / "mtmp",
        ipxe_dirs=(tmp_path / "ipxe",),
        which=lambda name: f"/usr/sbin/{name}",
        bind_free=lambda h, p: None,
        fetch_health=lambda url: None,
    )
    values.update(kw)
    return Host(**values)


def verdicts(checks) -> dict[str, tuple[str, str]]:
    return {c.name: (c.verdict, c.line()) for c in checks}


def test_two_nics_with_a_default_route_are_ok(tmp_path):
    h = host(tmp_path)
    nic(h.sys_class_net, "eth0")
    nic(h.sys_class_net, "eth1")
    route_file(h.proc_net_route, "eth0")
    v = verdicts(doctor.check_network(h, make_settings(tmp_path / "data")))
    assert v["network.public"][0] == OK and "eth0 has the default route via 10.0.0.1" in v["network.public"][1]
    assert v["network.private"][0] == OK and "eth1" in v["network.private"][1]


def test_one_nic_fails_the_private_network(tmp_path):
    h = host(tmp_path)
    nic(h.sys_class_net, "eth0")
    nic(h.sys_class_net, "eth1", up=False, operstate="down", carrier="")
    route_file(h.proc_net_route, "eth0")
    v = verdicts(doctor.check_network(h, make_settings(tmp_path / "data")))
    assert v["network.public"][0] == OK
    assert v["network.private"][0] == FAIL
    assert "no second interface up" in v["network.private"][1] and "Fix: " in v["network.private"][1]


def test_no_default_route_fails_the_public_network(tmp_path):
    h = host(tmp_path)
    nic(h.sys_class_net, "eth0")
    nic(h.sys_class_net, "eth1")
    route_file(h.proc_net_route, None)
    v = verdicts(doctor.check_network(h, make_settings(tmp_path / "data")))
    assert v["network.public"][0] == FAIL and "no interface has an IPv4 default route" in v["network.public"][1]


def test_only_virtual_second_interfaces_warn(tmp_path):
    h = host(tmp_path)
    nic(h.sys_class_net, "eth0")
    nic(h.sys_class_net, "veth12ab", physical=False)
    route_file(h.proc_net_route, "eth0")
    v = verdicts(doctor.check_network(h, make_settings(tmp_path / "data")))
    assert v["network.private"][0] == WARN and "veth12ab" in v["network.private"][1]


@pytest.mark.parametrize(
    "iface, expect, words",
    [
        ("eth1", OK, "eth1 serves the DUTs"),
        ("eth0", FAIL, "is the public one"),
        ("eth9", FAIL, "does not exist"),
        ("eth2", FAIL, "is down"),
    ],
)
def test_the_managed_dnsmasq_interface_is_checked(tmp_path, iface, expect, words):
    h = host(tmp_path)
    nic(h.sys_class_net, "eth0")
    nic(h.sys_class_net, "eth1")
    nic(h.sys_class_net, "eth2", up=False, operstate="down")
    route_file(h.proc_net_route, "eth0")
    v = verdicts(doctor.check_network(h, make_settings(tmp_path / "data", dnsmasq_interface=iface)))
    assert v["network.private"][0] == expect and words in v["network.private"][1], v["network.private"]


def test_volumes(tmp_path):
    h = host(tmp_path)
    settings = make_settings(tmp_path / "perm" / "valve-console")
    v = verdicts(doctor.check_volumes(h, settings))
    assert v["volume.permanent"][0] == WARN and "does not exist" in v["volume.permanent"][1]
    assert v["volume.tmp"][0] == WARN
    assert v["data dir"][0] == OK  # created at start, under tmp_path
    (tmp_path / "perm").mkdir()
    (tmp_path / "mtmp").mkdir()
    (tmp_path / "perm" / "valve-console").mkdir()
    v = verdicts(doctor.check_volumes(h, settings))
    assert [v[k][0] for k in ("volume.permanent", "volume.tmp", "data dir")] == [OK, OK, OK]
    # /proc takes no new files, whoever we are: an unwritable volume and data dir FAIL.
    h.permanent = Path("/proc")
    v = verdicts(doctor.check_volumes(h, make_settings(Path("/proc"))))
    assert v["volume.permanent"][0] == FAIL and "is not writable" in v["volume.permanent"][1]
    assert v["data dir"][0] == FAIL


def test_privileges_and_serial_devices(tmp_path):
    settings = make_settings(tmp_path / "data")
    managed = make_settings(tmp_path / "data", dnsmasq_interface="eth1")
    v = verdicts(doctor.check_privileges(host(tmp_path), settings))
    assert v["privileges"][0] == OK and v["serial"][0] == OK
    none = host(tmp_path, caps="0000000000000000")
    assert verdicts(doctor.check_privileges(none, settings))["privileges"][0] == WARN
    v = verdicts(doctor.check_privileges(none, managed))
    assert v["privileges"][0] == FAIL and "CAP_NET_ADMIN, CAP_NET_RAW" in v["privileges"][1]
    # CAP_NET_ADMIN (12) and CAP_NET_RAW (13) but not CAP_NET_BIND_SERVICE (10)
    partial = host(tmp_path, caps=f"{(1 << 12) | (1 << 13):016x}")
    line = verdicts(doctor.check_privileges(partial, managed))["privileges"][1]
    assert "CAP_NET_BIND_SERVICE missing" in line and "CAP_NET_ADMIN" not in line.split("missing")[0]

    h = host(tmp_path)
    (h.dev / "ttyUSB0").write_text("")
    v = verdicts(doctor.check_privileges(h, settings))
    assert v["serial"][0] == OK and str(h.dev / "ttyUSB0") in v["serial"][1]
    gone = make_settings(tmp_path / "data", serial=[f"{tmp_path}/dev/ttyS9@115200"])
    v = verdicts(doctor.check_privileges(h, gone))
    assert v["serial"][0] == FAIL and "ttyS9 does not exist" in v["serial"][1]


def test_tools(tmp_path):
    settings = make_settings(tmp_path / "data")
    managed = make_settings(tmp_path / "data", dnsmasq_interface="eth1")
    nothing = host(tmp_path, which=lambda name: None)
    v = verdicts(doctor.check_tools(nothing, settings, gitlab_instances=0))
    assert v["tool.dnsmasq"][0] == WARN and "ipxe files" not in v
    assert v["tool.gitlab-runner"][0] == OK and v["tool.ser2net"][0] == OK
    assert "optional" in v["tool.ser2net"][1]
    v = verdicts(doctor.check_tools(nothing, managed, gitlab_instances=2))
    assert v["tool.dnsmasq"][0] == FAIL and "apt-get install dnsmasq" in v["tool.dnsmasq"][1]
    assert v["tool.gitlab-runner"][0] == FAIL and "2 GitLab instance(s)" in v["tool.gitlab-runner"][1]
    assert v["ipxe files"][0] == FAIL and "apt-get install ipxe" in v["ipxe files"][1]
    # Debian's ipxe is installed but the TFTP root is empty: the fix is the exact copy.
    (tmp_path / "ipxe").mkdir()
    for name in doctor.IPXE_FILES:
        (tmp_path / "ipxe" / name).write_bytes(b"x")
    line = verdicts(doctor.check_tools(host(tmp_path), managed, 0))["ipxe files"][1]
    assert f"cp {tmp_path}/ipxe/undionly.kpxe {tmp_path}/ipxe/ipxe.efi {tmp_path}/data/tftp/" in line
    (tmp_path / "data" / "tftp").mkdir(parents=True)
    for name in doctor.IPXE_FILES:
        (tmp_path / "data" / "tftp" / name).write_bytes(b"x")
    assert verdicts(doctor.check_tools(host(tmp_path), managed, 0))["ipxe files"][0] == OK


def test_a_port_held_by_another_program_fails(tmp_path):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    try:
        port = holder.getsockname()[1]
        settings = make_settings(tmp_path / "data", listen=f"127.0.0.1:{port}", netconsole="127.0.0.1:0")
        v = verdicts(doctor.check_ports(Host(), settings))
        assert v["port.api"][0] == FAIL and "in use" in v["port.api"][1]
        assert v["port.netconsole"][0] == OK
    finally:
        holder.close()


async def test_ports_served_by_our_backend_are_ok(farm, tmp_path):
    import asyncio

    api = "{}:{}".format(*farm.api_address)
    nc = "{}:{}".format(*farm.netconsole_address)
    settings = make_settings(tmp_path / "other", listen=api, netconsole=nc)
    checks = await asyncio.to_thread(doctor.check_ports, Host(), settings)
    v = verdicts(checks)
    assert v["port.api"][0] == OK and "served by valve-console" in v["port.api"][1] and "farm test" in v["port.api"][1]
    assert v["port.netconsole"][0] == OK and "served by the running valve-console backend" in v["port.netconsole"][1]


async def test_database_versions(farm, tmp_path):
    from valve_console.backend.store import SCHEMA_VERSION

    check, gitlab = doctor.check_database(farm.settings)  # the running farm's real database
    assert check.verdict == OK and f"schema v{SCHEMA_VERSION}" in check.message and gitlab == 0

    def db(version: int | None, name: str) -> Path:
        path = tmp_path / name / "valve-console.db"
        path.parent.mkdir()
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE schemaversion (id INTEGER PRIMARY KEY, version INTEGER)")
        conn.execute("CREATE TABLE gitlabinstance (name TEXT PRIMARY KEY)")
        conn.execute("INSERT INTO gitlabinstance VALUES ('fdo')")
        if version is not None:
            conn.execute("INSERT INTO schemaversion VALUES (1, ?)", (version,))
        conn.commit()
        conn.close()
        return path.parent

    check, gitlab = doctor.check_database(make_settings(db(SCHEMA_VERSION - 1, "old")))
    assert check.verdict == WARN and "migrates it" in check.message and gitlab == 1
    check, _ = doctor.check_database(make_settings(db(SCHEMA_VERSION + 1, "new")))
    assert check.verdict == FAIL and "newer than this program" in check.message
    check, _ = doctor.check_database(make_settings(db(None, "empty")))
    assert check.verdict == FAIL
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "valve-console.db").write_bytes(b"this is not sqlite" * 100)
    check, _ = doctor.check_database(make_settings(junk))
    assert check.verdict == FAIL and "cannot be read" in check.message
    check, _ = doctor.check_database(make_settings(tmp_path / "fresh"))
    assert check.verdict == OK and "will be created" in check.message


def test_the_real_command_on_this_machine(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "valve_console.cli", "doctor", "--data-dir", str(tmp_path / "data"),
         "--listen", "127.0.0.1:0", "--netconsole", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )
    lines = r.stdout.splitlines()
    names = {line[5:].split(":", 1)[0] for line in lines[:-1]}
    expected = {"network.public", "network.private", "volume.permanent", "volume.tmp", "data dir", "privileges",
                "serial", "tool.dnsmasq", "tool.gitlab-runner", "tool.ser2net", "port.api", "port.netconsole",
                "database"}
    assert expected <= names, r.stdout + r.stderr
    assert all(line[:4] in ("ok  ", "WARN", "FAIL") for line in lines[:-1]), r.stdout
    fails = [line for line in lines if line.startswith("FAIL")]
    assert r.returncode == (1 if fails else 0), r.stdout
    assert lines[-1] == f"{len(lines) - 1} checks: {len(fails)} FAIL, {sum(x.startswith('WARN') for x in lines)} WARN"
    assert all("Fix: " in line for line in fails)


def test_bad_settings_are_refused_in_words(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "valve_console.cli", "doctor", "--data-dir", str(tmp_path), "--listen", "nope"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )
    assert r.returncode == 1 and "FAIL port.api: 'nope' is not HOST:PORT" in r.stdout
