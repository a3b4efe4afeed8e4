"""Issue 15, item 13 for registration, names and the hosts file.

- Validation regexes ended in ``$``, which also matches before a trailing newline: ``"base_name": "nl\\n"``
  was accepted (and a newline would reach the DHCP hosts file, the dnsmasq config or a kernel command line).
- An IntegrityError in a PATCH race (two machines given the same outlet at once) answered 500 with the
  SQL statement; now one wins and the other gets a 4xx in words.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.conftest import api_url
from valve_console.backend import boot

REG = {
    "base_name": "gfx9",
    "tags": ["amdgpu:gfxversion:gfx9"],
    "mac_address": "52:54:00:dd:00:01",
    "ip_address": "10.42.0.21",
    "local_tty_device": "ttyUSB0",
}


@pytest.fixture
async def http(farm):
    async with httpx.AsyncClient(base_url=api_url(farm), headers={"Authorization": f"Bearer {farm.token}"}) as c:
        yield c


@pytest.mark.parametrize(
    "change, words",
    [
        ({"base_name": "nl\n"}, "'nl\\n' is not a base name"),
        ({"local_tty_device": "ttyS0\n"}, "'ttyS0\\n' is not a tty device name"),
        ({"local_tty_device": "/dev/ttyS0\n"}, "'ttyS0\\n' is not a tty device name"),
        ({"tags": ["ok", "line\nbreak"]}, "invalid tag"),
    ],
)
async def test_a_trailing_newline_is_refused_in_words_and_nothing_is_stored(http, change, words) -> None:
    r = await http.post("/api/v1/machine/", json={**REG, **change})
    assert r.status_code == 400, r.text
    assert words in r.json()["error"]
    assert (await http.get("/api/v1/machines")).json()["machines"] == {}


async def test_an_operator_patch_with_a_newline_is_refused(http) -> None:
    assert (await http.post("/api/v1/machine/", json=REG)).status_code == 200
    r = await http.patch(f"/api/v1/machine/{REG['mac_address']}/", json={"local_tty_device": "ttyUSB1\n"})
    assert r.status_code == 400 and "is not a tty device name" in r.json()["error"]
    assert (await http.get(f"/api/v1/machine/{REG['mac_address']}/")).json()["local_tty_device"] == "ttyUSB0"


def test_the_boot_and_hosts_file_checks_refuse_a_trailing_newline() -> None:
    # A hosts file line is made of normalised parts: no newline gets into it.
    assert boot.DhcpHost.make("52:54:00:DD:00:01\n", "10.42.0.21\n", "valve-gfx9-1\n").line() == (
        "52:54:00:dd:00:01,10.42.0.21,valve-gfx9-1")
    with pytest.raises(ValueError, match="is not a hostname"):
        boot.DhcpHost.make("52:54:00:dd:00:01", "10.42.0.21", "valve-gfx9-1\nx")
    assert boot.safe_file_name("kernel") and not boot.safe_file_name("kernel\n")
    with pytest.raises(ValueError, match="api_host"):
        boot.registration_boot(kernel_url="http://h/k", initrd_url="http://h/i", api_host="10.42.0.1:8000\n")
    conf = dict(private_ip="10.42.0.1/24", dhcp_range="10.42.0.10,10.42.0.100", tftp_root="/t", hosts_file="/h",
                leases_file="/l", boot_url="http://10.42.0.1:8000")
    with pytest.raises(ValueError, match="is not a network interface name"):
        boot.dnsmasq_config("eth0\n", ipxe_bios="undionly.kpxe", ipxe_efi="ipxe.efi", **conf)
    with pytest.raises(ValueError, match="is not a file name inside the TFTP root"):
        boot.dnsmasq_config("eth0", ipxe_bios="undionly.kpxe\n", ipxe_efi="ipxe.efi", **conf)


async def test_a_file_name_with_a_newline_is_refused(farm) -> None:
    async with httpx.AsyncClient(base_url=api_url(farm)) as anonymous:
        r = await anonymous.get("/files/kernel%0A")
    assert r.status_code == 400 and "is not a file name" in r.json()["error"]


async def test_machines_given_one_outlet_at_once_get_a_conflict_in_words(http) -> None:
    """Sixteen machines ask for the same outlet at once, eight times over: one gets it each time."""
    r = await http.post("/api/v1/pdu/", json={"name": "d1", "driver": "dummy", "config": {"ports": 8}})
    assert r.status_code == 201, r.text
    macs = [f"52:54:00:dd:00:{n:02x}" for n in range(1, 17)]
    for n, mac in enumerate(macs):
        reg = {**REG, "mac_address": mac, "ip_address": f"10.42.0.{30 + n}"}
        assert (await http.post("/api/v1/machine/", json=reg)).status_code == 200
    for port in range(8):
        answers = await asyncio.gather(
            *(http.patch(f"/api/v1/machine/{mac}/", json={"pdu": "d1", "pdu_port_id": str(port)}) for mac in macs)
        )
        codes = sorted(r.status_code for r in answers)
        assert codes == [200] + [400] * (len(macs) - 1), [r.text for r in answers if r.status_code != 400]
        for r in answers:
            if r.status_code != 200:
                error = r.json()["error"]
                assert f"outlet {port} of PDU d1 is already used by test-gfx9-" in error, error
                assert "UPDATE" not in error and "SQL" not in error and "Integrity" not in error
    outlets = [m["pdu"]["port_id"] for m in (await http.get("/api/v1/machines")).json()["machines"].values()
               if m["pdu"]["name"] == "d1"]
    assert outlets and len(outlets) == len(set(outlets))  # never two machines on one outlet
