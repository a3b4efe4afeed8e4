"""The real Prometheus server (Debian's ``/usr/bin/prometheus``) scraping two Vivian farms with the shipped
rules: when one farm's vPDU stops, the PDU-unreachable alert fires for that farm's target, and only for it.

Two Farms run in this process, each with its own vPDU (``tests.conftest.running_farm`` and ``running_vpdu``,
what the ``farm`` and ``vivian`` fixtures use). Prometheus scrapes both every second and evaluates every
second. The rules are the shipped file except for one change, made in a copy: ValveConsolePduUnreachable's
``for: 2m`` becomes ``for: 1s`` so that the test waits seconds, not minutes (its expression is the shipped one).
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any, AsyncIterator

import httpx
import pytest
import yaml

from tests.conftest import eventually, make_settings, running_farm, running_vpdu
from tests.e2e.helpers import free_port
from tests.monitoring.test_rules import RULES

PROMETHEUS = Path("/usr/bin/prometheus")
ALERT = "ValveConsolePduUnreachable"

pytestmark = pytest.mark.skipif(
    not PROMETHEUS.exists(), reason="/usr/bin/prometheus is missing: apt-get install prometheus (make test installs it)"
)


def fast_rules(path: Path) -> Path:
    """The shipped rules with the PDU alert's ``for`` shortened to 1 s (the only change)."""
    rules = yaml.safe_load(RULES.read_text())
    [rule] = [r for g in rules["groups"] for r in g["rules"] if r.get("alert") == ALERT]
    rule["for"] = "1s"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return path


@contextlib.asynccontextmanager
async def running_prometheus(tmp: Path, targets: list[str]) -> AsyncIterator[str]:
    """Prometheus on a free loopback port scraping ``targets`` every second with the fast rules; its URL.
    Its log is ``tmp/prometheus.log`` (quoted when it does not get ready)."""
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": [str(fast_rules(tmp / "alerts.yml"))],
        "scrape_configs": [{"job_name": "valve-console", "static_configs": [{"targets": targets}]}],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    url = f"http://127.0.0.1:{free_port()}"
    log = tmp / "prometheus.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            str(PROMETHEUS), f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'tsdb'}",
            f"--web.listen-address={url.removeprefix('http://')}", "--log.level=warn",
            stdout=out, stderr=out,
        )
    try:
        async with httpx.AsyncClient(base_url=url, timeout=5) as c:
            async def ready() -> bool:
                if proc.returncode is not None:
                    raise AssertionError(f"prometheus exited {proc.returncode}:\n{log.read_text()}")
                with contextlib.suppress(httpx.TransportError):
                    return (await c.get("/-/ready")).status_code == 200
                return False

            await eventually(ready, "Prometheus to be ready", timeout=60, every=0.2)
        yield url
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def api(c: httpx.AsyncClient, path: str, **params: str) -> Any:
    r = await c.get(path, params=params)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "success", body
    return body["data"]


async def test_a_stopped_vpdu_fires_the_pdu_alert_for_its_farm_only(tmp_path):
    async with contextlib.AsyncExitStack() as stack:
        farms = {}
        for name in ("farm-a", "farm-b"):
            farm = await stack.enter_async_context(running_farm(make_settings(tmp_path / name, farm_name=name)))
            vpdu = await stack.enter_async_context(running_vpdu(farm, tmp_path / f"{name}-vivian"))
            farms[name] = (farm, vpdu)
        target = {name: "{}:{}".format(*farm.api_address) for name, (farm, _) in farms.items()}
        # both PDUs answered their first poll before Prometheus looks: nothing is pending from a start
        await eventually(lambda: all(f.power.pdus["vpdu1"].reachable for f, _ in farms.values()),
                         "both vPDUs to answer a poll", timeout=20)

        prom_dir = tmp_path / "prometheus"
        prom_dir.mkdir()
        url = await stack.enter_async_context(running_prometheus(prom_dir, sorted(target.values())))
        c = await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=5))

        async def by_instance(query: str) -> dict[str, float]:
            result = (await api(c, "/api/v1/query", query=query))["result"]
            return {s["metric"]["instance"]: float(s["value"][1]) for s in result}

        async def both(query: str) -> dict[str, float] | None:
            found = await by_instance(query)
            return found if set(found) == set(target.values()) else None

        up = await eventually(lambda: both("up"), "both targets scraped", timeout=30, every=0.2)
        assert up == {t: 1.0 for t in target.values()}
        reachable = await eventually(lambda: both('valve_console_pdu_reachable{pdu="vpdu1"}'),
                                     "both farms' PDU figures", timeout=30, every=0.2)
        assert reachable == {t: 1.0 for t in target.values()}
        # each target says its own farm's name: what the alert will name
        farm_of = {s["metric"]["instance"]: s["metric"]["farm"]
                   for s in (await api(c, "/api/v1/query", query="valve_console_info"))["result"]}
        assert farm_of == {target["farm-a"]: "farm-a", target["farm-b"]: "farm-b"}
        # the rules are loaded and nothing fires on two healthy farms
        groups = (await api(c, "/api/v1/rules"))["groups"]
        assert ALERT in {r["name"] for g in groups for r in g["rules"]}
        assert (await api(c, "/api/v1/alerts"))["alerts"] == []

        await farms["farm-a"][1].stop()  # farm A's vPDU stops serving: its PDU no longer answers

        async def firing() -> list[dict[str, Any]] | None:
            alerts = (await api(c, "/api/v1/alerts"))["alerts"]
            return alerts if any(a["labels"]["alertname"] == ALERT and a["state"] == "firing" for a in alerts) else None

        alerts = await eventually(firing, f"{ALERT} to fire", timeout=60, every=0.2)
        [alert] = [a for a in alerts if a["labels"]["alertname"] == ALERT]
        assert alert["state"] == "firing"
        assert alert["labels"]["instance"] == target["farm-a"]
        assert alert["labels"]["farm"] == "farm-a"
        assert alert["labels"]["pdu"] == "vpdu1" and alert["labels"]["severity"] == "critical"
        assert alert["annotations"]["summary"] == "PDU vpdu1 of farm farm-a is unreachable"
        # farm B: no alert of any kind, pending or firing; both backends still answer their scrapes
        assert [a for a in alerts if a["labels"].get("instance") == target["farm-b"]] == []
        assert await by_instance('valve_console_pdu_reachable{pdu="vpdu1"}') == {target["farm-a"]: 0.0,
                                                                                 target["farm-b"]: 1.0}
        assert await by_instance("up") == {t: 1.0 for t in target.values()}
