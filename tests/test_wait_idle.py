"""`JR.wait_idle(timeout)`: until no one-shot job is queued or out and every feedback ran."""

from __future__ import annotations

from typing import Any

import pytest

from jobreactor import Reactor, Registry
from tests.conftest import Recorder

pytestmark = pytest.mark.timeout(60)


def test_wait_idle_covers_jobs_a_feedback_enqueues(reactor: Reactor) -> None:
    registry = Registry()
    registry.job("add")(lambda args: args.update(sum=args["a"] + args["b"]))
    reactor.start_node("w", "memory", None, registry=registry)
    second = Recorder()

    def then(args: dict[str, Any]) -> None:  # runs on the loop, enqueues one more job
        reactor.enqueue("add", {"a": args["sum"], "b": 1}, success=second)

    for i in range(10):
        reactor.enqueue("add", {"a": i, "b": i}, success=then)
    reactor.wait_idle(timeout=20)
    assert len(second) == 10  # already: no waiting on the recorder
    assert sorted(item["sum"] for item in second.items) == [2 * i + 1 for i in range(10)]


def test_wait_idle_ignores_periodic_jobs(reactor: Reactor) -> None:
    registry = Registry()
    registry.job("tick")(lambda args: None)
    reactor.start_node("w", "memory", None, registry=registry)
    handle = reactor.enqueue("tick", {}, {"period": 30})
    assert handle is not None
    reactor.wait_idle(timeout=20)
    assert not handle.done()


def test_wait_idle_times_out_when_no_node_will_ever_run_the_job(reactor: Reactor) -> None:
    reactor.enqueue("nobody_runs_this", {})
    with pytest.raises(TimeoutError):
        reactor.wait_idle(timeout=0.3)
