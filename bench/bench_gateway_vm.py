"""The gateway VM (vivian/gateway_vm.py): disk build, boot and a DUT's network boot, in seconds.

- **disk**: the VM disk built cold (into an empty cache: image copy, kernel unpacked to a PVH vmlinux,
  modules pruned, VM layer, mke2fs; the kernel .deb is already downloaded) and warm (reused).
- **boot**, per run, from QEMU's start: the API answers through the host forward, tty2 shows the
  console connected, systemd has finished starting (``is-system-running``); run 1 is a first boot
  (fresh volumes: data dir, token, ssh host keys made), the next ones boot on the kept volumes.
- **DUT**: outlet 3 on (vPDU on this host) → the QEMU DUT has DHCP from the gateway's dnsmasq, iPXE-booted
  from its API and registered (``GET /api/v1/machines`` through the forward); then outlet off.
- **power-off**: ``systemctl poweroff`` → QEMU exited.

Under TCG unless KVM works (gateway_vm.py probes it). The peer of this figure is the seed's own note:
its Vivian gateway VM took "a few minutes" and could not be powered off. Run from the project root:
``.venv/bin/python bench/bench_gateway_vm.py [--image IMAGE] [--runs 2] [--no-dut]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, free_port  # noqa: E402
from vivian import gateway_vm as gvm  # noqa: E402
from vivian.vpdu import outlet_mac  # noqa: E402


def load() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def disk_builds(image: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-gwvm-") as tmp:
        cache = Path(tmp) / "cache"
        t0 = time.monotonic()
        disk = gvm.build_disk(image, cache, log=False)
        cold = time.monotonic() - t0
        t0 = time.monotonic()
        gvm.build_disk(image, cache, log=False)
        warm = time.monotonic() - t0
        info = disk.info
        return {"cold_s": round(cold, 1), "warm_s": round(warm, 2), "copy_s": float(info["copy_s"]),
                "mkfs_s": float(info["mkfs_s"]), "size_mb": float(info["size_mb"])}


def boot_once(image: str, state: Path, dut: bool) -> dict[str, float | str]:
    ports = gvm.Ports(free_port(), free_port(), free_port(), free_port())
    cfg = gvm.RunConfig(image=image, state=state, ports=ports)
    out = open(state.parent / f"run-{time.time():.0f}.out", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "vivian/gateway_vm.py", "--image", image, "--state", str(state), "run",
         "--ssh-port", str(ports.ssh), "--api-port", str(ports.api), "--web-port", str(ports.web),
         "--vpdu-port", str(ports.vpdu)], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    result: dict[str, float | str] = {"load_at_start": load()}
    try:
        deadline = time.monotonic() + 900
        status: dict = {}
        while status.get("state") != "ready":
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the gateway VM did not become ready (see {out.name})")
            time.sleep(1)
            try:
                status = json.loads(cfg.state.joinpath("status.json").read_text())
            except (OSError, ValueError):
                status = {}
        for key in ("accel", "disk_s", "api_ready_s", "tty2_drawn_s", "boot_finished_s"):
            result[key] = status[key]
        state_dir = gvm.StateDir(state)
        if dut:
            token = gvm.guest(cfg, state_dir, "cat /mnt/permanent/valve-console/token").stdout.strip()
            mac = outlet_mac(3)
            with httpx.Client(base_url=f"http://127.0.0.1:{ports.api}", timeout=60,
                              headers={"Authorization": f"Bearer {token}"}) as api:
                api.delete(f"/api/v1/machine/{mac}/")  # a later run registers it again, not just re-boots it
                t0 = time.monotonic()
                api.post("/api/v1/pdu/vpdu1/port/3/state", json={"state": "on"}).raise_for_status()
                while mac not in api.get("/api/v1/machines").json()["machines"]:
                    if time.monotonic() - t0 > 300:
                        raise SystemExit("the DUT did not register within 300 s")
                    time.sleep(0.5)
                result["dut_registered_s"] = round(time.monotonic() - t0, 1)
                api.post("/api/v1/pdu/vpdu1/port/3/state", json={"state": "off"})
        t0 = time.monotonic()
        gvm.guest(cfg, state_dir, "systemctl poweroff", timeout=60)
        result["exit_code"] = proc.wait(300)
        result["poweroff_s"] = round(time.monotonic() - t0, 1)
        return result
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(200)
        out.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image", default=gvm.DEFAULT_IMAGE)
    p.add_argument("--runs", type=int, default=2, help="boots (1: first boot, then on the kept volumes)")
    p.add_argument("--no-dut", action="store_true", help="do not boot a DUT")
    p.add_argument("--no-disk", action="store_true", help="do not measure the cold disk build")
    args = p.parse_args()
    print(f"load average {load()} on {os.cpu_count()} CPUs", flush=True)
    if not args.no_disk:
        print(f"disk: {json.dumps(disk_builds(args.image))}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-gwvm-state-") as tmp:
        state = Path(tmp) / "state"
        for run in range(1, args.runs + 1):
            print(f"boot {run}{' (first boot)' if run == 1 else ''}: "
                  f"{json.dumps(boot_once(args.image, state, not args.no_dut))}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
