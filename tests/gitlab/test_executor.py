"""The custom-executor stages, run as gitlab-runner runs them: the exec and args from our config.toml,
the ``CUSTOM_ENV_*`` variables and the exit-code variables, against a real backend with Vivian DUTs."""

from __future__ import annotations

import asyncio
import json
import os
import tomllib
from pathlib import Path

from tests.e2e.test_jobs_e2e import job_yaml
from tests.conftest import eventually
from tests.gitlab.conftest import TAGS, add_instance, mac_of

BUILD_FAILURE, SYSTEM_FAILURE = 37, 42


def ci_script(tmp: Path, script: str, valve_console: str) -> Path:
    """What gitlab-runner's generated step_script boils down to: the CI job's own commands."""
    path = tmp / f"script-{script}.sh"
    path.write_text(
        "set -eo pipefail\n"
        "pwd > where.txt\n"
        "cat > job.yml <<'EOF'\n" + job_yaml(script) + "EOF\n"
        f"'{valve_console}' job run job.yml\n"
    )
    return path


class Stage:
    def __init__(self, exe: str, args: list[str]) -> None:
        self.exe, self.args = exe, args
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("VALVE_CONSOLE_")}
        self.env.update(
            {
                "BUILD_FAILURE_EXIT_CODE": str(BUILD_FAILURE),
                "SYSTEM_FAILURE_EXIT_CODE": str(SYSTEM_FAILURE),
                "CUSTOM_ENV_CI_JOB_ID": "4242",
                "CUSTOM_ENV_CI_JOB_NAME": "vk-cts",
                "CUSTOM_ENV_CI_PROJECT_PATH": "mesa/mesa",
                "CUSTOM_ENV_CI_PROJECT_DIR": "/builds/mesa/mesa",
                "CUSTOM_ENV_CI_BUILDS_DIR": "/builds",
                "CUSTOM_ENV_CI_RUNNER_TAGS": json.dumps(TAGS),
                "CUSTOM_ENV_CI_SERVER_URL": "https://gitlab.example.com",
            }
        )

    async def __call__(self, *extra: str, args: list[str] | None = None) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            self.exe,
            *(args or self.args),
            *extra,
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


async def test_custom_executor_stages_run_the_ci_job_on_this_runners_dut(farm, vivian, http, fake, tmp_path):
    farm.jobs.drain_delay = 0.2
    for outlet in (1, 2):
        reg = {"base_name": "virtio", "tags": TAGS, "mac_address": mac_of(outlet), "ip_address": f"10.42.0.{outlet}"}
        assert (await http.post("/api/v1/machine/", json=reg)).status_code == 200
        patch = {"pdu": "vpdu1", "pdu_port_id": str(outlet), "ready_for_service": True, "pdu_off_delay": 0.2}
        assert (await http.patch(f"/api/v1/machine/{mac_of(outlet)}/", json=patch)).status_code == 200
    await add_instance(http, fake)
    path = farm.gitlab.config_path

    def runner_of_dut2():
        config = tomllib.loads(path.read_text()) if path.exists() else {}
        found = [r for r in config.get("runners", []) if f"VALVE_CONSOLE_MACHINE={mac_of(2)}" in r["environment"]]
        return found[0] if found and len(config["runners"]) == 2 else None

    runner = await eventually(runner_of_dut2, "config.toml with both runners")
    custom = runner["custom"]
    stage = {name: Stage(custom[f"{name}_exec"], custom[f"{name}_args"]) for name in ("config", "prepare", "run")}
    stage["cleanup"] = Stage(custom["cleanup_exec"], custom["cleanup_args"])

    rc, out, err = await stage["config"]()
    assert rc == 0, err
    config = json.loads(out)
    build_dir = Path(config["builds_dir"])
    assert build_dir == Path(runner["builds_dir"]) / "4242" and config["builds_dir_is_shared"] is False
    assert config["driver"]["name"] == "valve-console" and config["job_env"]["VALVE_CONSOLE_MACHINE"] == mac_of(2)

    # no pre-build filter set (gitlab_allowed_users/_namespaces empty): any user's job is admitted
    assert not any(arg.startswith("--allow-") for arg in custom["prepare_args"])
    stage["prepare"].env.update({"CUSTOM_ENV_GITLAB_USER_LOGIN": "eve", "CUSTOM_ENV_CI_PROJECT_NAMESPACE": "eve"})
    rc, out, err = await stage["prepare"]()
    assert rc == 0, err
    assert "test-virtio-2" in out and "mesa/mesa" in out and build_dir.is_dir()

    # step_script: the CI job runs `valve-console job run` (no -i, no -e): it lands on DUT 2, and passes
    rc, out, err = await stage["run"](str(ci_script(tmp_path, "pass", custom["run_exec"])), "step_script")
    assert rc == 0, err
    assert "Execution is over, pipeline status: 0" in out
    assert (build_dir / "where.txt").read_text().strip() == str(build_dir)
    jobs = (await http.get("/api/v1/jobs")).json()["jobs"]
    assert [j["machine"] for j in jobs] == [mac_of(2)] and jobs[0]["status"] == "PASS"

    # a failing job is a build failure, with the runner's code
    rc, out, err = await stage["run"](str(ci_script(tmp_path, "fail", custom["run_exec"])), "step_script")
    assert rc == BUILD_FAILURE, err
    assert "Execution is over, pipeline status: 1" in out and "step_script failed (exit code 3)" in err
    assert (await http.get("/api/v1/jobs")).json()["jobs"][0]["status"] == "FAIL"

    # an unknown stage name is fine; a missing script is a system failure
    rc, _, err = await stage["run"](str(tmp_path / "nope.sh"), "step_release")
    assert rc == SYSTEM_FAILURE and "does not exist" in err

    rc, _, err = await stage["cleanup"]()
    assert rc == 0, err
    assert not build_dir.exists()

    # prepare refuses a machine that is not ready, and a backend that is down
    await http.patch(f"/api/v1/machine/{mac_of(2)}/", json={"ready_for_service": False})
    rc, _, err = await stage["prepare"]()
    assert rc == SYSTEM_FAILURE and "not ready for service" in err
    args = list(custom["prepare_args"])
    args[args.index("--api") + 1] = "http://127.0.0.1:9"
    rc, _, err = await stage["prepare"](args=args)
    assert rc == SYSTEM_FAILURE and "unreachable" in err
