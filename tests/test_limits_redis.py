"""Limits across node processes sharing one Redis (issue 21): real `jobreactor node` processes.

Jobs write their start and end times (and node) to a file; the checks run on those records.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jobreactor import Limit, Reactor
from jobreactor.limits import slots_for
from jobreactor.storage.keys import Keys
from jobreactor.storage.redis import RedisStorage
from jobreactor.storage.redis_limits import RedisLimits
from tests.conftest import make_test_reactor, stop_process, wait_until
from tests.redis_server import RedisServer, unique_prefix

pytestmark = pytest.mark.timeout(180)

JOBS = textwrap.dedent(
    """
    import asyncio, json, os, time
    from jobreactor import Limit, job

    def _log(args, **fields):
        with open(args["out"], "a") as f:
            f.write(json.dumps({"node": os.environ["NODE"], "i": args["i"], **fields}) + "\\n")

    @job("export", limits=[Limit(concurrency=2, key="{customer}")])
    async def export(args):
        start = time.time()
        _log(args, what="start", customer=args["customer"], t=start)
        await asyncio.sleep(args["s"])
        _log(args, what="end", customer=args["customer"], start=start, end=time.time())

    @job("hold", limits=[Limit(concurrency=1, key="{k}")])
    async def hold(args):
        start = time.time()
        _log(args, what="start", t=start)
        await asyncio.sleep(args["s"])
        _log(args, what="end", start=start, end=time.time())

    @job("charge", limits=[Limit(rate="4/s", key="{merchant}")])
    def charge(args):
        _log(args, what="start", merchant=args["merchant"], t=time.time())
    """
)


class NodeProcess:
    """`python -m jobreactor node --config <toml>` with the jobs above."""

    def __init__(
        self, tmp: Path, name: str, distributor: int, redis_url: str, prefix: str, lease_s: float
    ) -> None:
        self.prefix = prefix
        jobs = tmp / "limit_jobs"
        jobs.mkdir(exist_ok=True)
        (jobs / "jobs.py").write_text(JOBS)
        config = tmp / f"{name}.toml"
        config.write_text(
            "\n".join(
                [
                    f'name = "{name}"',
                    'storage = "redis"',
                    f'redis_url = "{redis_url}"',
                    f'redis_prefix = "{prefix}"',
                    f'distributors = [["127.0.0.1", {distributor}]]',
                    f'job_directory = "{jobs}"',
                    f"limit_lease = {lease_s}",
                    "reconnect_interval = 0.1",
                    "shutdown_timeout = 5.0",
                    'logger_method = "INFO"',
                    "log_job_processing = false",
                ]
            )
            + "\n"
        )
        self.prefix = prefix
        self.log = tmp / f"{name}.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "jobreactor", "node", "--config", str(config)],
                stdout=subprocess.DEVNULL,
                stderr=log,
                env={**os.environ, "NODE": name},
            )

    def stop(self) -> None:
        stop_process(self.proc)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Callable[..., tuple[Reactor, list[NodeProcess]]]]:
    made: list[tuple[Reactor, list[NodeProcess]]] = []

    def build(
        redis_url: str, nodes: int = 2, lease_s: float = 2.0
    ) -> tuple[Reactor, list[NodeProcess]]:
        # `node` is a rule here: a job meant for n1 never lands on n0 because n1 was busy.
        reactor = make_test_reactor(max_attempt=1, always_use_specified_node=True)
        port = reactor.start_distributor("127.0.0.1", 0)[1]
        prefix = unique_prefix()
        procs = [
            NodeProcess(tmp_path, f"n{i}", port, redis_url, prefix, lease_s) for i in range(nodes)
        ]
        made.append((reactor, procs))
        wait_until(lambda: len(reactor.nodes()) == nodes, 60, "the nodes to connect")
        return reactor, procs

    yield build
    for reactor, procs in made:
        for proc in procs:
            proc.stop()
        reactor.stop(timeout=15)


def records(path: Path, what: str) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line]
    return [line for line in lines if line["what"] == what]


def most_at_once(spans: list[dict[str, Any]]) -> int:
    events = sorted([(s["start"], 1) for s in spans] + [(s["end"], -1) for s in spans])
    level = most = 0
    for _, step in events:  # an end at the instant of a start counts first (-1 < 1)
        level += step
        most = max(most, level)
    return most


def test_concurrency_per_key_holds_across_two_nodes(
    fleet: Callable[..., tuple[Reactor, list[NodeProcess]]], any_redis_url: str, tmp_path: Path
) -> None:
    # A long lease: a job refused on one node starts when the other's release wakes it (pub/sub),
    # not when a lease ends (the jobs would then take far longer than result() waits).
    reactor, _ = fleet(any_redis_url, lease_s=60.0)
    out = tmp_path / "spans.jsonl"
    counter = itertools.count()
    handles = [
        reactor.enqueue("export", {"customer": c, "s": 0.3, "out": str(out), "i": next(counter)})
        for c in ["a"] * 8 + ["b"] * 4
    ]
    for handle in handles:
        handle.result(90)  # type: ignore[union-attr]
    ends = records(out, "end")
    assert len(ends) == 12
    assert most_at_once([s for s in ends if s["customer"] == "a"]) <= 2
    assert most_at_once([s for s in ends if s["customer"] == "b"]) <= 2
    assert {s["node"] for s in ends if s["customer"] == "a"} == {"n0", "n1"}  # one limit, 2 nodes
    assert most_at_once(ends) >= 3  # b ran beside a's two: other keys are not held up


def test_a_killed_node_frees_its_slots_when_its_lease_ends(
    fleet: Callable[..., tuple[Reactor, list[NodeProcess]]],
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    reactor, procs = fleet(redis_server.url)
    out = tmp_path / "hold.jsonl"
    reactor.enqueue("hold", {"k": "x", "s": 600, "out": str(out), "i": 0}, {"node": "n0"})
    wait_until(lambda: len(records(out, "start")) == 1, 60, "n0 to take the slot")
    waiting = reactor.enqueue("hold", {"k": "x", "s": 0, "out": str(out), "i": 1}, {"node": "n1"})
    # n1 asked and was refused (its waiter registration is in Redis): only then kill n0.
    wait_until(
        lambda: _waiters(redis_server, procs[0].prefix, "hold:c:x") == ["n1"], 60, "n1 to wait"
    )
    assert len(records(out, "start")) == 1
    procs[0].proc.kill()
    killed_at = time.time()
    procs[0].proc.wait(10)
    waiting.result(60)  # type: ignore[union-attr]
    second = [r for r in records(out, "start") if r["i"] == 1]
    assert second[0]["node"] == "n1"
    assert second[0]["t"] >= killed_at  # never beside the killed node's job


def test_a_restarted_node_resumes_its_job_in_the_slot_it_held(
    fleet: Callable[..., tuple[Reactor, list[NodeProcess]]],
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    # A long lease: the stale slot of the killed run can't lapse while n0 restarts.
    reactor, procs = fleet(redis_server.url, lease_s=60.0)
    out = tmp_path / "hold.jsonl"
    # n1 shows as a waiter only while n0's run holds the slot: long enough to see it and kill
    # n0 on a loaded machine (it was 1 s, which a slow poll of a busy Redis missed: the
    # whole-suite failure, "n1 to wait").
    first = reactor.enqueue("hold", {"k": "y", "s": 4.0, "out": str(out), "i": 0}, {"node": "n0"})
    wait_until(lambda: len(records(out, "start")) == 1, 60, "n0 to take the slot")
    other = reactor.enqueue("hold", {"k": "y", "s": 0, "out": str(out), "i": 1}, {"node": "n1"})
    wait_until(
        lambda: _waiters(redis_server, procs[0].prefix, "hold:c:y") == ["n1"], 60, "n1 to wait"
    )
    procs[0].proc.kill()
    procs[0].proc.wait(10)
    procs[0] = NodeProcess(
        tmp_path, "n0", reactor.distributor.address_port(), redis_server.url, procs[1].prefix, 60.0
    )
    first.result(90)  # type: ignore[union-attr]
    other.result(90)  # type: ignore[union-attr]
    starts = records(out, "start")
    ends = {r["i"]: r for r in records(out, "end")}
    assert [r["i"] for r in starts] == [0, 0, 1]  # resumed first: its slot was still its own
    assert starts[2]["t"] >= ends[0]["end"]  # and the other waited for its release


def _waiters(server: RedisServer, prefix: str, slot: str) -> list[str]:
    """Waiters of `slot` under this fleet's prefix: one read of its key. (A SCAN of the server,
    which the whole run shares and fills, took longer than the window it had to catch.)"""
    import redis

    client = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        return sorted(str(m) for m in client.zrange(Keys(prefix).limit(slot)[1], 0, -1))
    finally:
        client.close()


def test_rate_per_key_holds_across_two_nodes(
    fleet: Callable[..., tuple[Reactor, list[NodeProcess]]],
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    reactor, _ = fleet(redis_server.url)
    out = tmp_path / "starts.jsonl"
    counter = itertools.count()
    handles = [
        reactor.enqueue("charge", {"merchant": m, "out": str(out), "i": next(counter)})
        for m in ["m1"] * 12 + ["m2"] * 4
    ]
    for handle in handles:
        handle.result(90)  # type: ignore[union-attr]
    m1 = [r for r in records(out, "start") if r["merchant"] == "m1"]
    assert {r["node"] for r in m1} == {"n0", "n1"}
    times = sorted(r["t"] for r in m1)
    # Starts are logged a little after Redis granted them (a reply, a loop turn): 0.15 s slack.
    for early, late in zip(times, times[4:], strict=False):
        assert late - early >= 1.0 - 0.15, "a 1 s window held a fifth start"
    assert times[-1] - times[0] >= (12 / 4 - 1) - 0.15  # 12 at 4/s: never faster than the rate


# --- the Redis store itself (Lua on a real server) -----------------------------------------------


async def test_redis_store_grants_refuses_wakes_and_renews(any_redis_url: str) -> None:
    storage = RedisStorage(any_redis_url, prefix=unique_prefix())
    store = RedisLimits(storage)
    (slot,) = slots_for("j", [Limit(concurrency=2, key="{c}")], {"c": 1})
    try:
        # Three at once (one loop turn: one script call): two granted, the third refused.
        answers = await asyncio.gather(*(store.acquire(slot, m, "n1", 5.0) for m in "abc"))
        assert answers[:2] == [None, None]
        assert answers[2] is not None
        assert 0 < answers[2] <= 5.0
        assert await store.acquire(slot, "a", "n1", 5.0) is None  # a holder asks again: kept
        assert await store.renew(slot.name, ["a", "gone"], 5.0) == ["gone"]
        assert await store.release(slot, "a") == ["n1"]  # who waited, once
        assert await store.release(slot, "b") == []
        assert await store.acquire(slot, "c", "n1", 5.0) is None
    finally:
        await storage.aclose()


async def test_redis_store_rate_window_and_a_flushed_script_cache(any_redis_url: str) -> None:
    storage = RedisStorage(any_redis_url, prefix=unique_prefix())
    store = RedisLimits(storage)
    (slot,) = slots_for("j", [Limit(rate="2/h")], {})
    try:
        assert await store.acquire(slot, "a:1", "n1", 5.0) is None
        assert await store.acquire(slot, "b:1", "n1", 5.0) is None
        wait_s = await store.acquire(slot, "c:1", "n1", 5.0)
        assert wait_s is not None
        assert 3590 < wait_s <= 3600
        assert await store.release(slot, "b:1") == ["n1"]  # a start taken back
        client = await storage._redis()
        await client.script_flush()  # as after a Redis restart: loaded again on NOSCRIPT
        assert await store.acquire(slot, "c:1", "n1", 5.0) is None
    finally:
        await storage.aclose()
