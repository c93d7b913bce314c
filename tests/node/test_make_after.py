"""`make_after` as the Ruby record had it: the wait that scheduled the next run (issue 12).

Enqueue delay, `period` between periodic runs, the retry delay after a failed attempt; kept in
the stored record (memory and Redis) and in `args["job_itself"]`, beside `run_at_ts`, which
stays what the timers use.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
import uvloop

from jobreactor import Reactor, Registry
from jobreactor.job import JobRecord, JobStatus
from jobreactor.node import Node
from jobreactor.node.scheduler import LOOP_TIMER_LEAD_S, timer_lead
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


def test_a_loop_timer_armed_early_then_waited_out_never_fires_before_the_deadline() -> None:
    async def fire_at(deadline: float) -> float:
        loop = asyncio.get_running_loop()
        fired: asyncio.Future[float] = loop.create_future()

        def on_timer() -> None:  # the node's _on_timer, reduced to the timing
            if timer_lead(deadline, time.monotonic()) is not None:
                loop.call_soon(on_timer)
                return
            fired.set_result(time.monotonic())

        loop.call_at(deadline - LOOP_TIMER_LEAD_S, on_timer)
        return await fired

    async def scenario() -> list[float]:
        lateness = []
        for k in range(20):
            deadline = time.monotonic() + 0.005 + k * 0.00037
            lateness.append(await fire_at(deadline) - deadline)
        return lateness

    assert min(uvloop.run(scenario())) >= 0.0  # how late it is depends on the machine: bench
