"""Figures that tell the truth: outcomes counted once, by the distributor that hears them (a
mounted dashboard is exact with nodes in other processes), registry sums that never go down,
unregistered job names under one `unknown` series, queue latency per job name."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from jobreactor import Reactor
from jobreactor.dashboard import create_app
from jobreactor.dashboard.registry import ProcessTotals
from jobreactor.errors import JobFailed
from jobreactor.metrics import (
    JobMetrics,
    job_stats,
    metrics_registry,
    process_metrics,
    reset_all,
    totals,
)
from tests.conftest import make_test_reactor, wait_until

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture(autouse=True)
def fresh_metrics() -> Iterator[None]:
    reset_all()
    yield
    reset_all()


def _stats(reactor: Reactor) -> Any:
    async def read() -> Any:
        return job_stats(process_metrics(), [d.stats() for d in reactor.members.distributors])

    return reactor.call(read, timeout=10)


@pytest.mark.timeout(120)
def test_mounted_dashboard_counts_every_outcome_of_a_cli_node(
    reactor: Reactor, cli_node: Any, tmp_path: Path
) -> None:
    """The README's first example: the app's distributor, a node in its own process, no
    discovery. Every figure the app shows equals what happened."""
    node = cli_node("truth", ("127.0.0.1", reactor.distributor.address_port()))
    reactor.wait_for_node("truth", timeout=30)
    out, n = str(tmp_path / "out.jsonl"), 200
    handles = reactor.enqueue_many([("simple", {"out": out, "i": i}, None) for i in range(n)])
    failing = [reactor.enqueue("fail", {"out": out, "i": i}) for i in range(3)]
    for handle in handles:
        assert handle is not None
        handle.result(60)
    for failed in failing:
        assert failed is not None
        with pytest.raises(JobFailed):
            failed.result(60)

    stats = _stats(reactor)
    # the node config says max_attempt = 3: each "fail" job ran three times
    assert (stats["succeeded"], stats["failed"], stats["retried"]) == (n, 3, 6)
    assert (stats["enqueued"], stats["pending"], stats["in_flight"]) == (n + 3, 0, 0)
    assert stats["jobs"]["simple"]["succeeded"] == n
    assert stats["jobs"]["fail"]["failed"] == 3
    assert stats["jobs"]["fail"]["retried"] == 6

    transport = httpx.ASGITransport(app=create_app(reactor))

    async def scrape() -> str:
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return (await client.get("/metrics")).text

    import asyncio

    got = samples(asyncio.run(scrape()))
    assert got[("jobreactor_jobs_succeeded_total", (("job_name", "simple"),))] == n
    assert got[("jobreactor_jobs_failed_total", (("job_name", "fail"),))] == 3
    assert got[("jobreactor_jobs_retried_total", (("job_name", "fail"),))] == 6
    # what only the node sees (attempts, wait, run time) is on the node's own metrics_port
    assert ("jobreactor_jobs_started_total", (("job_name", "simple"),)) not in got
    node.stop()


def test_registry_sums_never_go_down_across_a_restart() -> None:
    """A process leaving, missing from one registry read, or restarting: the sums stay."""

    def process(succeeded: int) -> JobMetrics:
        figures = JobMetrics()
        figures.register(["mail"])
        figures.succeeded["mail"] += succeeded
        return figures

    def summed(parts: list[dict[str, Any]]) -> int:
        merged = JobMetrics()
        for part in parts:
            merged.merge(part)
        return totals(merged)["succeeded"]

    kept = ProcessTotals()
    a, b = process(100), process(50)
    seen = [summed(kept.update({a.process: a.snapshot(), b.process: b.snapshot()})[0])]
    a.succeeded["mail"] += 10
    seen.append(summed(kept.update({a.process: a.snapshot()})[0]))  # b missed, or left
    b.succeeded["mail"] += 5
    seen.append(summed(kept.update({a.process: a.snapshot(), b.process: b.snapshot()})[0]))
    restarted = process(1)  # a restarts: a new process id, counting from zero
    seen.append(summed(kept.update({restarted.process: restarted.snapshot()})[0]))
    # the same id counting from zero again (a reset): the old totals are kept too
    again = JobMetrics()
    again.process = restarted.process
    again.register(["mail"])
    seen.append(summed(kept.update({again.process: again.snapshot()})[0]))
    assert seen == [150, 160, 165, 166, 166]
    assert seen == sorted(seen)


def test_the_registry_chart_clock_is_the_figures_own_time() -> None:
    kept = ProcessTotals()
    a = JobMetrics()
    first = a.snapshot()
    _, at = kept.update({a.process: first})
    assert at == first["at"]
    _, again = kept.update({a.process: first})  # read again before the next beat
    assert again == at


@pytest.mark.timeout(180)
def test_100k_unknown_job_names_cost_one_series() -> None:
    """Names no node declared and no code defines count as `unknown`: /metrics and the
    registry beat stay small whatever names an app (or a bug) makes up."""
    reactor = make_test_reactor(warn_no_node_after=0)
    try:
        reactor.start_distributor("127.0.0.1", 0)
        handles = reactor.enqueue_many([(f"made-up-{i}", {}, None) for i in range(100_000)])
        assert all(h is not None for h in handles)

        def queued() -> bool:
            return bool(_stats(reactor)["pending"] == 100_000)

        wait_until(queued, 120, "100k jobs to be queued")
        text = generate_latest(metrics_registry()).decode()

        async def beat() -> bytes:
            return json.dumps(reactor.distributor.stats()).encode()

        published = reactor.call(beat, timeout=60)
    finally:
        reactor.stop(timeout=30)
    assert len(text.encode()) < 1_000_000
    assert len(published) < 64 * 1024
    got = samples(text)
    assert got[("jobreactor_jobs_enqueued_total", (("job_name", "unknown"),))] == 100_000
    assert not [k for k in got if "made-up" in str(k)]
    pending = {
        dict(labels)["job_name"]: value
        for (name, labels), value in got.items()
        if name == "jobreactor_pending_jobs"
    }
    assert pending == {"unknown": 100_000}


@pytest.mark.timeout(60)
def test_oldest_pending_is_per_job_name(reactor: Reactor) -> None:
    reactor.metrics.register(["waits"])
    reactor.enqueue("waits", {})

    def aged() -> bool:
        stats = _stats(reactor)
        return bool(stats["jobs"]["waits"]["pending"] == 1 and stats["oldest_pending_s"] > 0.2)

    wait_until(aged, 20, "the pending job to age")
    got = samples(generate_latest(metrics_registry()).decode())
    ages = {
        dict(labels)["job_name"]: value
        for (name, labels), value in got.items()
        if name == "jobreactor_oldest_pending_seconds"
    }
    assert ages["waits"] > 0.2
