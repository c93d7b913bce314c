"""Metrics: counted on real jobs, exposed in Prometheus' text format, served on metrics_port."""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from jobreactor import Reactor, Registry
from jobreactor.metrics import (
    METRICS,
    WAIT_BUCKETS,
    Histogram,
    JobMetrics,
    metrics_registry,
    process_metrics,
    reset_all,
)
from jobreactor.metrics_server import MetricsServer
from tests.conftest import Recorder, make_test_reactor, wait_until


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_histogram_buckets_follow_prometheus_le() -> None:
    hist = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 1.0, 7.0):
        hist.observe("j", value)
    assert hist.counts("j") == [2, 2, 1]  # ≤0.1, (0.1, 1], +Inf
    assert hist.total("j") == pytest.approx(8.65)
    assert hist.counts("never") == []
    metrics = JobMetrics()
    metrics.wait.rows["j"] = [1] * (len(WAIT_BUCKETS) + 1) + [9.0]
    got = samples(generate_latest(metrics_registry(metrics, gauge_reader=list)).decode())
    assert got[("jobreactor_job_wait_seconds_bucket", (("job_name", "j"), ("le", "0.001")))] == 1
    assert got[("jobreactor_job_wait_seconds_bucket", (("job_name", "j"), ("le", "+Inf")))] == 18
    assert got[("jobreactor_job_wait_seconds_sum", (("job_name", "j"),))] == 9.0


def test_snapshots_of_two_processes_add_up() -> None:
    a, b = JobMetrics(), JobMetrics()
    a.succeeded["mail"] += 3
    b.succeeded["mail"] += 2
    b.failed["pdf"] += 1
    a.run.observe("mail", 0.2)
    b.run.observe("mail", 2.0)
    total = JobMetrics()
    total.merge(a.snapshot())
    total.merge(b.snapshot())
    assert total.succeeded == {"mail": 5}
    assert total.failed == {"pdf": 1}
    assert sum(total.run.counts("mail")) == 2
    assert total.run.total("mail") == pytest.approx(2.2)
    # A snapshot from other buckets (another version) is not added in, never mis-added.
    total.merge({"run": {"counts": {"mail": [1, 2]}, "sums": {"mail": 1.0}}})
    assert sum(total.run.counts("mail")) == 2


@pytest.fixture
def counted() -> Any:
    reset_all()
    yield METRICS
    reset_all()


def _run_jobs(reactor: Reactor) -> None:
    registry = Registry()
    attempts: dict[str, int] = {}

    @registry.job("ok")
    def ok(args: dict[str, Any]) -> None:
        return None

    @registry.job("flaky")
    def flaky(args: dict[str, Any]) -> None:
        attempts[args["i"]] = attempts.get(args["i"], 0) + 1
        if attempts[args["i"]] < 2:
            raise RuntimeError("first attempt fails")

    @registry.job("bad")
    def bad(args: dict[str, Any]) -> None:
        raise RuntimeError("always")

    address = ("127.0.0.1", reactor.distributor.address_port())
    reactor.start_node("counter", "memory", [address], registry=registry)
    done, failed = Recorder(), Recorder()
    for i in range(5):
        reactor.enqueue("ok", {"i": i}, success=done)
    reactor.enqueue("flaky", {"i": "f"}, success=done)
    reactor.enqueue("bad", {}, error=failed)
    done.wait(6)
    failed.wait(1)


def test_jobs_are_counted_per_name_and_outcome(counted: JobMetrics) -> None:
    reactor = make_test_reactor(max_attempt=2)
    try:
        reactor.start_distributor("127.0.0.1", 0)
        _run_jobs(reactor)
        text = generate_latest(metrics_registry()).decode()
    finally:
        reactor.stop(timeout=10)
    got = samples(text)
    assert got[("jobreactor_jobs_enqueued_total", (("job_name", "ok"),))] == 5
    assert got[("jobreactor_jobs_succeeded_total", (("job_name", "ok"),))] == 5
    assert got[("jobreactor_jobs_succeeded_total", (("job_name", "flaky"),))] == 1
    assert got[("jobreactor_jobs_retried_total", (("job_name", "flaky"),))] == 1
    assert got[("jobreactor_jobs_retried_total", (("job_name", "bad"),))] == 1
    assert got[("jobreactor_jobs_failed_total", (("job_name", "bad"),))] == 1
    assert got[("jobreactor_jobs_started_total", (("job_name", "bad"),))] == 2
    assert got[("jobreactor_job_run_seconds_count", (("job_name", "ok"),))] == 5
    assert got[("jobreactor_job_wait_seconds_count", (("job_name", "flaky"),))] == 2
    inf = ("jobreactor_job_wait_seconds_bucket", (("job_name", "ok"), ("le", "+Inf")))
    assert got[inf] == 5
    assert len([k for k in got if k[0] == "jobreactor_job_wait_seconds_bucket"]) == 3 * (
        len(WAIT_BUCKETS) + 1
    )
    # Gauges of the live distributor and node, read at scrape time.
    assert any(name == "jobreactor_distributor_pending" for name, _ in got)
    assert got[("jobreactor_node_running", (("node", "counter"),))] == 0


def test_metrics_off_counts_nothing(counted: JobMetrics) -> None:
    reactor = make_test_reactor(max_attempt=2, metrics=False)
    try:
        reactor.start_distributor("127.0.0.1", 0)
        _run_jobs(reactor)
    finally:
        reactor.stop(timeout=10)
    assert not any(process_metrics().snapshot()["counters"].values())


def test_a_delayed_job_records_timer_lateness(counted: JobMetrics, reactor: Reactor) -> None:
    registry = Registry()

    @registry.job("later")
    def later(args: dict[str, Any]) -> None:
        return None

    reactor.start_node("timers", "memory", [("127.0.0.1", reactor.distributor.address_port())],
                       registry=registry)  # fmt: skip
    done = Recorder()
    reactor.enqueue("later", {}, {"after": 0.2}, success=done)
    done.wait(1)
    assert sum(process_metrics().lateness.counts("timers")) >= 1


def test_metrics_port_serves_metrics_and_health(counted: JobMetrics) -> None:
    alive = [True]
    server = MetricsServer("127.0.0.1", 0, lambda: alive[0]).start()
    try:
        counted.enqueued["mail"] += 2
        base = f"http://127.0.0.1:{server.port}"
        with urllib.request.urlopen(base + "/metrics", timeout=5) as answer:
            assert answer.status == 200
            got = samples(answer.read().decode())
        assert got[("jobreactor_jobs_enqueued_total", (("job_name", "mail"),))] == 2
        with urllib.request.urlopen(base + "/health", timeout=5) as answer:
            assert answer.read() == b"ok\n"
        alive[0] = False
        with pytest.raises(urllib.error.HTTPError) as down:
            urllib.request.urlopen(base + "/health", timeout=5)
        assert down.value.code == 503
        down.value.close()
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(base + "/nope", timeout=5)
        assert missing.value.code == 404
        missing.value.close()
    finally:
        server.close()


def test_cli_node_with_metrics_port(reactor: Reactor, cli_node: Any, tmp_path: Any) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    address = ("127.0.0.1", reactor.distributor.address_port())
    node = cli_node("scraped", address, metrics_port=port)
    reactor.wait_for_node("scraped", timeout=20)
    handle = reactor.enqueue("simple", {"out": str(tmp_path / "out.jsonl"), "i": 1})
    assert handle is not None
    handle.result(20)
    base = f"http://127.0.0.1:{port}"

    def scraped() -> bool:
        try:
            with urllib.request.urlopen(base + "/metrics", timeout=5) as answer:
                got = samples(answer.read().decode())
        except OSError:
            return False
        # A node counts what only it sees (attempts, wait and run time); outcomes are counted
        # by the distributor that hears them, here the test's own process.
        return got.get(("jobreactor_jobs_started_total", (("job_name", "simple"),))) == 1

    wait_until(scraped, 20, "the node's /metrics to count the job")
    assert process_metrics().succeeded["simple"] >= 1
    with urllib.request.urlopen(base + "/health", timeout=5) as answer:
        assert answer.status == 200
    with urllib.request.urlopen(base + "/metrics", timeout=5) as answer:
        got = samples(answer.read().decode())
    assert got[("jobreactor_node_held", (("node", "scraped"),))] == 0
    node.stop()
