"""Limits (issue 21): the pure bookkeeping with time passed in, and a memory node (per node).

The Redis variants, across node processes, are in tests/test_limits_redis.py.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from jobreactor import (
    InvalidOptions,
    JobCancelled,
    JobFailed,
    Limit,
    LimitKeyError,
    Reactor,
    Registry,
)
from jobreactor.limits import RateLog, SlotTable, limit_gauges, slots_for
from jobreactor.node.node import Node
from jobreactor.testing import EagerMode
from tests.conftest import Recorder, wait_until

pytestmark = pytest.mark.timeout(60)


# --- Limit: declaration and key templates ------------------------------------------------------


def test_rate_is_n_per_second_minute_or_hour() -> None:
    assert (Limit(rate="30/m").amount, Limit(rate="30/m").period_s) == (30, 60.0)
    assert Limit(rate="2/s").period_s == 1.0
    assert Limit(rate=" 5 / h ").period_s == 3600.0
    for bad in ("30", "30/d", "0/s", "-1/s", "x/m", ""):
        with pytest.raises(InvalidOptions, match="N/s, N/m or N/h"):
            Limit(rate=bad)


def test_a_limit_is_exactly_one_of_concurrency_and_rate() -> None:
    with pytest.raises(InvalidOptions, match="exactly one"):
        Limit()
    with pytest.raises(InvalidOptions, match="exactly one"):
        Limit(concurrency=1, rate="1/s")
    with pytest.raises(InvalidOptions, match=">= 1"):
        Limit(concurrency=0)
    with pytest.raises(InvalidOptions, match="must be an int"):
        Limit(concurrency=True)


def test_key_templates_fill_from_args_and_name_a_missing_one() -> None:
    limit = Limit(concurrency=2, key="{customer}-{order.region}")
    assert limit.key_for({"customer": 7, "order": {"region": "eu"}}) == "7-eu"
    assert Limit(concurrency=1, key="global").key_for({}) == "global"
    with pytest.raises(LimitKeyError, match="needs arg 'customer'"):
        limit.key_for({"order": {"region": "eu"}})
    with pytest.raises(LimitKeyError, match=r"needs arg 'order\.region'"):
        limit.key_for({"customer": 1, "order": "flat"})
    # A brace in a value cannot end the Redis hash tag early.
    assert Limit(concurrency=1, key="{c}").key_for({"c": "a}b{%"}) == "a%7Db%7B%25"


def test_templates_take_plain_names_only() -> None:
    for bad in ("{c!r}", "{c:>4}", "{0}", "{c[0]}", "{", "{}"):
        with pytest.raises(InvalidOptions):
            Limit(concurrency=1, key=bad)


def test_a_definition_checks_its_limits_and_orders_concurrency_first() -> None:
    registry = Registry()
    registry.job("j", limits=[Limit(rate="1/s", key="{a}"), Limit(concurrency=1, key="{a}")])(
        lambda args: None
    )
    definition = registry["j"]
    assert [limit.kind for limit in definition.limits] == ["c", "r"]
    slots = slots_for("j", definition.limits, {"a": 3})
    assert [slot.name for slot in slots] == ["j:c:3", "j:r:3"]
    assert [slot.label for slot in slots] == ["concurrency:3", "rate:3"]
    with pytest.raises(InvalidOptions, match="Limit objects"):
        registry.job("k", limits=["2/s"])
    with pytest.raises(InvalidOptions, match="a list of Limit"):
        registry.job("k", limits=Limit(concurrency=1))
    with pytest.raises(InvalidOptions, match="two limits of one kind"):
        registry.job("k", limits=[Limit(concurrency=1), Limit(concurrency=2)])


# --- pure bookkeeping, time passed in ------------------------------------------------------------


def test_slots_grant_up_to_the_limit_and_a_release_frees_one() -> None:
    table = SlotTable()
    assert table.acquire("s", "a", 2, now=0.0) is None
    assert table.acquire("s", "b", 2, now=0.0) is None
    assert table.acquire("s", "c", 2, now=0.0) == math.inf  # only a release frees one
    assert table.acquire("s", "a", 2, now=1.0) is None  # a holder asking again keeps its slot
    assert table.acquire("other", "c", 2, now=1.0) is None  # keys are independent
    assert table.release("s", "a")
    assert not table.release("s", "a")
    assert table.acquire("s", "c", 2, now=2.0) is None
    assert table.holding("s", now=2.0) == 2


def test_a_lease_not_renewed_lapses_and_says_when() -> None:
    table = SlotTable()
    assert table.acquire("s", "dead", 1, now=0.0, lease_s=10.0) is None
    assert table.acquire("s", "w", 1, now=4.0, lease_s=10.0) == pytest.approx(6.0)
    assert table.renew("s", "dead", now=5.0, lease_s=10.0)  # renewed: ends at 15
    assert table.acquire("s", "w", 1, now=12.0, lease_s=10.0) == pytest.approx(3.0)
    assert table.acquire("s", "w", 1, now=15.0, lease_s=10.0) is None  # lapsed: taken
    assert not table.renew("s", "dead", now=15.5, lease_s=10.0)  # too late: it lost it


def test_no_window_holds_more_starts_than_the_rate() -> None:
    log = RateLog()
    granted: list[float] = []
    now = 0.0
    while len(granted) < 30:  # ask every 10 ms, as a flood of jobs would
        if log.acquire("r", f"m{len(granted)}", 3, 1.0, now) is None:
            granted.append(now)
        now = round(now + 0.01, 2)
    for i in range(len(granted) - 3):
        assert granted[i + 3] - granted[i] >= 1.0  # any 4 consecutive span a full period
    assert granted[:5] == [0.0, 0.01, 0.02, 1.0, 1.01]


def test_a_refused_rate_start_names_the_instant_the_window_allows() -> None:
    log = RateLog()
    assert log.acquire("r", "a", 2, 60.0, now=0.0) is None
    assert log.acquire("r", "b", 2, 60.0, now=10.0) is None
    assert log.acquire("r", "c", 2, 60.0, now=20.0) == pytest.approx(40.0)
    assert log.forget("r", "b")  # b did not start after all: its start goes back
    assert log.acquire("r", "c", 2, 60.0, now=20.0) is None


def test_gauges_come_from_node_stats() -> None:
    stats: list[dict[str, Any]] = [
        {
            "name": "w1",
            "limits": {"waiting": [{"job_name": "j", "limit_key": "rate:m", "waiting": 3}]},
        },
        {"name": "w2"},
    ]
    assert limit_gauges(stats) == [
        ("limit_waiting", {"node": "w1", "job_name": "j", "limit_key": "rate:m"}, 3.0)
    ]


# --- a memory node: limits per node --------------------------------------------------------------


def start(reactor: Reactor, registry: Registry, **kw: Any) -> Node:
    return reactor.start_node(
        "w1", "memory", [("127.0.0.1", reactor.distributor.address_port())], registry=registry, **kw
    )._node


class Gate:
    """Jobs of one key block here until the test opens it (in a thread: the loop goes on)."""

    def __init__(self) -> None:
        self.opened = threading.Event()
        self.lock = threading.Lock()
        self.running: dict[str, int] = {}
        self.most: dict[str, int] = {}
        self.most_total = 0

    async def run(self, key: str, block: bool) -> None:
        with self.lock:
            self.running[key] = self.running.get(key, 0) + 1
            self.most[key] = max(self.most.get(key, 0), self.running[key])
            self.most_total = max(self.most_total, sum(self.running.values()))
        try:
            if block:
                await asyncio.to_thread(self.opened.wait, 30)
        finally:
            with self.lock:
                self.running[key] -= 1


def stats_of(reactor: Reactor, node: Node) -> dict[str, Any]:
    async def read() -> dict[str, Any]:
        return node.stats()

    return reactor.call(read)


def waiting_of(reactor: Reactor, node: Node) -> dict[str, int]:
    stats = stats_of(reactor, node)
    return {row["limit_key"]: row["waiting"] for row in stats["limits"]["waiting"]}


def test_concurrency_per_key_holds_and_other_keys_go_on(reactor: Reactor) -> None:
    registry, gate = Registry(), Gate()

    @registry.job("export", limits=[Limit(concurrency=2, key="{customer}")])
    async def export(args: dict[str, Any]) -> None:
        await gate.run(args["customer"], args["block"])

    node = start(reactor, registry)
    blocked = [reactor.enqueue("export", {"customer": "a", "block": True}) for _ in range(5)]
    wait_until(lambda: waiting_of(reactor, node).get("concurrency:a") == 3, 20, "3 waiting")
    assert gate.running == {"a": 2}
    others = [reactor.enqueue("export", {"customer": c, "block": False}) for c in "bcd"]
    for handle in others:
        handle.result(20)  # type: ignore[union-attr]
    assert stats_of(reactor, node)["running"] == 2  # the waiting ones hold no run slot
    gate.opened.set()
    for handle in blocked:
        handle.result(20)  # type: ignore[union-attr]
    assert gate.most["a"] == 2
    assert gate.most_total >= 3  # b, c or d ran beside the two of a
    assert waiting_of(reactor, node) == {}


def test_rate_per_key_on_a_memory_node(reactor: Reactor) -> None:
    registry, starts = Registry(), Recorder()

    @registry.job("charge", limits=[Limit(rate="4/s", key="{merchant}")])
    def charge(args: dict[str, Any]) -> None:
        starts((args["merchant"], time.monotonic()))

    start(reactor, registry)
    handles = [reactor.enqueue("charge", {"merchant": m}) for m in ["m1"] * 10 + ["m2"] * 2]
    for handle in handles:
        handle.result(30)  # type: ignore[union-attr]
    m1 = sorted(t for merchant, t in starts.items if merchant == "m1")
    for early, late in zip(m1, m1[4:], strict=False):
        assert late - early >= 1.0 - 0.005  # no 1 s window holds a fifth start
    m2 = [t for merchant, t in starts.items if merchant == "m2"]
    assert max(m2) < m1[-1]  # the other merchant did not wait behind m1


def test_a_missing_key_arg_fails_the_job_without_retries(reactor: Reactor) -> None:
    registry, runs = Registry(), Recorder()
    registry.job("charge", limits=[Limit(rate="4/s", key="{merchant}")])(runs)
    start(reactor, registry)
    handle = reactor.enqueue("charge", {"amount": 3}, {"max_attempt": 5})
    with pytest.raises(JobFailed) as failed:
        handle.result(20)  # type: ignore[union-attr]
    assert failed.value.args_dict["error"]["class"] == "LimitKeyError"
    assert "merchant" in failed.value.args_dict["error"]["message"]
    assert len(runs) == 0


def test_a_missing_key_arg_is_refused_at_enqueue_where_the_job_is_known() -> None:
    app = Reactor(logger_method="WARNING")
    app.registry = Registry()
    app.registry.job("charge", limits=[Limit(rate="4/s", key="{merchant}")])(lambda a: None)
    app.run()
    try:
        app.start_distributor("127.0.0.1", 0)
        with pytest.raises(LimitKeyError, match="merchant"):
            app.enqueue("charge", {"amount": 3})
    finally:
        app.stop(timeout=10)


def test_a_waiting_job_can_be_cancelled_and_the_rest_go_on(reactor: Reactor) -> None:
    registry, gate = Registry(), Gate()

    @registry.job("export", limits=[Limit(concurrency=1, key="one")])
    async def export(args: dict[str, Any]) -> None:
        await gate.run("one", args["block"])

    node = start(reactor, registry)
    first = reactor.enqueue("export", {"block": True})
    wait_until(lambda: gate.running.get("one") == 1, 20, "the first to run")
    second, third = (reactor.enqueue("export", {"block": False}) for _ in range(2))
    wait_until(lambda: waiting_of(reactor, node).get("concurrency:one") == 2, 20, "2 waiting")
    assert reactor.cancel(second.id)  # type: ignore[union-attr]
    with pytest.raises(JobCancelled):
        second.result(20)  # type: ignore[union-attr]
    gate.opened.set()
    first.result(20)  # type: ignore[union-attr]
    third.result(20)  # type: ignore[union-attr]
    assert gate.most["one"] == 1


def test_a_retry_waits_for_its_slot_again(reactor: Reactor) -> None:
    registry, runs = Registry(), Recorder()
    tries = itertools.count()

    @registry.job("flaky", limits=[Limit(concurrency=1)])
    def flaky(args: dict[str, Any]) -> None:
        runs(args["i"])
        if args["i"] == 0 and next(tries) == 0:
            raise RuntimeError("once")

    start(reactor, registry)
    handles = [reactor.enqueue("flaky", {"i": i}, {"max_attempt": 3}) for i in range(3)]
    for handle in handles:
        handle.result(20)  # type: ignore[union-attr]
    assert sorted(runs.items) == [0, 0, 1, 2]


def test_a_stopping_node_hands_its_waiting_jobs_to_another(reactor: Reactor) -> None:
    registry1, registry2, where = Registry(), Registry(), Recorder()
    release = threading.Event()

    @registry1.job("export", limits=[Limit(concurrency=1)])
    async def slow(args: dict[str, Any]) -> None:
        where(("w1", args["i"]))
        assert await asyncio.to_thread(release.wait, 30)  # holds the slot until released

    registry2.job("export", limits=[Limit(concurrency=1)])(lambda args: where(("w2", args["i"])))
    w1 = start(reactor, registry1)
    handles = [reactor.enqueue("export", {"i": i}) for i in range(3)]
    wait_until(lambda: waiting_of(reactor, w1).get("concurrency:*") == 2, 20, "2 waiting")
    reactor.start_node(
        "w2", "memory", [("127.0.0.1", reactor.distributor.address_port())], registry=registry2
    )
    with ThreadPoolExecutor(1) as pool:
        stopping = pool.submit(reactor.call, w1.stop, timeout=30)
        where.wait(3)  # the two waiting ones handed back and run on w2 while w1 holds the slot
        release.set()
        stopping.result(40)
    for handle in handles:
        handle.result(20)  # type: ignore[union-attr]
    assert sorted(i for _, i in where.items) == [0, 1, 2]  # each once
    assert sorted(node for node, _ in where.items) == ["w1", "w2", "w2"]


def test_eager_mode_runs_limited_jobs_at_once_and_still_checks_their_keys() -> None:
    reactor = Reactor(logger_method="WARNING", log_job_processing=False)
    reactor.registry = Registry()
    runs = Recorder()
    reactor.registry.job("charge", limits=[Limit(rate="1/h", key="{merchant}")])(runs)
    with EagerMode(reactor):
        for _ in range(3):  # time is skipped in eager mode: limits are not waited for either
            assert reactor.enqueue("charge", {"merchant": "m"}) is not None
        with pytest.raises(LimitKeyError):
            reactor.enqueue("charge", {})
    assert len(runs) == 3
