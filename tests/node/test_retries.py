"""Retries, feedbacks, record retention and cancel, with a real distributor and node (issue 3).

The `reactor` fixture sets `retry_multiplier=0, max_attempt=5` (SPEC 1.18). A node reads the
config when it starts, so tests that change it do so before `start`.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from jobreactor import CancelJob, JobCancelled, JobFailed, Reactor, Registry
from jobreactor.job import JobRecord
from jobreactor.node import Node
from tests.conftest import Recorder

pytestmark = pytest.mark.timeout(60)


def start(reactor: Reactor, registry: Registry, name: str = "w1") -> Node:
    return reactor.start_node(
        name, "memory", [("127.0.0.1", reactor.distributor.address_port())], registry=registry
    )._node


def always_failing(registry: Registry, runs: Recorder, name: str = "fail") -> None:
    @registry.job(name)
    def fail(args: dict[str, Any]) -> None:
        runs(time.monotonic())
        raise RuntimeError("boom")


def stored(reactor: Reactor, node: Node, job_id: str) -> JobRecord | None:
    async def load() -> JobRecord | None:
        return await node.storage.load(node.name, job_id)

    return reactor.call(load)


def held_record(reactor: Reactor, node: Node, job_id: str) -> JobRecord | None:
    """A copy of the record the node holds in memory (read on the loop)."""

    async def read() -> JobRecord | None:
        record = node.peek_record(job_id)  # a packed one decoded
        return None if record is None else record.copy()

    return reactor.call(read)


def holds(reactor: Reactor, node: Node, job_id: str) -> bool:
    async def check() -> bool:
        return node.holdings.holds(job_id) or job_id in node.holdings.ready

    return reactor.call(check)


# --- retry counts and delays -----------------------------------------------------------------


@pytest.mark.parametrize("max_attempt", [1, 2, 7])
def test_per_job_max_attempt_overrides_the_config(reactor: Reactor, max_attempt: int) -> None:
    registry, runs = Registry(), Recorder()
    always_failing(registry, runs)
    node = start(reactor, registry)
    errors = Recorder()
    h = reactor.enqueue("fail", {"n": 1}, {"max_attempt": max_attempt}, error=errors)
    assert h is not None
    with pytest.raises(JobFailed):
        h.result(20)
    assert len(runs) == max_attempt  # config says 5; the job's own option wins
    assert len(errors.wait(1)) == 1
    assert not holds(reactor, node, h.id)


def test_config_max_attempt_applies_without_the_option(reactor: Reactor) -> None:
    registry, runs = Registry(), Recorder()
    always_failing(registry, runs)
    start(reactor, registry)
    h = reactor.enqueue("fail", {})
    assert h is not None
    with pytest.raises(JobFailed):
        h.result(20)
    assert len(runs) == 5


def test_exponential_retry_is_scheduled_attempts_pow_4_plus_5_later(reactor: Reactor) -> None:
    registry, runs = Registry(), Recorder()
    always_failing(registry, runs)
    node = start(reactor, registry)
    h = reactor.enqueue("fail", {}, {"retry_strategy": "exponential"})
    assert h is not None
    runs.wait(1)
    # The sync job body and its failure handling run in one loop step, so by the time our
    # call reaches the loop the retry is scheduled.
    record = held_record(reactor, node, h.id)
    assert record is not None
    assert record.attempt == 1
    assert record.status == "error"
    assert record.failed_at is not None
    assert record.last_error == "RuntimeError: boom"
    assert record.run_at_ts - record.failed_at == pytest.approx(6.0, abs=0.1)  # 1**4 + 5
    assert record.run_at_ts - time.time() > 4.0
    assert reactor.cancel(h.id) is True
    with pytest.raises(JobCancelled):
        h.result(10)
    assert len(runs) == 1
    assert not holds(reactor, node, h.id)


def test_exponential_config_default_with_linear_per_job_override(reactor: Reactor) -> None:
    reactor.config.update(retry_strategy="exponential")
    registry, runs = Registry(), Recorder()
    always_failing(registry, runs)
    start(reactor, registry)
    h = reactor.enqueue("fail", {}, {"retry_strategy": "linear", "max_attempt": 3})
    assert h is not None
    with pytest.raises(JobFailed):
        h.result(10)  # linear × retry_multiplier 0: immediate; exponential would take 27 s
    assert len(runs) == 3


def test_linear_retry_delay_grows_with_the_attempt(reactor: Reactor) -> None:
    reactor.config.update(retry_multiplier=0.2)
    registry, runs = Registry(), Recorder()
    always_failing(registry, runs)
    start(reactor, registry)
    h = reactor.enqueue("fail", {}, {"max_attempt": 3})
    assert h is not None
    with pytest.raises(JobFailed):
        h.result(20)
    first, second, third = runs.wait(3)
    slack = 0.01  # wall vs loop clock conversion and timer granularity
    assert second - first >= 0.2 - slack  # 1 × 0.2
    assert third - second >= 0.4 - slack  # 2 × 0.2
    assert third - first < 5.0
    assert len(runs) == 3


# --- periodic jobs ---------------------------------------------------------------------------


def test_failing_periodic_job_retries_on_its_period_and_fails_once(reactor: Reactor) -> None:
    registry, runs = Registry(), Recorder()
    always_failing(registry, runs, "tick_fail")
    node = start(reactor, registry)
    successes, errors = Recorder(), Recorder()
    h = reactor.enqueue(
        "tick_fail", {}, {"period": 0.3, "max_attempt": 3}, success=successes, error=errors
    )
    assert h is not None
    with pytest.raises(JobFailed) as info:
        h.result(20)
    assert info.value.args_dict["error"]["class"] == "RuntimeError"
    stamps = runs.wait(3)
    assert len(stamps) == 3
    slack = 0.01
    assert stamps[1] - stamps[0] >= 0.3 - slack  # a periodic job retries after its period
    assert stamps[2] - stamps[1] >= 0.3 - slack
    assert len(errors.wait(1)) == 1  # one-shot, after the last of max_attempt failures
    assert len(successes) == 0
    assert not holds(reactor, node, h.id)  # failed for good: no further runs


def test_periodic_attempt_count_resets_after_a_success(reactor: Reactor) -> None:
    """SPEC D12: failing every other run never exhausts max_attempt=2."""
    registry, runs = Registry(), Recorder()

    @registry.job("flaky_tick")
    def flaky(args: dict[str, Any]) -> None:
        runs(1)
        if len(runs) % 2 == 1:
            raise RuntimeError("odd run")

    start(reactor, registry)
    successes, errors = Recorder(), Recorder()
    h = reactor.enqueue(
        "flaky_tick", {}, {"period": 0.05, "max_attempt": 2}, success=successes, error=errors
    )
    assert h is not None
    successes.wait(4)  # runs 2, 4, 6, 8; without the reset run 3 would have been final
    assert len(errors) == 0
    assert not h.done()
    assert reactor.cancel(h.id) is True
    with pytest.raises(JobCancelled):
        h.result(10)
    assert len(errors) == 0


# --- what stays in storage -------------------------------------------------------------------


def test_remove_done_jobs_false_keeps_a_complete_record(reactor: Reactor) -> None:
    reactor.config.update(remove_done_jobs=False)
    registry = Registry()

    @registry.job("simple")
    def simple(args: dict[str, Any]) -> None:
        args["result"] = "ok"

    node = start(reactor, registry)
    h = reactor.enqueue("simple", {"a": 1})
    assert h is not None
    h.result(10)
    record = stored(reactor, node, h.id)
    assert record is not None
    assert record.status == "complete"
    assert record.args == {"a": 1, "result": "ok"}
    assert record.attempt == 1

    async def all_jobs() -> list[JobRecord]:
        return await node.storage.jobs_for(node.name)

    assert [r.id for r in reactor.call(all_jobs)] == [h.id]


def test_done_jobs_are_removed_by_default(reactor: Reactor) -> None:
    registry = Registry()
    registry.job("simple")(lambda args: None)
    node = start(reactor, registry)
    h = reactor.enqueue("simple", {})
    assert h is not None
    h.result(10)
    assert stored(reactor, node, h.id) is None


def test_failed_jobs_are_kept_by_default_with_last_error(reactor: Reactor) -> None:
    registry, runs = Registry(), Recorder()
    always_failing(registry, runs)
    node = start(reactor, registry)
    before = time.time()
    h = reactor.enqueue("fail", {"a": 1}, {"max_attempt": 2})
    assert h is not None
    with pytest.raises(JobFailed):
        h.result(10)
    record = stored(reactor, node, h.id)
    assert record is not None
    assert record.status == "failed"
    assert record.attempt == 2
    assert record.last_error == "RuntimeError: boom"
    assert record.failed_at is not None
    assert before <= record.failed_at <= time.time()
    assert record.args["a"] == 1
    assert record.args["error"]["class"] == "RuntimeError"


def test_remove_failed_jobs_true_deletes_the_record(reactor: Reactor) -> None:
    reactor.config.update(remove_failed_jobs=True)
    registry, runs = Registry(), Recorder()
    always_failing(registry, runs)
    node = start(reactor, registry)
    h = reactor.enqueue("fail", {}, {"max_attempt": 1})
    assert h is not None
    with pytest.raises(JobFailed):
        h.result(10)
    assert stored(reactor, node, h.id) is None


def test_remove_cancelled_jobs_false_keeps_a_cancelled_record(reactor: Reactor) -> None:
    reactor.config.update(remove_cancelled_jobs=False)
    registry = Registry()

    @registry.job("quit")
    def quit_(args: dict[str, Any]) -> None:
        raise CancelJob

    node = start(reactor, registry)
    h = reactor.enqueue("quit", {"a": 1})
    assert h is not None
    assert h.result(10) == {"a": 1}  # CancelJob from the chain: a success feedback
    record = stored(reactor, node, h.id)
    assert record is not None
    assert record.status == "cancelled"


def test_cancelled_jobs_are_removed_by_default(reactor: Reactor) -> None:
    registry = Registry()

    @registry.job("quit")
    def quit_(args: dict[str, Any]) -> None:
        raise CancelJob

    node = start(reactor, registry)
    h = reactor.enqueue("quit", {})
    assert h is not None
    h.result(10)
    assert stored(reactor, node, h.id) is None


# --- CancelJob and errbacks ------------------------------------------------------------------


def test_cancel_job_raised_in_a_callback_cancels_without_retry(reactor: Reactor) -> None:
    registry, runs = Registry(), Recorder()

    @registry.job("cb_cancel")
    def body(args: dict[str, Any]) -> None:
        runs(1)
        args["added"] = True

    @registry.job_callback("cb_cancel", "stop")
    def stop(args: dict[str, Any]) -> None:
        raise CancelJob

    @registry.job_callback("cb_cancel", "never")
    def never(args: dict[str, Any]) -> None:
        runs("never")

    node = start(reactor, registry)
    successes, errors = Recorder(), Recorder()
    h = reactor.enqueue("cb_cancel", {"x": 1}, success=successes, error=errors)
    assert h is not None
    assert h.result(10) == {"x": 1}  # pre-attempt args: the attempt's additions are lost
    assert successes.wait(1) == [{"x": 1}]
    assert runs.items == [1]  # ran once, the later callback was skipped, no retry
    assert len(errors) == 0
    assert not holds(reactor, node, h.id)


def test_cancel_job_in_a_periodic_callback_stops_the_period(reactor: Reactor) -> None:
    registry, runs = Registry(), Recorder()
    registry.job("cb_tick")(lambda args: runs(1))

    @registry.job_callback("cb_tick", "stop_on_third")
    def stop(args: dict[str, Any]) -> None:
        if len(runs) >= 3:
            raise CancelJob

    node = start(reactor, registry)
    successes = Recorder()
    h = reactor.enqueue("cb_tick", {}, {"period": 0.05}, success=successes)
    assert h is not None
    h.result(10)
    assert len(runs) == 3
    assert len(successes.wait(3)) == 3
    assert not holds(reactor, node, h.id)


def test_errback_raising_adds_errback_error_and_retries_continue(reactor: Reactor) -> None:
    registry, runs, errback_runs = Registry(), Recorder(), Recorder()
    always_failing(registry, runs)

    @registry.job_errback("fail", "broken")
    def broken(args: dict[str, Any]) -> None:
        errback_runs(sorted(args))
        args["from_broken"] = True
        raise ValueError("errback bug")

    @registry.job_errback("fail", "skipped")
    def skipped(args: dict[str, Any]) -> None:
        errback_runs("skipped")

    start(reactor, registry)
    errors = Recorder()
    h = reactor.enqueue("fail", {"a": 1}, {"max_attempt": 3}, error=errors)
    assert h is not None
    with pytest.raises(JobFailed):
        h.result(10)
    assert len(runs) == 3  # the broken errback did not stop the retries
    assert "skipped" not in errback_runs.items
    assert len(errback_runs) == 3
    (final,) = errors.wait(1)
    assert final["a"] == 1
    assert final["error"]["class"] == "RuntimeError"
    assert final["errback_error"]["class"] == "ValueError"
    assert final["errback_error"]["message"] == "errback bug"
    assert "from_broken" not in final  # SPEC 1.6.6: the raising errback's additions are dropped


# --- JR.cancel ------------------------------------------------------------------------------


def test_cancel_a_job_scheduled_on_a_node(reactor: Reactor) -> None:
    registry, runs = Registry(), Recorder()
    registry.job("later")(lambda args: runs("later"))
    registry.job("now")(lambda args: None)
    node = start(reactor, registry)
    h = reactor.enqueue("later", {}, {"after": 30})
    assert h is not None
    # A job enqueued after it finishing means the node has stored and scheduled the first.
    marker = reactor.enqueue("now", {})
    assert marker is not None
    marker.result(10)
    assert holds(reactor, node, h.id)
    assert reactor.cancel(h.id) is True
    with pytest.raises(JobCancelled):
        h.result(10)
    assert not holds(reactor, node, h.id)
    assert stored(reactor, node, h.id) is None
    assert reactor.cancel(h.id) is False
    assert len(runs) == 0


def test_cancel_a_job_pending_in_the_distributor(reactor: Reactor) -> None:
    h = reactor.enqueue("nobody_runs_this", {})  # no node connected: it waits
    assert h is not None
    assert reactor.cancel(h.id) is True
    with pytest.raises(JobCancelled):
        h.result(10)
    assert reactor.cancel(h.id) is False
    assert reactor.distributor.pending_count == 0


def test_cancel_an_unknown_id_is_false(reactor: Reactor) -> None:
    assert reactor.cancel("no-such-id") is False


# --- defer + after + period (SPEC 1.11) ------------------------------------------------------


def test_defer_after_period_zero_then_one_then_two_runs(reactor: Reactor) -> None:
    registry, runs = Registry(), Recorder()
    registry.job("deferred_tick")(
        lambda args: runs((time.monotonic(), threading.current_thread().name))
    )
    start(reactor, registry)
    enqueued = time.monotonic()
    h = reactor.enqueue("deferred_tick", {}, {"defer": True, "after": 0.6, "period": 0.6})
    assert h is not None
    (first, where) = runs.wait(1)[0]
    assert first - enqueued >= 0.55  # nothing ran by 0.4 s (or by 0.55 s)
    assert first - enqueued < 3.0
    assert where.startswith("jobreactor-w1")  # in the node's pool, not on the loop
    second = runs.wait(2)[1][0]
    assert second - first == pytest.approx(0.6, abs=0.25)
    assert reactor.cancel(h.id) is True
    with pytest.raises(JobCancelled):
        h.result(10)
