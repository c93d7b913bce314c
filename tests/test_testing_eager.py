"""Eager mode (jobreactor.testing): the node's rules, inline, feedbacks before enqueue returns.

Each scenario that the real system can run in a few milliseconds also runs on a real
distributor and node, and both must give the same outcomes: eager mode is the node's own
attempt code, not a copy of its rules.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from jobreactor import CancelJob, JobCancelled, JobFailed, Reactor, Registry
from jobreactor.testing import EagerMode, OutcomeLog, running_system

pytestmark = pytest.mark.timeout(60)

SETTINGS: dict[str, Any] = {
    "max_attempt": 3,
    "retry_multiplier": 0,
    "logger_method": "WARNING",
    "log_job_processing": False,
    "shutdown_timeout": 2.0,
    "reconnect_interval": 0.05,
}


def shop() -> Registry:
    registry = Registry()

    @registry.job("add")
    def add(args: dict[str, Any]) -> None:
        args["sum"] = args["a"] + args["b"]

    @registry.job_callback("add")
    def double(args: dict[str, Any]) -> None:
        args["double"] = args["sum"] * 2

    @registry.job("flaky")
    def flaky(args: dict[str, Any]) -> None:
        if args.get("tries", 0) < args["fail_times"]:
            raise ConnectionError("not yet")
        args["done"] = True

    @registry.job_errback("flaky")
    def count(args: dict[str, Any]) -> None:
        args["tries"] = args.get("tries", 0) + 1

    @registry.job("stop")
    def stop(args: dict[str, Any]) -> None:
        args["seen"] = True
        raise CancelJob

    @registry.job("stop_in_errback")
    def stop_in_errback(args: dict[str, Any]) -> None:
        raise KeyError("boom")

    @registry.job_errback("stop_in_errback")
    def give_up(args: dict[str, Any]) -> None:
        args["gave_up"] = True
        raise CancelJob

    @registry.job("nap")
    async def nap(args: dict[str, Any]) -> None:
        await asyncio.sleep(0)
        args["napped"] = True

    return registry


def outcomes_of(log: OutcomeLog) -> list[tuple[str, str, bool, dict[str, Any]]]:
    return [(o.name, o.outcome, o.final, o.args) for o in log.all()]


SCENARIOS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "callbacks": ("add", {"a": 1, "b": 2}, {}),
    "retried then fine": ("flaky", {"fail_times": 2}, {}),
    "fails for good": ("flaky", {"fail_times": 9}, {}),
    "own max_attempt": ("flaky", {"fail_times": 9}, {"max_attempt": 1}),
    "cancel in the chain": ("stop", {"x": 1}, {}),
    "cancel in an errback": ("stop_in_errback", {"x": 1}, {}),
    "async job": ("nap", {}, {}),
    "delayed": ("add", {"a": 2, "b": 2}, {"after": 0.05}),
    "unknown job": ("no_such_job", {}, {}),
}


@pytest.fixture
def eager() -> Iterator[EagerMode]:
    reactor = Reactor(**SETTINGS)
    reactor.registry = shop()
    with EagerMode(reactor) as mode:
        yield mode


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_eager_outcomes_equal_the_real_nodes(scenario: str) -> None:
    name, args, opts = SCENARIOS[scenario]
    real_reactor = Reactor(**SETTINGS)
    real_reactor.registry = shop()
    with running_system(reactor=real_reactor) as system:
        system.reactor.enqueue(name, dict(args), dict(opts), success=lambda a: None)
        system.wait_idle(timeout=20)
        real = outcomes_of(system.outcomes)
    eager_reactor = Reactor(**SETTINGS)
    eager_reactor.registry = shop()
    with EagerMode(eager_reactor) as mode:
        handle = eager_reactor.enqueue(name, dict(args), dict(opts), success=lambda a: None)
        assert handle is not None
        assert handle.done()  # before enqueue returned
        inline = outcomes_of(mode.outcomes)
    assert inline == real
    assert inline  # every scenario ends in an outcome


def test_feedbacks_run_before_enqueue_returns(eager: EagerMode) -> None:
    seen: list[dict[str, Any]] = []
    handle = eager.reactor.enqueue("add", {"a": 1, "b": 1}, success=seen.append)
    assert seen == [{"a": 1, "b": 1, "sum": 2, "double": 4}]
    assert handle is not None
    assert handle.result(0) == seen[0]


def test_error_feedback_after_the_last_attempt_with_errback_additions(eager: EagerMode) -> None:
    errors: list[dict[str, Any]] = []
    handle = eager.reactor.enqueue("flaky", {"fail_times": 5}, error=errors.append)
    assert handle is not None
    with pytest.raises(JobFailed):
        handle.result(0)
    (args,) = errors
    assert args["tries"] == 3  # max_attempt = 3, an errback after each
    assert args["error"]["class"] == "ConnectionError"


def test_retry_delays_are_skipped_but_kept_in_the_record() -> None:
    reactor = Reactor(**{**SETTINGS, "retry_multiplier": 60})
    reactor.registry = shop()
    with EagerMode(reactor) as mode:
        handle = reactor.enqueue("flaky", {"fail_times": 9})
        assert handle is not None
        with pytest.raises(JobFailed):
            handle.result(0)  # three attempts, 60 s and 120 s apart on a node: none waited
        record = mode.record(handle.id)
        assert record is not None
        assert record.status == "failed"
        assert record.attempt == 3
        assert record.make_after == 120  # attempt 2 × retry_multiplier


def test_periodic_job_runs_as_many_times_as_asked() -> None:
    reactor = Reactor(**SETTINGS)
    registry = Registry()
    registry.job("tick")(lambda args: args.update(n=args.get("n", 0) + 1))
    reactor.registry = registry
    with EagerMode(reactor, periodic_runs=3) as mode:
        handle = reactor.enqueue("tick", {}, {"period": 60})
        assert handle is not None
        assert [a["n"] for a in mode.outcomes.successes("tick")] == [1, 2, 3]
        assert mode.scheduled() == [handle.id]
        record = mode.record(handle.id)
        assert record is not None
        assert (record.status, record.make_after) == ("queued", 60)
        mode.run_scheduled(runs=2)
        assert [a["n"] for a in mode.outcomes.successes("tick")] == [1, 2, 3, 4, 5]
        assert reactor.cancel(handle.id) is True
        with pytest.raises(JobCancelled):
            handle.result(0)
        assert mode.scheduled() == []
        assert reactor.cancel(handle.id) is False


def test_a_feedback_that_enqueues_runs_that_job_in_the_same_call(eager: EagerMode) -> None:
    reactor = eager.reactor
    chained: list[dict[str, Any]] = []

    def then_double(args: dict[str, Any]) -> None:
        reactor.enqueue("add", {"a": args["sum"], "b": args["sum"]}, success=chained.append)

    reactor.enqueue("add", {"a": 1, "b": 2}, success=then_double)
    assert [c["sum"] for c in chained] == [6]


def test_lock_and_enqueue_id_work_inline(eager: EagerMode) -> None:
    reactor = eager.reactor
    first = reactor.enqueue("add", {"a": 1, "b": 1}, {"lock": "L", "enqueue_id": "once"})
    again = reactor.enqueue("add", {"a": 1, "b": 1}, {"lock": "L", "enqueue_id": "once"})
    assert first is not None
    assert again is not None  # the first one finished and freed its keys
    assert again.result(0)["sum"] == 2


def test_enqueue_many_and_wait_idle(eager: EagerMode) -> None:
    reactor = eager.reactor
    handles = reactor.enqueue_many([("add", {"a": i, "b": i}, None) for i in range(5)])
    reactor.wait_idle()
    assert [h.result(0)["sum"] for h in handles] == [0, 2, 4, 6, 8]


async def test_eager_from_an_async_test(eager: EagerMode) -> None:
    reactor = eager.reactor
    handle = await reactor.aenqueue("nap", {})
    assert handle is not None
    assert await handle == {"napped": True}
    sync_handle = await asyncio.to_thread(reactor.enqueue, "nap", {})
    assert sync_handle is not None
    assert sync_handle.done()


def test_eager_refuses_a_running_reactor_and_restores_on_exit() -> None:
    reactor = Reactor(**SETTINGS)
    with EagerMode(reactor, config={"max_attempt": 7}):
        assert reactor.config["max_attempt"] == 7
    assert reactor.config["max_attempt"] == 3
    assert getattr(reactor.enqueue, "__self__", None) is reactor.enqueuer  # the real one is back
    reactor.run()
    try:
        with pytest.raises(RuntimeError, match="not running"):
            EagerMode(reactor).install()
    finally:
        reactor.stop(timeout=15)


def test_feedbacks_run_on_the_eager_thread_not_the_callers(eager: EagerMode) -> None:
    threads: list[str] = []
    eager.reactor.enqueue("add", {"a": 0, "b": 0}, success=lambda a: threads.append(
        threading.current_thread().name
    ))  # fmt: skip
    assert threads == ["jobreactor-eager"]
