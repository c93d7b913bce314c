"""`make_after` as the Ruby record had it: the wait that scheduled the next run (issue 12).

Enqueue delay, `period` between periodic runs, the retry delay after a failed attempt; kept in
the stored record (memory and Redis) and in `args["job_itself"]`, beside `run_at_ts`, which
stays what the timers use.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from jobreactor import Reactor, Registry
from jobreactor.job import JobRecord, JobStatus
from jobreactor.node import Node
from tests.conftest import Recorder, wait_until
from tests.redis_server import RedisServer, unique_prefix

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["memory", "redis"])
def storage_kind(request: pytest.FixtureRequest, reactor: Reactor) -> str:
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        reactor.config.update(redis_prefix=unique_prefix(), hiredis_url=server.url)
    return str(request.param)


def start(reactor: Reactor, registry: Registry, storage: str) -> Node:
    return reactor.start_node("w1", storage, None, registry=registry)._node


def stored(reactor: Reactor, node: Node, job_id: str) -> JobRecord | None:
    async def load() -> JobRecord | None:
        record = await node.storage.load(node.name, job_id)
        return None if record is None else record.copy()

    return reactor.call(load)


def test_enqueue_delay_is_make_after_in_the_stored_record(
    reactor: Reactor, storage_kind: str
) -> None:
    registry = Registry()
    registry.job("later")(lambda args: None)
    node = start(reactor, registry, storage_kind)
    handle = reactor.enqueue("later", {}, {"after": 30})
    assert handle is not None
    wait_until(lambda: stored(reactor, node, handle.id) is not None, 10, "the stored record")
    record = stored(reactor, node, handle.id)
    assert record is not None
    assert record.make_after == 30
    assert record.run_at_ts == pytest.approx(time.time() + 30, abs=5)  # the timers' truth
    assert reactor.cancel(handle.id)


def test_periodic_record_between_runs_has_make_after_equal_to_period(
    reactor: Reactor, storage_kind: str
) -> None:
    registry, runs = Registry(), Recorder()
    registry.job("tick")(lambda args: runs(1))
    node = start(reactor, registry, storage_kind)
    handle = reactor.enqueue("tick", {}, {"period": 30})
    assert handle is not None
    runs.wait(1)

    def queued() -> bool:
        record = stored(reactor, node, handle.id)
        return record is not None and record.status == JobStatus.QUEUED

    wait_until(queued, 10, "the periodic record to be queued again")
    record = stored(reactor, node, handle.id)
    assert record is not None
    assert record.make_after == 30
    assert reactor.cancel(handle.id)


def test_retry_delay_is_make_after_after_a_failed_attempt(
    reactor: Reactor, storage_kind: str
) -> None:
    reactor.config.update(retry_multiplier=20)
    registry, runs = Registry(), Recorder()

    @registry.job("fails")
    def fails(args: dict[str, Any]) -> None:
        runs(1)
        raise RuntimeError("again")

    node = start(reactor, registry, storage_kind)
    handle = reactor.enqueue("fails", {}, {"max_attempt": 3})
    assert handle is not None
    runs.wait(1)

    def waiting_for_retry() -> bool:
        record = stored(reactor, node, handle.id)
        return record is not None and record.status == JobStatus.ERROR and record.make_after > 0

    wait_until(waiting_for_retry, 10, "the record waiting for its retry")
    record = stored(reactor, node, handle.id)
    assert record is not None
    assert record.make_after == 20  # attempt 1 × retry_multiplier 20
    assert record.attempt == 1
    assert reactor.cancel(handle.id)


def test_job_itself_carries_make_after_also_when_zero(reactor: Reactor) -> None:
    reactor.config.update(merge_job_itself_to_args=True)
    registry = Registry()
    seen: list[dict[str, Any]] = []
    two = threading.Event()

    @registry.job("look")
    def look(args: dict[str, Any]) -> None:
        seen.append(dict(args["job_itself"]))
        if len(seen) == 2:
            two.set()

    start(reactor, registry, "memory")
    now = reactor.enqueue("look", {})
    later = reactor.enqueue("look", {}, {"after": 0.05})
    assert now is not None
    assert later is not None
    assert two.wait(10)
    by_id = {itself["id"]: itself for itself in seen}
    assert by_id[now.id]["make_after"] == 0
    assert by_id[later.id]["make_after"] == pytest.approx(0.05)
    assert {"name", "args", "attempt", "status", "distributor", "node"} <= by_id[now.id].keys()
