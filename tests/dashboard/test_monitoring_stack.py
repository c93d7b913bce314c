"""The monitoring pieces in docs/deploy are checked, not just shipped: the alert rules and
every Grafana expression pass `promtool`, and every metric they name is on a real `/metrics`
(which passes `promtool check metrics`). `.ci/run` installs Debian's prometheus package for
promtool; without it these tests fail, never skip."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from jobreactor import Reactor, Registry
from jobreactor.dashboard import create_app
from tests.conftest import Recorder, make_test_reactor, wait_until

DEPLOY = Path(__file__).resolve().parents[2] / "docs" / "deploy"
RULES = DEPLOY / "alerts.yml"
GRAFANA = DEPLOY / "grafana-dashboard.json"
METRIC = re.compile(r"\b(jobreactor_[a-z0-9_]+)")
# Series Prometheus makes itself, not jobreactor.
BUILT_IN = {"up"}


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.fail("promtool missing: `apt-get install prometheus` (.ci/run installs it)")
    return subprocess.run(
        [tool, *args], input=stdin, capture_output=True, text=True, timeout=60, check=False
    )


def rule_exprs() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [str(rule["expr"]) for group in groups for rule in group["rules"]]


def grafana_exprs() -> list[str]:
    board = json.loads(GRAFANA.read_text())
    return [t["expr"] for panel in board["panels"] for t in panel.get("targets", [])]


def test_alert_rules_pass_promtool() -> None:
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 6 rules found" in checked.stdout
    config = promtool("check", "config", "--syntax-only", str(DEPLOY / "prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr


def test_grafana_expressions_are_valid_promql(tmp_path: Path) -> None:
    """Each panel query, with Grafana's $__rate_interval filled in, as a recording rule."""
    exprs = grafana_exprs()
    assert exprs
    rules = [
        {"record": f"jobreactor:grafana_{i}", "expr": e.replace("$__rate_interval", "5m")}
        for i, e in enumerate(exprs)
    ]
    path = tmp_path / "grafana_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "grafana", "rules": rules}]}))
    checked = promtool("check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def _real_metrics(reactor: Reactor) -> str:
    """A distributor and a node in this process, after successes, a retried failure, a delayed
    job and a job no node may run: every family has samples."""
    registry = Registry()
    registry.job("ok")(lambda args: None)

    @registry.job("broken")
    def broken(args: dict[str, Any]) -> None:
        raise RuntimeError("always")

    reactor.start_node("stack", "memory", [("127.0.0.1", reactor.distributor.address_port())],
                       registry=registry)  # fmt: skip
    reactor.wait_for_node("stack", timeout=20)
    done, failed = Recorder(), Recorder()
    for i in range(3):
        reactor.enqueue("ok", {"i": i}, success=done)
    reactor.enqueue("ok", {"i": "later"}, {"after": 0.1}, success=done)
    reactor.enqueue("broken", {}, error=failed)
    reactor.enqueue("ok", {}, {"node": "absent"})  # strict: waits for a node never coming
    done.wait(4, 20)
    failed.wait(1, 20)
    transport = httpx.ASGITransport(app=create_app(reactor))

    async def scrape() -> str:
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return (await client.get("/metrics")).text

    import asyncio

    def stuck() -> bool:
        return 'jobreactor_no_eligible_node_jobs{distributor="' in asyncio.run(scrape())

    wait_until(stuck, 20, "the waiting job to show")
    return asyncio.run(scrape())


@pytest.mark.timeout(90)
def test_every_series_the_stack_names_is_exported() -> None:
    reactor = make_test_reactor(max_attempt=2, retry_multiplier=0, always_use_specified_node=True)
    try:
        reactor.start_distributor("127.0.0.1", 0)
        text = _real_metrics(reactor)
    finally:
        reactor.stop(timeout=10)
    lint = promtool("check", "metrics", stdin=text)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    exported = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    named = {m for e in [*rule_exprs(), *grafana_exprs()] for m in METRIC.findall(e)}
    assert named, "no metric names found in the rules and dashboard"
    assert named - exported == set(), f"named but not exported: {sorted(named - exported)}"
    # the per-name label is job_name everywhere; node names go in `node`
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            assert "job" not in sample.labels, sample
            if family.name == "jobreactor_timer_lateness_seconds":
                assert set(sample.labels) <= {"node", "le"}
