"""The shipped Prometheus files, checked by Prometheus's own tool (Debian's ``prometheus`` package, which
``make test`` installs): the rules and the example config are valid, and ``promtool test rules`` fires each
alert on its fixture series and holds back the near misses (monitoring/prometheus/tests/alerts-test.yml)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

PROMETHEUS_DIR = ROOT / "monitoring" / "prometheus"
RULES = PROMETHEUS_DIR / "valve-console-alerts.yml"
EXAMPLE = PROMETHEUS_DIR / "prometheus.example.yml"
FIXTURE = PROMETHEUS_DIR / "tests" / "alerts-test.yml"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"

pytestmark = pytest.mark.skipif(
    not Path(PROMTOOL).exists(), reason="promtool is missing: apt-get install prometheus (make test installs it)"
)


def promtool(*args: str, cwd: Path) -> str:
    done = subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def alerts() -> list[dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_the_rules_and_the_example_config_are_valid():
    out = promtool("check", "rules", RULES.name, cwd=PROMETHEUS_DIR)
    assert f"SUCCESS: {len(alerts())} rules found" in out
    # the example's rule_files path is relative to it: run where it lies, as a fleet's copy would
    out = promtool("check", "config", EXAMPLE.name, cwd=PROMETHEUS_DIR)
    assert "SUCCESS: 1 rule files found" in out


def test_every_alert_waits_has_a_severity_and_says_what_and_where():
    rules = alerts()
    assert [r["alert"] for r in rules] == [
        "ValveConsolePduUnreachable",
        "ValveConsoleOutletReadbackMismatch",
        "ValveConsoleMachineStuck",
        "ValveConsoleTrainingFailing",
        "ValveConsoleGitlabRefused",
        "ValveConsoleConsoleSilent",
        "ValveConsoleBackendDown",
    ]
    for rule in rules:
        assert rule.get("for"), rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]
        # the farm by name where the gateway answers; the target where it does not
        where = "$labels.instance" if rule["alert"] == "ValveConsoleBackendDown" else "$labels.farm"
        assert where in rule["annotations"]["summary"], rule["alert"]


def test_the_fixture_fires_every_alert_and_only_where_it_should():
    """promtool compares every expected alert (labels and rendered annotations) at each evaluation time,
    and an empty list means nothing fires then."""
    fixture = yaml.safe_load(FIXTURE.read_text())
    tested = {case["alertname"] for test in fixture["tests"] for case in test["alert_rule_test"]}
    assert tested == {r["alert"] for r in alerts()}
    for test in fixture["tests"]:  # each alert is seen firing and seen held back
        cases = test["alert_rule_test"]
        assert any(c["exp_alerts"] for c in cases) and any(not c["exp_alerts"] for c in cases), cases[0]["alertname"]
    out = promtool("test", "rules", FIXTURE.name, cwd=FIXTURE.parent)
    assert "SUCCESS" in out


def test_a_broken_rule_fails_the_fixture(tmp_path):
    """The fixture bites: the PDU alert without its ``for:`` fires during a one-minute blip."""
    (tmp_path / "tests").mkdir()
    shutil.copy(FIXTURE, tmp_path / "tests" / FIXTURE.name)
    (tmp_path / RULES.name).write_text(RULES.read_text().replace("for: 2m", "for: 0m", 1))
    done = subprocess.run([PROMTOOL, "test", "rules", FIXTURE.name], cwd=tmp_path / "tests", capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0
    assert "ValveConsolePduUnreachable" in done.stdout + done.stderr
