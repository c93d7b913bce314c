"""Adoption: a dead (or stalled) redis-backed distributor's journal goes to one live member."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from jobreactor import Reactor, Registry
from jobreactor.discovery.journals import JournalClaims
from jobreactor.discovery.keys import GroupKeys
from jobreactor.discovery.registry import connect
from jobreactor.node.node import Node
from tests.conftest import Recorder, eventually, wait_until
from tests.discovery.conftest import Producer

pytestmark = pytest.mark.timeout(120)
logger = logging.getLogger(__name__)


def adopter(
    reactors: Callable[..., Reactor], group: dict[str, Any], fed: Recorder, node_grace: float = 3.0
) -> Reactor:
    reactor = reactors(**group, hiredis_url=group["discovery_url"], node_grace=node_grace)
    reactor.register_feedback("fed", lambda args: fed((id(reactor), args["i"])))
    reactor.start_distributor("127.0.0.1", 0, storage="redis")
    return reactor


def slow_node(reactor: Reactor, runs: Recorder, concurrency: int = 2, **kw: Any) -> Node:
    registry = Registry()

    @registry.job("work")
    async def work(args: dict[str, Any]) -> None:
        await asyncio.sleep(args.get("s", 0.05))
        runs(args["i"])

    return reactor.start_node(
        "n1", "memory", registry=registry, concurrency=concurrency, **kw
    )._node


async def _any(pending: Awaitable[list[Any]]) -> bool:
    return bool(await pending)


def adopted_by(reactor: Reactor) -> list[str]:
    presence = reactor.distributor.presence
    assert presence is not None
    return list(presence.adopted)


@contextmanager
def stalled(owner: Producer) -> Iterator[None]:
    """`owner` stopped (SIGSTOP: a loop blocked past the TTL, no beats) inside the block; once
    resumed, it must see that it was adopted."""
    owner.proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        owner.proc.send_signal(signal.SIGCONT)
    wait_until(
        lambda: "was adopted by another distributor" in owner.log.read_text(),
        timeout=10,
        what="the stalled owner to see it was fenced",
    )


def test_concurrent_adopters_exactly_one_wins(group: dict[str, Any]) -> None:
    async def race() -> list[int]:
        client = connect(group["discovery_url"])
        claims = JournalClaims(client, GroupKeys(group["redis_prefix"], "default"))
        try:
            # A journal whose owner never registered (or expired long ago) ...
            assert await claims.claim_own("distributor:10.0.0.1:4000", "dead:1:aaaaaaaaaaaa") == 1
            await eventually(lambda: _any(claims.stale(0.05)))
            # ... and twenty live distributors trying to adopt it at once.
            return list(
                await asyncio.gather(
                    *(
                        claims.adopt(
                            "distributor:10.0.0.1:4000", "dead:1:aaaaaaaaaaaa", f"a{i}", 0.05
                        )
                        for i in range(20)
                    )
                )
            )
        finally:
            await client.aclose()

    epochs = asyncio.run(race())
    assert sorted(epochs)[:-1] == [0] * 19
    assert epochs.count(2) == 1  # the winner's fencing epoch


def test_kill_9_of_a_redis_backed_worker_one_live_member_adopts_every_job(
    reactors: Callable[..., Reactor], group: dict[str, Any], producers: Callable[..., Producer]
) -> None:
    fed = Recorder()
    first, second = adopter(reactors, group, fed), adopter(reactors, group, fed)
    runs = Recorder()
    slow_node(reactors(**group, prefetch=0), runs, concurrency=3)
    count = 60
    victim = producers(group, count, "redis", slow=2)  # two still run when it is adopted
    iid = victim.ready()["iid"]
    wait_until(lambda: bool(victim.lines("enqueued")), timeout=20, what="jobs stored")
    wait_until(lambda: len(runs) >= 1, timeout=20, what="a job done, the two slow ones running")
    victim.proc.kill()
    victim.proc.wait(10)
    killed_at = time.monotonic()
    ids = {f"{victim.proc.pid}-{i}" for i in range(count)}
    fed_there = {row["i"] for row in victim.lines("fed")}
    wait_until(lambda: set(runs.items) >= ids, timeout=60, what="every job to run")
    wait_until(
        lambda: {i for _, i in fed.items} | fed_there >= ids, timeout=30, what="every feedback"
    )
    logger.info(
        "adopted %.1fs after the kill; %d fed before it, %d after",
        time.monotonic() - killed_at,
        len(fed_there),
        len(fed.items),
    )
    assert [adopted_by(first), adopted_by(second)].count([iid]) == 1
    winner = first if adopted_by(first) else second
    assert {who for who, _ in fed.items} == {id(winner)}  # named feedbacks fire in the adopter
    fed_here = Counter(i for _, i in fed.items)
    assert set(fed_here.values()) == {1}  # once each
    ran = Counter(runs.items)
    # A job that ran twice is one whose report the dead process had taken but not yet
    # removed from its journal (at-least-once); any other runs exactly once.
    assert all(n == 1 for i, n in ran.items() if i not in fed_there), ran


def test_a_stalled_owner_is_fenced_and_the_adopter_runs_its_jobs_once(
    reactors: Callable[..., Reactor], group: dict[str, Any], producers: Callable[..., Producer]
) -> None:
    fed = Recorder()
    live = adopter(reactors, group, fed)
    owner = producers(group, 10, "redis")
    iid = owner.ready()["iid"]
    wait_until(lambda: bool(owner.lines("enqueued")), timeout=20, what="jobs stored")
    with stalled(owner):
        wait_until(lambda: adopted_by(live) == [iid], timeout=20, what="adoption")
    runs = Recorder()
    slow_node(reactors(**group, prefetch=0), runs)
    wait_until(lambda: len(fed) == 10, timeout=30, what="every feedback in the adopter")
    assert sorted(Counter(runs.items).values()) == [1] * 10
    assert owner.lines("fed") == []  # the stalled one dispatched nothing it had lost
    assert len({i for _, i in fed.items}) == 10


def test_a_stalled_owner_sends_a_waiting_node_nothing_it_lost(
    reactors: Callable[..., Reactor], group: dict[str, Any], producers: Callable[..., Producer]
) -> None:
    fed = Recorder()
    live = adopter(reactors, group, fed)
    owner = producers(group, 10, "redis")
    ready = owner.ready()
    host, port = ready["address"].rsplit(":", 1)
    wait_until(lambda: bool(owner.lines("enqueued")), timeout=20, what="jobs stored")
    runs = Recorder()
    with stalled(owner):
        wait_until(lambda: adopted_by(live) == [ready["iid"]], timeout=20, what="adoption")
        # A node that also dials the stalled process: its Hello waits in that process's
        # socket, and is the first thing it handles when it resumes.
        node = slow_node(
            reactors(**group, prefetch=0, handshake_timeout=30.0),
            runs,
            distributors=[(host, int(port))],
            wait=False,
        )
        wait_until(lambda: len(fed) == 10, timeout=30, what="the adopter to run them all")
    link = next(li for li in node.links if li.configured == ready["address"])
    wait_until(lambda: link.is_ready and link.instance != ready["iid"], 20, "its new instance")
    wait_until(lambda: node.held_count == 0, timeout=20, what="the node to be idle")
    assert sorted(Counter(runs.items).values()) == [1] * 10


def test_jobs_left_pending_by_a_graceful_stop_are_adopted(
    reactors: Callable[..., Reactor], group: dict[str, Any]
) -> None:
    fed, gone_fed = Recorder(), Recorder()
    live = adopter(reactors, group, fed)
    leaving = adopter(reactors, group, gone_fed)
    iid = leaving.distributor.iid
    handles = [leaving.enqueue("work", {"i": f"p{i}"}, success="fed") for i in range(5)]
    for handle in handles:
        assert handle is not None
        handle.accepted(10)
    leaving.stop(timeout=0.2)  # no node came: the jobs stay in its journal
    wait_until(lambda: adopted_by(live) == [iid], timeout=20, what="adoption")
    runs = Recorder()
    slow_node(reactors(**group), runs)
    assert sorted(i for _, i in fed.wait(5)) == [f"p{i}" for i in range(5)]
    assert sorted(runs.items) == [f"p{i}" for i in range(5)]
    assert gone_fed.items == []
