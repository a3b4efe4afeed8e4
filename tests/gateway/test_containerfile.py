"""containers/: the Containerfile says what the seed's container is (systemd as init, the package, rootfs/,
the two volumes, privileged on the host network), and the Makefile runs the podman command these
machines can run. The real build runs when podman is installed (make image-test)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONTAINERS = ROOT / "containers"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Containerfile, continuation lines joined, comments dropped."""
    text = (CONTAINERS / "Containerfile").read_text()
    result: list[tuple[str, str]] = []
    current = ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        word, _, rest = current.strip().partition(" ")
        result.append((word.upper(), rest.strip()))
        current = ""
    assert not current, "the Containerfile ends inside a continued line"
    return result


def args_of(kind: str) -> list[str]:
    return [rest for word, rest in instructions() if word == kind]


def test_the_base_is_debian_bookworm():
    froms = args_of("FROM")
    assert len(froms) == 1
    base = froms[0]
    if base.startswith("${"):
        name = base.strip("${}")
        default = next(rest for rest in args_of("ARG") if rest.startswith(name + "="))
        base = default.split("=", 1)[1]
    assert re.match(r"(docker\.io/(library/)?)?debian:bookworm", base), base


def test_systemd_is_init():
    cmd = args_of("CMD") or args_of("ENTRYPOINT")
    assert cmd and cmd[-1].replace(" ", "") in ('["/sbin/init"]', '["/lib/systemd/systemd"]')
    runs = " ".join(args_of("RUN"))
    assert re.search(r"apt-get install [^&]*\bsystemd\b", runs) and "systemd-sysv" in runs
    assert args_of("STOPSIGNAL") == ["SIGRTMIN+3"]  # what systemd as PID 1 takes as "halt"


def test_the_package_is_installed_with_pip_into_a_venv_and_linked():
    runs = " && ".join(args_of("RUN"))
    assert "python3 -m venv /opt/valve-console" in runs
    assert re.search(r"/opt/valve-console/bin/pip install .*valve-console", runs)
    assert "ln -sf /opt/valve-console/bin/valve-console /usr/local/bin/valve-console" in runs
    # the tools the farm runs
    for pkg in ("dnsmasq", "ser2net", "socat", "snmp", "ipxe"):
        assert re.search(rf"apt-get install [^&]*\b{pkg}\b", runs), pkg


def test_rootfs_is_copied_over_the_root():
    copies = [shlex.split(c) for c in args_of("COPY")]
    assert ["rootfs/", "/"] in copies
    # and the install happens before it: units may name /usr/local/bin/valve-console
    order = [word + " " + rest for word, rest in instructions()]
    assert order.index("COPY rootfs/ /") > next(i for i, x in enumerate(order) if "/opt/valve-console/bin/pip" in x)


def test_the_volumes_and_how_to_run_it():
    volumes = " ".join(args_of("VOLUME"))
    assert '"/mnt/permanent"' in volumes and '"/mnt/tmp"' in volumes
    labels = " ".join(args_of("LABEL"))
    run = re.search(r'RUN="([^"]+)"', labels)
    assert run, labels
    words = run.group(1).split()
    assert words[:2] == ["podman", "run"] and "--privileged" in words and "--network=host" in words
    assert any(w.endswith(":/mnt/permanent") for w in words) and any(w.endswith(":/mnt/tmp") for w in words)


def make_n(*args: str) -> str:
    r = subprocess.run(["make", "-n", "-C", str(CONTAINERS), *args], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_make_container_runs_podman_build_with_vfs_and_chroot():
    out = make_n("container", "REGISTRY=r", "CONTAINER=c", "IGNORE_CACHE=1")
    build = next(line for line in out.splitlines() if line.startswith("podman build"))
    words = shlex.split(build)
    assert words[:6] == ["podman", "build", "--storage-driver", "vfs", "--isolation", "chroot"]
    assert "--no-cache" in words and words[words.index("-t") + 1] == "r/c"
    assert words[words.index("-f") + 1].endswith("/Containerfile")
    assert "pip wheel" in out  # the wheels of the context are built first
    plain = make_n("container", "REGISTRY=r", "CONTAINER=c")
    assert "--no-cache" not in plain and "--log-level=debug" not in plain
    assert "--log-level=debug" in make_n("container", "V=1")
    default = next(line for line in make_n("container").splitlines() if line.startswith("podman build"))
    assert "-t localhost/valve-console/gateway:latest" in default


def test_make_push_container_and_vivian():
    out = make_n("push-container", "REGISTRY=reg:5000", "CONTAINER=farm/gw:1")
    push = [line for line in out.splitlines() if line.startswith("podman push")]
    assert push and shlex.split(push[0])[-1] == "reg:5000/farm/gw:1" and "--tls-verify=false" in push[0]
    vivian = make_n("vivian", "SSH_PORT=2022", "VIVIAN_STATE=/tmp/vivian-state").replace("\\\n", " ")
    run = next(line for line in vivian.splitlines() if " run " in line and "gateway_vm.py" in line)
    words = shlex.split(run)
    assert words[words.index("run") - 1:words.index("run") + 3] == ["/tmp/vivian-state", "run", "--ssh-port", "2022"]
    assert "--image" in words and words[words.index("--image") + 1] == "localhost/valve-console/gateway:latest"
    assert "image-fresh" in vivian and "podman build" not in vivian  # only printed: -n builds nothing


def test_local_base_is_made_with_mmdebstrap():
    out = make_n("local-base")
    assert "mmdebstrap --variant=minbase" in out and "bookworm" in out
    assert "podman --storage-driver vfs import" in out


@pytest.mark.skipif(
    shutil.which("podman") is None or os.environ.get("VALVE_CONSOLE_SKIP_IMAGE_BUILD") == "1",
    reason="podman is not installed (make image-test builds and inspects the image)",
)
def test_the_image_builds_and_holds_the_gateway():
    """The real `podman build` (a few minutes on a cold cache), then the image's files are checked."""
    r = subprocess.run(
        ["make", "-C", str(CONTAINERS), "image-test", "CONTAINER=valve-console/gateway:pytest"],
        capture_output=True, text=True, timeout=15 * 60,
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert "ok   /usr/local/bin/valve-console -> /opt/valve-console/bin/valve-console" in r.stdout
    assert "FAIL" not in r.stdout
