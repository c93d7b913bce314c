"""Far-future jobs wait on a node packed (msgpack bytes, not a record) until they fall due.

Pinned here, on memory and Redis nodes: a packed job is never early and runs once; cancel,
JR.retry and a node restart see packed jobs like any other; many jobs cross the horizon.
The horizon is lowered so the tests wait well under a second per job.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from jobreactor import JobCancelled, Reactor, Registry
from jobreactor.node import Node
from jobreactor.node import timetable as timetable_module
from jobreactor.storage.memory import MemoryStorage
from tests.conftest import Recorder, wait_until
from tests.redis_server import unique_prefix

pytestmark = pytest.mark.timeout(60)

HORIZON = 0.3  # a job due later than this after it is scheduled is packed
AFTER = 1.0  # due past the horizon: packed on arrival


@pytest.fixture(params=["memory", "redis"], autouse=True)
def storage_kind(
    request: pytest.FixtureRequest, reactor: Reactor, monkeypatch: pytest.MonkeyPatch
) -> str:
    monkeypatch.setattr(timetable_module, "PACK_AFTER_S", HORIZON)
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")
        reactor.config.update(redis_prefix=unique_prefix(), hiredis_url=server.url)
    reactor.test_storage = request.param  # type: ignore[attr-defined]
    return str(request.param)


def start(reactor: Reactor, registry: Registry, name: str = "w1") -> Node:
    storage = getattr(reactor, "test_storage", "memory")
    return reactor.start_node(
        name, storage, [("127.0.0.1", reactor.distributor.address_port())], registry=registry
    )._node


def packed_ids(reactor: Reactor, node: Node) -> set[str]:
    async def read() -> set[str]:
        return {job_id for job_id, _, _, _ in node.holdings.packed_jobs()}

    return reactor.call(read)


def timed(registry: Registry, runs: Recorder, name: str = "later") -> None:
    registry.job(name)(lambda args: runs((args["i"], time.time())))


def test_a_far_future_job_waits_packed_then_runs_once_and_not_early(reactor: Reactor) -> None:
    registry, runs = Registry(), Recorder()
    timed(registry, runs)
    node = start(reactor, registry)
    enqueued = time.time()
    handle = reactor.enqueue("later", {"i": 1}, {"after": AFTER})
    assert handle is not None
    wait_until(lambda: handle.id in packed_ids(reactor, node), 10, "the job packed")
    if isinstance(node.storage, MemoryStorage):  # the storage shares the node's bytes
        stored = node.storage._jobs[node.name][handle.id]
        assert [stored] == [packed for job_id, packed, _, _ in node.holdings.packed_jobs()]
        assert handle.id not in node.holdings.jobs  # no record, no Held: the timer entry is all
    assert handle.result(10) == {"i": 1}
    ((i, ran_at),) = runs.items
    assert i == 1
    assert ran_at >= enqueued + AFTER  # its due time is at least that: never early
    wait_until(lambda: node.held_count == 0, 10, "the node forgets it")


def test_cancel_of_a_packed_job(reactor: Reactor) -> None:
    registry, runs = Registry(), Recorder()
    timed(registry, runs)
    node = start(reactor, registry)
    handle = reactor.enqueue("later", {"i": 1}, {"after": 3600})
    assert handle is not None
    wait_until(lambda: handle.id in packed_ids(reactor, node), 10, "the job packed")
    assert reactor.cancel(handle.id) is True
    with pytest.raises(JobCancelled):
        handle.result(10)
    wait_until(lambda: node.held_count == 0, 10, "the node forgets it")
    assert runs.items == []


def test_many_jobs_cross_the_horizon_each_once_none_early(reactor: Reactor) -> None:
    registry, runs = Registry(), Recorder()
    timed(registry, runs)
    node = start(reactor, registry)
    enqueued = time.time()
    # Spread over the horizon: some packed on arrival, some not; all run once, none early.
    handles = [reactor.enqueue("later", {"i": i}, {"after": 0.1 + i * 0.01}) for i in range(200)]
    for h in handles:
        assert h is not None
        h.result(20)
    assert sorted(i for i, _ in runs.items) == list(range(200))
    assert all(ran_at >= enqueued + 0.1 + i * 0.01 for i, ran_at in runs.items)
    wait_until(lambda: node.held_count == 0, 10, "the node forgets them")


def test_restart_a_node_holding_packed_jobs(reactor: Reactor) -> None:
    registry, runs = Registry(), Recorder()
    timed(registry, runs)
    w1 = start(reactor, registry)
    enqueued = time.time()
    handles = [reactor.enqueue("later", {"i": i}, {"after": 2 * AFTER}) for i in range(30)]
    ids = {h.id for h in handles if h is not None}
    wait_until(lambda: packed_ids(reactor, w1) == ids, 10, "every job packed")
    reactor.call(w1.stop, timeout=30)
    # Memory: handed back and sent again; Redis: kept in storage and taken up again.
    start(reactor, registry)
    for h in handles:
        assert h is not None
        h.result(20)
    assert sorted(i for i, _ in runs.items) == list(range(30))
    assert all(ran_at >= enqueued + 2 * AFTER for _, ran_at in runs.items)


def test_retry_of_a_failed_job_beside_packed_ones(reactor: Reactor) -> None:
    reactor.config.update(remove_failed_jobs=False)
    registry, runs, failures = Registry(), Recorder(), Recorder()
    timed(registry, runs)

    @registry.job("flaky")
    def flaky(args: dict[str, Any]) -> None:
        failures(1)
        if len(failures) == 1:
            raise RuntimeError("first time")

    node = start(reactor, registry)
    later = [reactor.enqueue("later", {"i": i}, {"after": 3600}) for i in range(5)]
    failed = reactor.enqueue("flaky", {}, {"max_attempt": 1})
    assert failed is not None
    with pytest.raises(Exception, match="first time"):
        failed.result(10)
    ids = {h.id for h in later if h is not None}
    wait_until(lambda: packed_ids(reactor, node) == ids, 10, "the delayed jobs packed")
    assert reactor.retry(failed.id) is True
    wait_until(lambda: len(failures) == 2, 10, "the retried job runs")
    assert packed_ids(reactor, node) == ids  # the packed jobs are untouched
    assert runs.items == []
