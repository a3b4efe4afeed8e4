"""Consoles can be removed by the operator (API), and all console logs stay under a farm-wide cap."""

from __future__ import annotations

import asyncio
import socket

from tests.conftest import eventually
from tests.security.conftest_consoles import dut, dut_network_farm, register

MAC = "52:54:00:11:22:05"


def log_files(farm) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in (farm.settings.data_dir / "consoles").glob("*.log*")}


async def test_the_operator_removes_a_console_and_its_stored_state(tmp_path):
    data = tmp_path / "data"
    async with dut_network_farm(data, console_local_sources=["auto"]) as (farm, http):
        await register(http, MAC, "10.42.0.15")
        reader, writer = await dut(farm)
        writer.write(f"SALAD.machine_id={MAC}\nsecret boot output\n".encode())
        await writer.drain()
        info = await eventually(
            lambda: (farm.consoles.consoles.get(MAC) and farm.consoles.consoles[MAC].stream is not None), "bound"
        )
        port = farm.consoles.consoles[MAC].tcp_port
        assert info and port and any(name.startswith(MAC) for name in log_files(farm))

        assert (await http.delete(f"/api/v1/console/{MAC}", headers={"Authorization": ""})).status_code == 401
        job_reader = farm.consoles.subscribe(MAC)  # a running job reads it: refused in words
        r = await http.delete(f"/api/v1/console/{MAC}")
        assert r.status_code == 409 and "job" in r.json()["error"]
        farm.consoles.unsubscribe(MAC, job_reader)

        r = await http.delete(f"/api/v1/console/{MAC}")
        assert r.status_code == 200 and r.json() == {"removed": MAC}
        assert await asyncio.wait_for(reader.read(), 5) == b""  # its netconsole connection is dropped
        assert not any(name.startswith(MAC) for name in log_files(farm))
        assert MAC not in (await http.get("/api/v1/consoles")).json()["consoles"]
        assert (await http.get(f"/api/v1/console/{MAC}/log")).status_code == 404
        r = await http.delete(f"/api/v1/console/{MAC}")
        assert r.status_code == 404 and "no console" in r.json()["error"]
        r = await http.delete("/api/v1/console/not-a-mac")
        assert r.status_code == 400
        with socket.socket() as s:  # its TCP port is closed
            assert s.connect_ex(("127.0.0.1", port)) != 0
    async with dut_network_farm(data) as (farm, http):  # and it does not come back
        assert MAC not in farm.consoles.consoles
        # A registered machine gets a new console with its next output.
        reader, writer = await dut(farm, "127.0.0.1")
        await register(http, MAC, "127.0.0.1")
        writer.write(f"SALAD.machine_id={MAC}\nback\n".encode())
        await writer.drain()
        await eventually(lambda: MAC in farm.consoles.consoles and farm.consoles.consoles[MAC].stream, "new console")
        writer.close()


async def test_console_logs_stay_under_the_farm_wide_cap_oldest_first(tmp_path):
    cap = 200 * 1024
    async with dut_network_farm(
        tmp_path / "data",
        console_local_sources=["auto"],
        console_log_max_bytes=16 * 1024,
        console_log_backups=3,
        console_logs_max_bytes=cap,
    ) as (farm, http):
        old_macs = [f"52:54:00:11:23:{i:02x}" for i in range(4)]
        for i, mac in enumerate(old_macs):  # four machines ran and went away, ~60 KiB of console each
            await register(http, mac, f"10.42.0.{50 + i}")
            reader, writer = await dut(farm)
            writer.write(f"SALAD.machine_id={mac}\n".encode())
            for n in range(60):
                writer.write(f"{mac} line {n:04d} ".encode() + b"x" * 1000 + b"\n")
            writer.write(b"SALAD.ping\n")
            await writer.drain()
            assert await asyncio.wait_for(reader.readline(), 5) == b"SALAD.pong\n"
            writer.close()
            await asyncio.sleep(0.05)
        live = "52:54:00:11:23:99"
        await register(http, live, "10.42.0.99")
        reader, writer = await dut(farm)
        writer.write(f"SALAD.machine_id={live}\n".encode())
        for n in range(120):  # the live one writes ~120 KiB more
            writer.write(f"live line {n:04d} ".encode() + b"y" * 1000 + b"\n")
        writer.write(b"SALAD.ping\n")
        await writer.drain()
        assert await asyncio.wait_for(reader.readline(), 5) == b"SALAD.pong\n"

        total = await eventually(
            lambda: (sum(log_files(farm).values()) <= cap) and sum(log_files(farm).values()), "under the cap"
        )
        assert total <= cap
        files = log_files(farm)
        # The oldest machine's rotated logs went first; the live console's current log is whole.
        assert not any(name.startswith(old_macs[0] + ".log.") for name in files)
        assert f"{live}.log" in files
        tail = (farm.settings.data_dir / "consoles" / f"{live}.log").read_bytes()
        assert tail.rstrip().endswith(b"SALAD.ping")
        # A job's slice of the live machine's stream still reads (what was evicted is just gone).
        console = farm.consoles.consoles[live]
        assert console.slice(console.total - 2000).endswith(b"SALAD.ping\n")
        writer.close()
