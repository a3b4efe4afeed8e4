"""What valve-infra's 2022-09 dashboard (``valve-infra.md`` §10.2) reads and does, against a real farm.

The dashboard runs on the gateway (no token: the gateway trusts its own addresses) and uses urllib: it
merges ``GET /api/v1/pdus`` with ``GET /api/v1/machines`` by ``pdu.name``/``pdu.port_id``, shows a
machine's ``state`` (``TRAINING <current_loop_count>/<boot_loop_counts>`` in training) or the raw outlet
state, and its buttons POST discover (JSON body), retire, activate and cancel_job, showing the answer's
text in its footer.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

from tests.conftest import api_url, eventually
from tests.jobs.conftest import job_yaml

MAC = "52:54:00:11:22:03"


def fetch(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def post(url: str, data: dict | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, data=json.dumps(data).encode() if data else None, method="POST")
    if data:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def dashboard_rows(host: str) -> dict[str, dict[str, str]]:
    """PDU name → port → the text the dashboard shows in its state column."""
    board = {pdu: ports["ports"] for pdu, ports in fetch(f"{host}/api/v1/pdus")["pdus"].items()}
    for machine in fetch(f"{host}/api/v1/machines")["machines"].values():
        name, port = machine["pdu"]["name"], machine["pdu"]["port_id"]
        if name is not None and port is not None:
            board[name][port].update(machine)
    rows: dict[str, dict[str, str]] = {}
    for pdu, ports in board.items():
        for num, entry in ports.items():
            state = entry.get("state")
            if state == "TRAINING":
                state = f"{state} {entry['training']['current_loop_count']}/{entry['training']['boot_loop_counts']}"
            rows.setdefault(pdu, {})[num] = str(state)
    return rows


async def test_the_dashboards_view_and_buttons(tmp_path):
    from tests.compat.conftest import farm_trusting_the_gateway
    from vivian.vpdu import VirtualPDU

    async with farm_trusting_the_gateway(tmp_path, training=True, training_loops=2, training_qualify=2) as farm:
        host = api_url(farm)
        vpdu = VirtualPDU(num_ports=4, api=host, console="{}:{}".format(*farm.netconsole_address),
                          log_dir=tmp_path / "vivian")
        port = await vpdu.start("127.0.0.1", 0)
        try:
            await farm.power.add_pdu("vpdu1", "vpdu", {"hostname": f"127.0.0.1:{port}"})
            await eventually(lambda: farm.power.outlet_ids("vpdu1"), "the vPDU's outlets")
            assert (await asyncio.to_thread(dashboard_rows, host))["vpdu1"]["3"] == "OFF"  # DISCOVER shows
            status, text = await asyncio.to_thread(post, f"{host}/api/v1/machine/discover",
                                                   {"pdu": "vpdu1", "port_id": "3"})
            assert status == 200 and text.startswith("Booting machine behind port 3 from PDU vpdu1."), text
            # the DUT registers, takes the outlet, and trains: "TRAINING n/2", never "None/None"
            seen = await eventually(
                lambda: asyncio.to_thread(lambda: dashboard_rows(host)["vpdu1"]["3"].startswith("TRAINING")
                                          and dashboard_rows(host)["vpdu1"]["3"]), "training shown", timeout=60)
            assert seen in ("TRAINING 0/2", "TRAINING 1/2", "TRAINING 2/2"), seen
            await eventually(lambda: asyncio.to_thread(lambda: dashboard_rows(host)["vpdu1"]["3"] == "IDLE"),
                             "ready for service", timeout=90)
            status, text = await asyncio.to_thread(post, f"{host}/api/v1/machine/{MAC}/retire")
            assert status == 200 and text.startswith("Retired machine 10.42.0.") and "vpdu1 / 3" in text, text
            status, text = await asyncio.to_thread(post, f"{host}/api/v1/machine/{MAC}/activate")
            assert status == 200 and text.startswith("Activated machine"), text
            job = (await farm.jobs.submit(job_yaml("hang", target=f"id: '{MAC}'")))["id"]
            await eventually(lambda: farm.jobs.running.get(MAC) == job, "the job running", timeout=30)
            assert (await asyncio.to_thread(dashboard_rows, host))["vpdu1"]["3"] == "RUNNING"  # CANCEL shows
            status, text = await asyncio.to_thread(post, f"{host}/api/v1/machine/{MAC}/cancel_job")
            assert status == 200 and text.startswith("Canceling job in machine 10.42.0."), text
            assert farm.jobs.jobs[job].row.status != "PASS"
        finally:
            await vpdu.stop()
