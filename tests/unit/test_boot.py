"""Boot service core: iPXE scripts, registration boot, dnsmasq hosts file and config."""

from __future__ import annotations

import dataclasses
import os
import stat
from pathlib import Path

import pytest

from valve_console.backend.boot import (
    BootConfig,
    DhcpHost,
    dhcp_hostname,
    dhcp_hosts,
    dnsmasq_command,
    dnsmasq_config,
    dnsmasq_test,
    find_dnsmasq,
    ipxe_script,
    parse_dhcp_hosts,
    prepare_tftp_root,
    registration_boot,
    write_atomically,
)

KERNEL = "http://10.42.0.1:8000/files/kernel"
INITRD = "http://10.42.0.1:8000/files/b2c.cpio.xz"


# ------------------------------------------------------------------------------------------ iPXE


def test_ipxe_script_efi() -> None:
    config = BootConfig(KERNEL, INITRD, "console=ttyS1,115200 SALAD.machine_id=52:54:00:11:22:04")
    assert ipxe_script(config, platform="efi", buildarch="x86_64") == (
        "#!ipxe\n"
        "set semicolon:hex 3b\n"
        "echo Downloading the kernel\n"
        f"kernel {KERNEL} initrd=initrd console=ttyS1,115200 SALAD.machine_id=52:54:00:11:22:04\n"
        "echo Downloading the initrd\n"
        f"initrd --name initrd {INITRD}\n"
        "echo Booting!\n"
        "boot\n"
    )


def test_ipxe_script_pcbios_has_no_initrd_argument() -> None:
    script = ipxe_script(BootConfig(KERNEL, INITRD, "quiet"), platform="pcbios", buildarch="i386")
    assert f"kernel {KERNEL} quiet\n" in script
    assert "initrd=initrd" not in script
    assert f"initrd --name initrd {INITRD}\n" in script


def test_ipxe_script_unknown_platform_is_treated_as_efi() -> None:
    assert "initrd=initrd" in ipxe_script(BootConfig(KERNEL, INITRD, ""), platform=None)


def test_ipxe_script_escapes_semicolons() -> None:
    config = BootConfig(KERNEL, INITRD, 'b2c.container="-ti img sh -c \'a;b\'" x=1;2')
    script = ipxe_script(config, "efi", "x86_64")
    kernel_line = next(line for line in script.splitlines() if line.startswith("kernel "))
    assert ";" not in kernel_line
    assert kernel_line.endswith("sh -c 'a${semicolon:string}b'\" x=1${semicolon:string}2")


def test_ipxe_script_without_initrd() -> None:
    script = ipxe_script(BootConfig(KERNEL, None, "quiet"), "efi", "x86_64")
    assert f"kernel {KERNEL} quiet\n" in script
    assert "initrd" not in script
    assert script.endswith("echo Booting!\nboot\n")


@pytest.mark.parametrize(
    ("kernel", "initrd", "cmdline", "message"),
    [
        (KERNEL, INITRD, "quiet\nshell", "control character"),
        (KERNEL, INITRD, "quiet\rshell", "control character"),
        (KERNEL, INITRD, "quiet\x00", "control character"),
        (KERNEL, INITRD, "quiet\u2028shell", "control character"),
        (KERNEL, INITRD, "quiet || shell", "'||'"),
        (KERNEL, INITRD, "quiet && shell", "'&&'"),
        (KERNEL + "\nshell", INITRD, "", "contains '\\n'"),
        (KERNEL + " initrd=x", INITRD, "", "contains ' '"),
        (KERNEL, INITRD + ";shell", "", "';'"),
        (KERNEL + "?a=1&&shell", INITRD, "", "'&&'"),
        (KERNEL, "http://x/é", "", "non-ASCII"),
        ("file:///etc/passwd", INITRD, "", "must start with"),
        ("", INITRD, "", "empty"),
        ("http://x/" + "a" * 3000, INITRD, "", "longer than"),
    ],
)
def test_injection_is_refused(kernel: str, initrd: str, cmdline: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        BootConfig(kernel, initrd, cmdline)
    assert message in str(info.value)


def test_replace_revalidates() -> None:
    config = BootConfig(KERNEL, INITRD, "quiet")
    with pytest.raises(ValueError):
        dataclasses.replace(config, cmdline="quiet\nshell")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.cmdline = "x"  # type: ignore[misc]


def test_query_strings_and_tftp_urls_are_fine() -> None:
    config = BootConfig("http://gw/kernel?arch=x86_64&v=2", "tftp://10.42.0.1/initrd", "a=1 b")
    assert "kernel http://gw/kernel?arch=x86_64&v=2 initrd=initrd a=1 b\n" in ipxe_script(config, "efi")


# ------------------------------------------------------------------------------------------ registration boot


def test_registration_boot() -> None:
    config = registration_boot(
        kernel_url=KERNEL, initrd_url=INITRD, api_host="10.42.0.1:8000", registry="10.42.0.1:8002"
    )
    assert config.kernel_url == KERNEL and config.initrd_url == INITRD
    assert config.cmdline == (
        'b2c.container="-ti --tls-verify=false docker://10.42.0.1:8002/mupuf/valve-infra/machine_registration:latest'
        ' -m 10.42.0.1:8000 register" b2c.ntp_peer=10.42.0.1 b2c.cache_device=none'
    )
    assert "SALAD.machine_id" not in config.cmdline and "console=" not in config.cmdline
    script = ipxe_script(config, "pcbios", "i386")
    assert 'register" b2c.ntp_peer=10.42.0.1 b2c.cache_device=none\n' in script


def test_registration_boot_options() -> None:
    config = registration_boot(
        kernel_url=KERNEL,
        initrd_url=INITRD,
        api_host="ci-gateway",
        image="me/registration:2",
        ntp_peer="10.42.0.1",
        cache_device="auto",
        extra_args=["earlyprintk=vga,keep", " quiet "],
    )
    assert config.cmdline == (
        'b2c.container="-ti --tls-verify=false docker://ci-gateway:8002/me/registration:2 -m ci-gateway register"'
        " b2c.ntp_peer=10.42.0.1 b2c.cache_device=auto earlyprintk=vga,keep quiet"
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"api_host": 'evil" b2c.x="y'},
        {"api_host": "10.42.0.1", "registry": "reg istry"},
        {"api_host": "10.42.0.1", "image": "img\nkernel x"},
        {"api_host": "10.42.0.1", "cache_device": "sometimes"},
        {"api_host": "10.42.0.1", "extra_args": ["ok", ""]},
        {"api_host": "10.42.0.1", "extra_args": ["a\nb"]},
    ],
)
def test_registration_boot_refuses_bad_parameters(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        registration_boot(kernel_url=KERNEL, initrd_url=INITRD, **kwargs)


# ------------------------------------------------------------------------------------------ dhcp hosts


def test_dhcp_hosts_lines_are_sorted_normalised_and_real_hostnames() -> None:
    text = dhcp_hosts(
        [
            ("52-54-00-11-22-05", "10.42.0.15", "farm-gfx10-2"),
            {"mac_address": "52:54:00:11:22:04", "ip_address": "10.42.0.14", "full_name": "farm-gfx10-1"},
            {"mac_address": "525400112206", "ip_address": None, "full_name": "not-pinned-yet"},
            DhcpHost("AA:BB:CC:DD:EE:FF", "10.42.0.99", "farm-intel_9.1-1"),
        ],
        comment="Managed by valve-console\nDo not edit",
    )
    assert text == (
        "# Managed by valve-console\n"
        "# Do not edit\n"
        "52:54:00:11:22:04,10.42.0.14,farm-gfx10-1\n"
        "52:54:00:11:22:05,10.42.0.15,farm-gfx10-2\n"
        "aa:bb:cc:dd:ee:ff,10.42.0.99,farm-intel-9-1-1\n"
    )
    assert "set:" not in text  # a hostname, not a dnsmasq tag (§13.8)


def test_dhcp_hosts_round_trip() -> None:
    hosts = [
        DhcpHost.make("52:54:00:11:22:04", "10.42.0.14", "farm-gfx10-1"),
        DhcpHost.make("52:54:00:11:22:05", "10.42.0.15", "farm-gfx10-2"),
    ]
    assert parse_dhcp_hosts(dhcp_hosts(hosts, comment="x")) == hosts
    assert dhcp_hosts([]) == ""


def test_parse_dhcp_hosts_skips_blanks_and_comments_and_reads_valve_infra_lines() -> None:
    text = "\n# comment\n   \n52-54-00-11-22-04, 10.42.0.14 ,farm-gfx10-1\n  # indented comment\n" \
        "525400112205,10.42.0.15,set:farm-gfx10-2\n"
    assert parse_dhcp_hosts(text) == [
        DhcpHost("52:54:00:11:22:04", "10.42.0.14", "farm-gfx10-1"),
        DhcpHost("52:54:00:11:22:05", "10.42.0.15", "farm-gfx10-2"),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("# ok\n52:54:00:11:22:04,10.42.0.14\n", "line 2: expected <mac>,<ip>,<hostname>"),
        ("\n\n52:54:00:11:22:zz,10.42.0.14,a\n", "line 3: '52:54:00:11:22:zz' is not a MAC address"),
        ("52:54:00:11:22:04,10.42.0.300,a\n", "line 1: '10.42.0.300' is not an IPv4 address"),
        ("52:54:00:11:22:04,10.42.0.3,Bad_Name\n", "line 1: 'Bad_Name' is not a hostname"),
        ("52:54:00:11:22:04,10.42.0.3,a,b\n", "line 1: expected"),
        (
            "52:54:00:11:22:04,10.42.0.3,a\n# x\n52-54-00-11-22-04,10.42.0.4,b\n",
            "line 3: MAC 52:54:00:11:22:04 is pinned twice",
        ),
        ("52:54:00:11:22:04,10.42.0.3,a\n52:54:00:11:22:05,10.42.0.3,b\n", "line 2: IP 10.42.0.3 is pinned twice"),
    ],
)
def test_parse_dhcp_hosts_errors_name_the_line(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_dhcp_hosts(text)
    assert str(info.value).startswith(message), str(info.value)


def test_dhcp_hosts_refuses_duplicates_and_bad_entries() -> None:
    with pytest.raises(ValueError, match="IP 10.42.0.14 is pinned twice"):
        dhcp_hosts([("52:54:00:11:22:04", "10.42.0.14", "a"), ("52:54:00:11:22:05", "10.42.0.14", "b")])
    with pytest.raises(ValueError, match="hostname a is pinned twice"):
        dhcp_hosts([("52:54:00:11:22:04", "10.42.0.14", "a"), ("52:54:00:11:22:05", "10.42.0.15", "A")])
    with pytest.raises(ValueError, match="not a MAC address"):
        dhcp_hosts([("nope", "10.42.0.14", "a")])
    with pytest.raises(ValueError, match="needs a MAC address and a name"):
        dhcp_hosts([{"ip_address": "10.42.0.14"}])


def test_dhcp_hostname() -> None:
    assert dhcp_hostname("Farm-GFX9-1") == "farm-gfx9-1"
    assert dhcp_hostname("farm-intel_9.x--1") == "farm-intel-9-x-1"
    assert dhcp_hostname("-a-") == "a"
    assert len(dhcp_hostname("x" * 100)) == 63
    with pytest.raises(ValueError):
        dhcp_hostname("__")


def test_write_atomically(tmp_path: Path) -> None:
    target = tmp_path / "hosts.dhcp"
    target.write_text("old\n")
    os.chmod(target, 0o600)
    assert write_atomically(target, "new\n") == target
    assert target.read_text() == "new\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    write_atomically(str(target), "again\n", mode=0o640)
    assert target.read_text() == "again\n" and stat.S_IMODE(target.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hosts.dhcp"]  # no temp file left behind


def test_write_atomically_leaves_the_old_file_on_error(tmp_path: Path) -> None:
    target = tmp_path / "hosts.dhcp"
    target.write_text("old\n")
    with pytest.raises(TypeError):
        write_atomically(target, b"bytes are not text")  # type: ignore[arg-type]
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hosts.dhcp"]


# ------------------------------------------------------------------------------------------ dnsmasq

CONFIG_ARGS = dict(
    private_interface="private",
    private_ip="10.42.0.1/24",
    dhcp_range="10.42.0.10,10.42.0.100",
    tftp_root="/mnt/tmp/boots/tftp",
    hosts_file="/mnt/tmp/boots/hosts.dhcp",
    leases_file="/mnt/tmp/boots/dnsmasq.leases",
    ipxe_bios="undionly.kpxe",
    ipxe_efi="ipxe.efi",
    boot_url="http://10.42.0.1:8000/",
)


def test_dnsmasq_config_content() -> None:
    lines = dnsmasq_config(**CONFIG_ARGS).splitlines()
    assert lines[0].startswith("#")
    for expected in [
        "port=0",
        "interface=private",
        "dhcp-range=10.42.0.10,10.42.0.100",
        "dhcp-option=option:ntp-server,10.42.0.1",
        "dhcp-option=option:dns-server,10.42.0.1",
        "dhcp-hostsfile=/mnt/tmp/boots/hosts.dhcp",
        "dhcp-leasefile=/mnt/tmp/boots/dnsmasq.leases",
        "dhcp-match=set:efi-x86_64,option:client-arch,7",
        "dhcp-userclass=set:ipxe,iPXE",
        "dhcp-boot=tag:ipxe,http://10.42.0.1:8000/boot/${netX/mac}/boot.ipxe"
        "?platform=${platform}&buildarch=${buildarch}",
        "dhcp-boot=tag:!ipxe,tag:efi-x86_64,ipxe.efi",
        "dhcp-boot=tag:!ipxe,tag:!efi-x86_64,undionly.kpxe",
        "enable-tftp=private",
        "tftp-root=/mnt/tmp/boots/tftp",
    ]:
        assert expected in lines, expected
    assert not any(line.startswith(("server=", "address=", "dhcp-script")) for line in lines)


def test_dnsmasq_config_accepts_a_range_tuple_and_a_bare_ip() -> None:
    override = {"private_ip": "192.168.7.254", "dhcp_range": ("192.168.7.10", "192.168.7.20")}
    text = dnsmasq_config(**{**CONFIG_ARGS, **override})
    assert "dhcp-range=192.168.7.10,192.168.7.20" in text.splitlines()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"private_ip": "10.42.0.50"}, "inside the DHCP range"),
        ({"private_ip": "10.42.0.10/24"}, "inside the DHCP range"),
        ({"private_ip": "10.42.0.100"}, "inside the DHCP range"),
        ({"dhcp_range": "10.42.0.100,10.42.0.10"}, "reversed"),
        ({"dhcp_range": "10.42.0.10"}, "not <first>,<last>"),
        ({"dhcp_range": "10.42.0.10,10.43.0.100"}, "not inside the private network 10.42.0.0/24"),
        ({"private_ip": "10.42.0"}, "not an IPv4 address"),
        ({"private_interface": "eth0\ndhcp-range=x"}, "not a network interface"),
        ({"tftp_root": "tftp"}, "absolute path"),
        ({"hosts_file": "/tmp/hosts\nport=53"}, "cannot hold"),
        ({"leases_file": "/tmp/a,b"}, "cannot hold"),
        ({"ipxe_efi": "../ipxe.efi"}, "not a file name"),
        ({"ipxe_bios": "a b"}, "not a file name"),
        ({"boot_url": "ftp://10.42.0.1"}, "must start with http"),
        ({"boot_url": "http://10.42.0.1/x,y"}, "cannot hold"),
        ({"boot_url": "http://10.42.0.1/?a=1"}, "base URL"),
    ],
)
def test_dnsmasq_config_refuses(override: dict, message: str) -> None:
    with pytest.raises(ValueError) as info:
        dnsmasq_config(**{**CONFIG_ARGS, **override})
    assert message in str(info.value)


def test_the_tftp_root_is_made_and_gets_the_ipxe_binaries(tmp_path: Path) -> None:
    """dnsmasq does not start without its TFTP directory (a gateway's first start): it is made, and the
    BIOS/EFI iPXE files the config hands out are copied there from Debian's ipxe package, once."""
    ipxe = tmp_path / "usr-lib-ipxe"
    ipxe.mkdir()
    (ipxe / "undionly.kpxe").write_bytes(b"bios")
    (ipxe / "ipxe.efi").write_bytes(b"efi")
    tftp = tmp_path / "data" / "tftp"
    config = dnsmasq_config(**{**CONFIG_ARGS, "tftp_root": str(tftp)})
    root, problems = prepare_tftp_root(config, sources=[tmp_path / "nowhere", ipxe])
    assert root == tftp and problems == []
    assert (tftp / "undionly.kpxe").read_bytes() == b"bios" and (tftp / "ipxe.efi").read_bytes() == b"efi"
    assert sorted(p.name for p in tftp.iterdir()) == ["ipxe.efi", "undionly.kpxe"]  # the chain URL is no file
    (tftp / "ipxe.efi").write_bytes(b"the operator's own build")
    prepare_tftp_root(config, sources=[ipxe])
    assert (tftp / "ipxe.efi").read_bytes() == b"the operator's own build"  # present files are kept
    # No ipxe package: the directory is still made (dnsmasq starts), and the missing files are named.
    bare = tmp_path / "bare"
    root, problems = prepare_tftp_root(dnsmasq_config(**{**CONFIG_ARGS, "tftp_root": str(bare)}), sources=[])
    assert root == bare and bare.is_dir() and len(problems) == 2
    assert any(p.startswith("undionly.kpxe is not in the TFTP root") for p in problems)
    assert prepare_tftp_root("port=0\n") == (None, [])


def test_dnsmasq_command() -> None:
    assert dnsmasq_command("/run/x.conf", executable="/usr/sbin/dnsmasq") == [
        "/usr/sbin/dnsmasq",
        "--keep-in-foreground",
        "--conf-file=/run/x.conf",
        "--log-facility=-",
    ]


needs_dnsmasq = pytest.mark.skipif(find_dnsmasq() is None, reason="dnsmasq is not installed (Debian: dnsmasq-base)")


@needs_dnsmasq
async def test_dnsmasq_accepts_the_generated_config() -> None:
    ok, output = await dnsmasq_test(dnsmasq_config(**CONFIG_ARGS))
    assert ok, output
    assert "syntax check OK" in output


@needs_dnsmasq
async def test_dnsmasq_rejects_a_bad_config() -> None:
    ok, output = await dnsmasq_test("port=0\nno-such-option=1\n")
    assert not ok
    assert "bad option" in output


async def test_dnsmasq_test_without_dnsmasq(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("valve_console.backend.boot.dnsmasq.find_dnsmasq", lambda: None)
    assert await dnsmasq_test("port=0\n") == (False, "dnsmasq is not installed")


def test_the_tftp_root_is_readable_by_dnsmasq_under_the_units_umask(tmp_path: Path) -> None:
    """valve-console.service runs with UMask=0077; dnsmasq serves TFTP as its unprivileged user, so the
    TFTP root and its files must be 0755/0644 anyway (else dnsmasq exits 3, "TFTP directory inaccessible"),
    while the data dir above it keeps its own mode."""
    import os

    ipxe = tmp_path / "ipxe"
    ipxe.mkdir()
    (ipxe / "undionly.kpxe").write_bytes(b"bios")
    (ipxe / "ipxe.efi").write_bytes(b"efi")
    data = tmp_path / "data"
    data.mkdir(mode=0o711)
    os.chmod(data, 0o711)
    old = os.umask(0o077)
    try:
        root, problems = prepare_tftp_root(
            dnsmasq_config(**{**CONFIG_ARGS, "tftp_root": str(data / "boot" / "tftp")}), sources=[ipxe])
    finally:
        os.umask(old)
    assert problems == []
    assert {p.name: p.stat().st_mode & 0o777 for p in [data, data / "boot", root, *root.iterdir()]} == {
        "data": 0o711, "boot": 0o755, "tftp": 0o755, "undionly.kpxe": 0o644, "ipxe.efi": 0o644}
