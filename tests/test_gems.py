"""The four gems inside jobreactor, memory storage, one process (SPEC §2–§5, §7).

Delayed::Job priorities/backoff/retry, DjOne enqueue_id/perform_id, Resque Lock lock/loner,
DistributedJob batches. The Redis variants run in tests/test_gems_redis.py.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Any

import pytest

from jobreactor import JobCancelled, JobFailed, Reactor, Registry
from tests.conftest import Recorder

pytestmark = pytest.mark.timeout(60)


def start(reactor: Reactor, registry: Registry, name: str = "w1", **kw: Any):
    return reactor.start_node(
        name, "memory", [("127.0.0.1", reactor.distributor.address_port())], registry=registry, **kw
    )


def uid() -> str:
    return uuid.uuid4().hex


# --- Delayed::Job --------------------------------------------------------------------------------


def test_priority_lower_runs_first_in_the_distributor_queue(reactor: Reactor) -> None:
    registry, order = Registry(), Recorder()
    registry.job("p")(lambda args: order(args["p"]))
    handles = [reactor.enqueue("p", {"p": p}, {"priority": p}) for p in (5, -3, 10, 0, 5, 1)]
    start(reactor, registry, concurrency=1)
    for h in handles:
        h.result(10)  # type: ignore[union-attr]
    assert order.items == [-3, 0, 1, 5, 5, 10]  # non-decreasing (collectiveidea ≥ 2.0)


def test_failed_job_is_kept_and_jr_retry_runs_it_again(reactor: Reactor) -> None:
    registry, runs = Registry(), Recorder()
    state = {"fail": True}

    @registry.job("flaky")
    def flaky(args: dict[str, Any]) -> None:
        runs(1)
        if state["fail"]:
            raise ValueError("not yet")

    node = start(reactor, registry)
    h = reactor.enqueue("flaky", {"x": 1}, {"max_attempt": 2})
    with pytest.raises(JobFailed):
        h.result(10)  # type: ignore[union-attr]
    stored = reactor.call(lambda: node._node.storage.load("w1", h.id))  # type: ignore[union-attr]
    assert stored is not None
    assert stored.status == "failed"
    assert stored.last_error == "ValueError: not yet"
    assert stored.failed_at is not None
    state["fail"] = False
    assert reactor.retry(h.id) is True  # type: ignore[union-attr]
    runs.wait(3)
    assert reactor.retry("nope") is False


# --- DjOne ---------------------------------------------------------------------------------------


def test_enqueue_id_refuses_a_second_copy_until_the_first_starts(reactor: Reactor) -> None:
    registry, runs = Registry(), Recorder()
    registry.job("sync_user")(lambda args: runs(args["v"]))
    key = uid()
    first = reactor.enqueue("sync_user", {"v": 1}, {"enqueue_id": key, "after": 0.5})
    assert first is not None
    assert reactor.enqueue("sync_user", {"v": 2}, {"enqueue_id": key}) is None
    start(reactor, registry)
    first.result(10)
    # started (and finished): the id is free again
    again = reactor.enqueue("sync_user", {"v": 3}, {"enqueue_id": key})
    assert again is not None
    again.result(10)
    assert runs.items == [1, 3]


def test_perform_id_postpones_a_duplicate_without_using_an_attempt(
    reactor: Reactor, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry, events, turned_away = Registry(), Recorder(), Recorder()
    gate = threading.Event()

    @registry.job("work")
    async def work(args: dict[str, Any]) -> None:
        events(("start", args["n"], time.monotonic()))
        if args["n"] == 1:
            await asyncio.get_running_loop().run_in_executor(None, gate.wait, 10)
        events(("end", args["n"], time.monotonic()))

    storage = start(reactor, registry)._node.storage
    real_acquire = storage.acquire

    async def acquire(key: str, owner: str, ttl_s: float) -> bool:
        got: bool = await real_acquire(key, owner, ttl_s)
        if not got:
            turned_away(owner)  # the node found the perform_id taken: it postpones that job
        return got

    monkeypatch.setattr(storage, "acquire", acquire)
    key = uid()
    opts = {"perform_id": key, "duplicate_delay": 0.2, "max_attempt": 1}
    h1 = reactor.enqueue("work", {"n": 1}, opts)
    events.wait(1)
    h2 = reactor.enqueue("work", {"n": 2}, opts)
    assert h2 is not None
    assert set(turned_away.wait(3)) == {h2.id}  # postponed three times (every 0.2 s)...
    assert [e[:2] for e in events.items] == [("start", 1)]  # ...and never started
    gate.set()
    h1.result(10)  # type: ignore[union-attr]
    h2.result(10)  # max_attempt 1: postponements used no attempt
    kinds = [e[:2] for e in events.items]
    assert kinds == [("start", 1), ("end", 1), ("start", 2), ("end", 2)]


# --- Resque Lock ---------------------------------------------------------------------------------


def test_lock_drops_a_job_whose_lock_is_held_and_calls_lock_failed(reactor: Reactor) -> None:
    registry, events = Registry(), Recorder()
    gate = threading.Event()

    @registry.job("locked")
    async def locked(args: dict[str, Any]) -> None:
        events(("run", args["n"]))
        await asyncio.get_running_loop().run_in_executor(None, gate.wait, 10)

    @registry.job_lock_failed("locked")
    def failed(args: dict[str, Any]) -> None:
        events(("lock_failed", args["n"]))

    start(reactor, registry)
    key = f"lock:{uid()}"
    h1 = reactor.enqueue("locked", {"n": 1}, {"lock": key})
    events.wait(1)
    h2 = reactor.enqueue("locked", {"n": 2}, {"lock": key})
    with pytest.raises(JobCancelled):
        h2.result(10)  # type: ignore[union-attr]
    gate.set()
    h1.result(10)  # type: ignore[union-attr]
    assert events.items == [("run", 1), ("lock_failed", 2)]
    # released after the run: a third copy runs
    h3 = reactor.enqueue("locked", {"n": 3}, {"lock": key})
    h3.result(10)  # type: ignore[union-attr]


def test_lock_true_keys_on_name_and_canonical_args(reactor: Reactor) -> None:
    registry, events = Registry(), Recorder()
    gate = threading.Event()

    @registry.job("l")
    async def job_fn(args: dict[str, Any]) -> None:
        events(args.get("tag"))
        await asyncio.get_running_loop().run_in_executor(None, gate.wait, 10)

    start(reactor, registry)
    token = uid()
    h1 = reactor.enqueue("l", {"a": 1, "b": 2, "t": token}, {"lock": True})
    events.wait(1)
    # same args in another key order: same lock; other args: another lock
    h2 = reactor.enqueue("l", {"t": token, "b": 2, "a": 1}, {"lock": True})
    h3 = reactor.enqueue("l", {"a": 9, "t": token, "tag": "other"}, {"lock": True})
    with pytest.raises(JobCancelled):
        h2.result(10)  # type: ignore[union-attr]
    events.wait(2)
    gate.set()
    h1.result(10)  # type: ignore[union-attr]
    h3.result(10)  # type: ignore[union-attr]


def test_lock_expired_before_release_calls_the_hook_and_keeps_the_key(reactor: Reactor) -> None:
    registry, events = Registry(), Recorder()

    @registry.job("slow")
    async def slow(args: dict[str, Any]) -> None:
        await asyncio.sleep(0.4)  # outlasts lock_timeout 0.1: the lock expires by the clock

    @registry.job_lock_expired("slow")
    def expired(args: dict[str, Any]) -> None:
        events("expired")

    start(reactor, registry)
    key = f"lock:{uid()}"
    reactor.enqueue("slow", {}, {"lock": key, "lock_timeout": 0.1}).result(10)  # type: ignore[union-attr]
    assert events.wait(1) == ["expired"]
    assert reactor.release_lock(key) is True  # it was left in place, expired
    assert reactor.release_lock(key) is False


def test_loner_refuses_an_enqueue_while_queued_or_running(reactor: Reactor) -> None:
    registry, events = Registry(), Recorder()
    gate = threading.Event()

    @registry.job("lone")
    async def lone(args: dict[str, Any]) -> None:
        events("run")
        await asyncio.get_running_loop().run_in_executor(None, gate.wait, 10)

    @registry.job_loner_enqueue_failed("lone")
    def refused(args: dict[str, Any]) -> None:
        events("refused")

    reactor.registry = registry  # the app's registry: where loner hooks are looked up
    args = {"k": uid()}
    h1 = reactor.enqueue("lone", args, {"loner": True})
    assert h1 is not None
    assert reactor.enqueue("lone", args, {"loner": True}) is None  # queued
    start(reactor, registry)
    events.wait(2)  # refused, run
    assert reactor.enqueue("lone", args, {"loner": True}) is None  # running
    gate.set()
    h1.result(10)
    assert events.items.count("refused") == 2
    assert reactor.enqueue("lone", args, {"loner": True}) is not None  # done: allowed again


# --- DistributedJob ------------------------------------------------------------------------------


def test_batch_parts_finish_and_on_complete_fires_once(reactor: Reactor) -> None:
    registry = Registry()
    registry.job("part")(lambda args: None)
    start(reactor, registry, name="a")
    start(reactor, registry, name="b")
    completed = Recorder()
    batch = reactor.batch(on_complete=completed)
    handles = [
        reactor.enqueue("part", {"i": i}, {"batch": batch.token, "part": part})
        for i, part in batch.push_each(range(300))
    ]
    for h in handles:
        h.result(20)  # type: ignore[union-attr]
    assert completed.wait(1) == [batch.token]
    assert batch.finished()
    assert batch.count() == 0
    assert batch.total() == 300


def test_parts_of_a_stopped_batch_are_skipped(reactor: Reactor) -> None:
    registry, runs = Registry(), Recorder()
    registry.job("part")(lambda args: runs(1))
    batch = reactor.batch()
    handles = [
        reactor.enqueue("part", {}, {"batch": batch.token, "part": part})
        for _, part in batch.push_each(range(5))
    ]
    batch.stop()
    start(reactor, registry)
    for h in handles:
        with pytest.raises(JobCancelled):
            h.result(10)  # type: ignore[union-attr]
    assert len(runs) == 0


def test_perform_id_is_kept_while_a_failed_job_waits_for_its_retry(reactor: Reactor) -> None:
    reactor.config.update(retry_multiplier=0.5)  # read by the node started below
    registry, events = Registry(), Recorder()
    failures = {"a": 1}

    @registry.job("dj")
    def dj(args: dict[str, Any]) -> None:
        events((args["who"], "start", time.monotonic()))
        if failures.get(args["who"], 0) > 0:
            failures[args["who"]] -= 1
            raise RuntimeError("first attempt fails")

    start(reactor, registry)
    key = uid()
    a = reactor.enqueue("dj", {"who": "a"}, {"perform_id": key, "duplicate_delay": 0.05})
    events.wait(1)  # a failed once and now waits 0.5 s for its retry, holding the perform id
    b = reactor.enqueue("dj", {"who": "b"}, {"perform_id": key, "duplicate_delay": 0.05})
    a.result(10)  # type: ignore[union-attr]
    b.result(10)  # type: ignore[union-attr]
    order = [(who, what) for who, what, _ in events.items]
    assert order == [("a", "start"), ("a", "start"), ("b", "start")]  # dj_one semantics


def test_final_failure_frees_the_perform_id_at_once(reactor: Reactor) -> None:
    registry, events = Registry(), Recorder()

    @registry.job("dj")
    def dj(args: dict[str, Any]) -> None:
        events(args["who"])
        if args["who"] == "a":
            raise RuntimeError("fails for good")

    start(reactor, registry)
    key = uid()
    opts = {"perform_id": key, "duplicate_delay": 30, "max_attempt": 1}
    a = reactor.enqueue("dj", {"who": "a"}, opts)
    with pytest.raises(JobFailed):
        a.result(10)  # type: ignore[union-attr]
    reactor.enqueue("dj", {"who": "b"}, opts).result(10)  # type: ignore[union-attr]
    assert events.items == ["a", "b"]  # b was not postponed by 30 s


def test_lock_is_released_after_a_failure(reactor: Reactor) -> None:
    registry, events = Registry(), Recorder()

    @registry.job("locked")
    def locked(args: dict[str, Any]) -> None:
        events(args["n"])
        if args["n"] == 1:
            raise RuntimeError("boom")

    start(reactor, registry)
    key = f"lock:{uid()}"
    first = reactor.enqueue("locked", {"n": 1}, {"lock": key, "max_attempt": 1})
    with pytest.raises(JobFailed):
        first.result(10)  # type: ignore[union-attr]
    reactor.enqueue("locked", {"n": 2}, {"lock": key}).result(10)  # type: ignore[union-attr]
    assert events.items == [1, 2]
