"""valve-infra's built-in Sgt. Hartman templates, submitted unchanged, run on Vivian DUTs.

REGISTER and BOOTLOOP are valve-infra's ``register.yml.j2`` and ``bootloop.yml.j2`` as
``valve-infra.md`` §3.2 and §4.2 describe them (written here from that description): they boot
``{{ minio_url }}/boot/default_kernel`` with ``.../boot/default_boot2container.cpio.xz``, pull
``machine_registration`` from ``{{ fdo_proxy_registry }}`` and use ``machine_id`` and ``local_tty_device``.
On the gateway ``minio_url`` is the gateway itself, whose ``/boot/`` serves its default boot files as
MinIO's ``boot`` bucket did. The Vivian DUT's ``check`` compares its tags with the record the way
``machine_registration check`` does, so a machine with manual tags passes it.
"""

from __future__ import annotations

import json

import httpx

from tests.conftest import api_url, eventually
from tests.jobs.conftest import job_yaml, wait_job

MAC = "52:54:00:11:22:03"

REGISTER = """\
version: 1
target:
  id: '{{ machine_id }}'
timeouts:
  overall:
    minutes: 5
    retries: 0
console_patterns:
    session_end:
        regex: "^MaRS: Registration .*$"
    job_success:
        regex: "^MaRS: Registration complete$"
deployment:
  start:
    kernel:
      url: '{{ minio_url }}/boot/default_kernel'
      cmdline:
        - b2c.container="-ti --tls-verify=false docker://{{ fdo_proxy_registry }}/mupuf/valve-infra/\
machine_registration:latest register"
        - b2c.ntp_peer="ci-gateway" b2c.cache_device=auto loglevel=6
    initramfs:
      url: '{{ minio_url }}/boot/default_boot2container.cpio.xz'
"""

BOOTLOOP = """\
version: 1
target:
  id: "{{ machine_id }}"
timeouts:
  first_console_activity:
    minutes: 2
    retries: 0
  overall:
    minutes: 3
    retries: 0
console_patterns:
    session_end:
        regex: "^.*It's now safe to turn off your computer\\r$"
    job_success:
        regex: "^.*Execution is over, pipeline status: 0\\r$"
    job_warn:
        regex: "^The configured console is not connected to SALAD$"
deployment:
  start:
    kernel:
      url: "{{ minio_url }}/boot/default_kernel"
      cmdline:
        - b2c.container="-ti --tls-verify=false docker://{{ fdo_proxy_registry }}/mupuf/valve-infra/\
machine_registration:latest check"
        - b2c.ntp_peer="ci-gateway" b2c.pipefail b2c.cache_device=auto b2c.poweroff_delay=15
        - console={{ local_tty_device }},115200 earlyprintk=vga,keep SALAD.machine_id={{ machine_id }}
        - loglevel=6
    initramfs:
      url: "{{ minio_url }}/boot/default_boot2container.cpio.xz"
"""


async def test_valve_infras_register_and_bootloop_templates_run_on_a_vivian_dut(farm, vivian):
    files = farm.settings.data_dir / "files"
    files.mkdir(parents=True, exist_ok=True)
    (files / "kernel").write_bytes(b"KERNEL-IMAGE")
    (files / "initramfs.cpio.xz").write_bytes(b"INITRAMFS")
    async with httpx.AsyncClient(base_url=api_url(farm), headers={"Authorization": f"Bearer {farm.token}"},
                                 timeout=30) as http:
        await vivian.set_outlet(3, True)  # the DUT boots the default registration and appears
        await eventually(lambda: farm.machines.machines.get(MAC), "the DUT registered", timeout=30)
        r = await http.patch(f"/api/v1/machine/{MAC}/", json={
            "pdu": "vpdu1", "pdu_port_id": "3", "ready_for_service": True, "manual_tags": ["big", "rack:3"]})
        assert r.status_code == 200, r.text
        for template, verdict in ((REGISTER, "MaRS: Registration complete"), (BOOTLOOP, "No differences found!")):
            r = await http.post("/api/v1/jobs", json={"job": template, "target": {"id": MAC}})
            assert r.status_code == 200, r.text
            job_id = r.json()["id"]
            # the DUT is told to boot the gateway's default kernel, as valve-infra's MinIO boot bucket gave it
            config = await eventually(lambda: farm.jobs.boot_config(MAC), "the job's boot config", every=0.01)
            assert config.kernel_url == f"{api_url(farm)}/boot/default_kernel"
            assert config.initrd_url == f"{api_url(farm)}/boot/default_boot2container.cpio.xz"
            job = await wait_job(http, job_id, timeout=60)
            console = (await http.get(f"/api/v1/job/{job_id}/console")).text
            assert job["status"] == "PASS", (job, console)
            assert verdict in console
            log = [m async for m in _ctrl(http, job_id)]
            assert log and not any("undefined" in m for m in log), log  # every variable they use is defined
        machine = (await http.get(f"/api/v1/machine/{MAC}/")).json()
        assert machine["manual_tags"] == ["big", "rack:3"] and "big" not in machine["tags"]
        assert (await http.get("/boot/default_kernel")).content == b"KERNEL-IMAGE"
        assert (await http.get("/boot/default_boot2container.cpio.xz")).content == b"INITRAMFS"
        await vivian.set_outlet(3, False)


async def test_an_undefined_variable_renders_empty_with_a_warning(jobfarm):
    farm, http, macs, duts = jobfarm
    text = job_yaml("pass").replace("vivian.script=pass", "vivian.script=pass b2c.minio={{ nothing_here }}")
    r = await http.post("/api/v1/jobs", json={"job": text, "target": {"id": macs[0]}})
    assert r.status_code == 200, r.text
    job = await wait_job(http, r.json()["id"])
    assert job["status"] == "PASS"
    console = (await http.get(f"/api/v1/job/{job['id']}/console")).text
    assert "Command line: vivian.script=pass b2c.minio= SALAD.machine_id=" in console  # the fake DUT echoes it
    log = [m async for m in _ctrl(http, job["id"])]
    assert any("undefined variables, rendered empty as valve-infra's Jinja2 did: nothing_here" in m for m in log)


async def _ctrl(http: httpx.AsyncClient, job_id: str):
    async with http.stream("GET", f"/api/v1/job/{job_id}/events") as stream:
        async for line in stream.aiter_lines():
            if line.startswith("data: ") and '"msg"' in line:
                yield json.loads(line[6:])["msg"]
            if line.startswith("event: session_end"):
                return
