"""Metrics are owned (each Reactor has its own JobMetrics); what a process shows is every live
one summed, found through weak references (issue 20)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from jobreactor import Reactor
from jobreactor.metrics import METRICS, JobMetrics, process_metrics, reset_all


@pytest.fixture(autouse=True)
def fresh() -> Iterator[None]:
    reset_all()
    yield
    reset_all()


def test_each_reactor_owns_its_metrics() -> None:
    first, second = Reactor(), Reactor()
    assert first.metrics is not second.metrics
    assert METRICS not in (first.metrics, second.metrics)


def test_the_process_shows_every_live_owner_summed() -> None:
    a, b = JobMetrics(), JobMetrics()
    a.succeeded["mail"] += 2
    b.succeeded["mail"] += 3
    b.failed["pdf"] += 1
    a.known.add("mail")
    total = process_metrics()
    assert total.succeeded["mail"] == 5
    assert total.failed["pdf"] == 1
    assert "mail" in total.known
    assert total not in (a, b, METRICS)
    total.succeeded["mail"] += 100  # a sum is a copy: the owners are untouched
    assert process_metrics().succeeded["mail"] == 5
    del b
    gc.collect()
    assert process_metrics().succeeded["mail"] == 2  # weakly held: a dropped owner is gone


def test_a_sum_is_not_live_and_reset_all_forgets_every_owner() -> None:
    a = JobMetrics()
    a.enqueued["x"] += 1
    summed = JobMetrics(live=False)
    summed.enqueued["x"] += 10
    assert process_metrics().enqueued["x"] == 1
    reset_all()
    assert not any(process_metrics().enqueued.values())
    assert a.enqueued["x"] == 0
