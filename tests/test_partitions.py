"""Partitions, not only process deaths (issue 10): a proxy between node and distributor goes
silent (both ways or one way) or slow. The delivery guarantee must hold: jobs taken over when a
node stays away past node_grace, the old node running none of them once healed, final feedback
exactly once, duplicates no more than the jobs in flight at the cut."""

from __future__ import annotations

import collections
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobreactor import Reactor, RedisMonitor, Registry
from tests.conftest import Recorder, in_flight, make_test_reactor, wait_until
from tests.proxy import DOWN, UP, Proxy, proxy_to
from tests.redis_server import RedisServer, unique_prefix

pytestmark = pytest.mark.timeout(120)

# Fast failure detection: 3 silent heartbeats (0.9 s) close a link.
FAST = {"heartbeat_interval": 0.3, "handshake_timeout": 1.0}


def runs(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


@pytest.fixture
def setup() -> Iterator[Any]:
    made: list[Reactor] = []
    proxies: list[Proxy] = []

    def start(**config: Any) -> tuple[Reactor, Proxy]:
        reactor = make_test_reactor(**{**FAST, **config})
        made.append(reactor)
        address = reactor.start_distributor("127.0.0.1", 0)
        proxy = Proxy(address)
        proxies.append(proxy)
        return reactor, proxy

    yield start
    for reactor in made:
        reactor.stop(timeout=10)
    for proxy in proxies:
        proxy.close()


def recording_registry(ran: Recorder, who: str) -> Registry:
    registry = Registry()

    @registry.job("span")
    async def span(args: dict[str, Any]) -> None:
        import asyncio

        await asyncio.sleep(args.get("s", 0.0))
        ran((who, args["i"]))

    @registry.job("simple")
    def simple(args: dict[str, Any]) -> None:
        ran((who, args["i"]))

    return registry


@pytest.mark.parametrize("directions", [(UP, DOWN), (UP,), (DOWN,)], ids=["both", "up", "down"])
def test_a_memory_node_cut_off_loses_its_jobs_and_duplicates_at_most_those_in_flight(
    setup: Any, directions: tuple[str, ...]
) -> None:
    reactor, proxy = setup()
    ran = Recorder()
    old = reactor.start_node(
        "old",
        distributors=[proxy.address],
        registry=recording_registry(ran, "old"),
        concurrency=10,  # 10 running, 50 waiting on the node at the cut
    )
    finals = Recorder()
    handles = [
        reactor.enqueue("span", {"i": i, "s": 1.0}, success=lambda a: finals(a["i"]))
        for i in range(60)
    ]
    wait_until(lambda: in_flight(reactor, "old") == 60, timeout=10, what="60 jobs on old")
    at_cut = in_flight(reactor, "old")  # out on the node: running or waiting there
    proxy.cut(*directions)
    wait_until(lambda: in_flight(reactor, "old") == -1, timeout=10, what="the cut noticed")
    reactor.start_node("new", registry=recording_registry(ran, "new"))
    for handle in handles:
        assert handle is not None
        handle.result(timeout=30)
    proxy.heal()
    wait_until(lambda: old._node.links[0].is_ready, timeout=20, what="old back")
    wait_until(lambda: old.held_count == 0, timeout=10, what="old holding nothing")
    finals.wait(60, timeout=5)
    # Every report the old node made has been acknowledged: a duplicate would have landed.
    link = old._node.links[0]
    wait_until(lambda: link.unacked_reports == 0, timeout=10, what="old's reports acked")
    assert sorted(finals.items) == list(range(60)), "final feedback exactly once per job"
    per_job = collections.Counter(i for _, i in ran.items)
    assert set(per_job) == set(range(60))
    duplicates = sum(n - 1 for n in per_job.values())
    assert duplicates <= at_cut, (duplicates, at_cut)


@pytest.mark.parametrize("directions", [(UP, DOWN), (UP,)], ids=["both", "up"])
def test_a_redis_node_cut_off_past_node_grace_has_its_jobs_taken_over_and_runs_none_healed(
    setup: Any,
    cli_node: Any,
    redis_server: RedisServer,
    tmp_path: Path,
    directions: tuple[str, ...],
) -> None:
    reactor, proxy = setup(node_grace=1.0)
    prefix = unique_prefix()
    settings = {"storage": "redis", "redis_url": redis_server.url, "redis_prefix": prefix, **FAST}
    cli_node("old", proxy.address, **settings)
    reactor.wait_for_node("old", timeout=20)
    out = tmp_path / "out.jsonl"
    due = time.time() + 10  # after the cut, the takeover and the heal
    finals = Recorder()
    handles = [
        reactor.enqueue(
            "simple", {"out": str(out), "i": i}, {"run_at": due}, success=lambda a: finals(a["i"])
        )
        for i in range(100)
    ]
    monitor = RedisMonitor(redis_server.url, prefix=prefix)
    wait_until(lambda: len(monitor.jobs_for("old")) == 100, timeout=20, what="jobs on old")
    proxy.cut(*directions)
    ran = Recorder()
    reactor.start_node("new", registry=recording_registry(ran, "new"))
    wait_until(lambda: in_flight(reactor, "new") == 100, timeout=15, what="taken over by new")
    proxy.heal()
    reactor.wait_for_node("old", timeout=30)
    wait_until(lambda: monitor.jobs_for("old") == {}, timeout=20, what="old dropping them")
    assert time.time() < due, "healed before the jobs were due (else the test proves nothing)"
    for handle in handles:
        assert handle is not None
        handle.result(timeout=30)
    time.sleep(0.5)  # they are due now: a window for old to run one (it must not), no event
    assert sorted(i for _, i in ran.items) == list(range(100))
    assert runs(out) == [], "the old node ran none of the jobs taken from it"
    assert sorted(finals.items) == list(range(100))


def test_a_cut_shorter_than_the_heartbeat_timeout_loses_and_duplicates_nothing(
    setup: Any,
) -> None:
    reactor, proxy = setup(heartbeat_interval=2.0)
    ran = Recorder()
    reactor.start_node("w1", distributors=[proxy.address], registry=recording_registry(ran, "w1"))
    handles = [reactor.enqueue("span", {"i": i, "s": 0.05}) for i in range(300)]
    ran.wait(50, timeout=10)
    proxy.cut()
    time.sleep(1.0)  # shorter than 3 silent heartbeats (6 s): nobody notices
    proxy.heal()
    for handle in handles:
        assert handle is not None
        handle.result(timeout=30)
    assert sorted(i for _, i in ran.items) == list(range(300))
    assert [n["name"] for n in reactor.nodes()] == ["w1"]


def test_latency_slows_but_loses_nothing(setup: Any) -> None:
    reactor, proxy = setup()
    proxy.set_latency(0.05)
    ran = Recorder()
    reactor.start_node("w1", distributors=[proxy.address], registry=recording_registry(ran, "w1"))
    handles = [reactor.enqueue("simple", {"i": i}) for i in range(200)]
    for handle in handles:
        assert handle is not None
        handle.result(timeout=30)
    assert sorted(i for _, i in ran.items) == list(range(200))


def test_the_proxy_holds_bytes_while_cut_and_delivers_them_in_order_healed() -> None:
    import socket

    with (
        socket.create_server(("127.0.0.1", 0)) as server,
        proxy_to(server.getsockname()[:2]) as proxy,
    ):
        client = socket.create_connection(proxy.address, timeout=5)
        peer, _ = server.accept()
        with client, peer:
            proxy.cut(UP)
            client.sendall(b"held")
            peer.settimeout(0.5)
            with pytest.raises(TimeoutError):
                peer.recv(10)
            peer.sendall(b"down still flows")
            assert client.recv(100) == b"down still flows"
            proxy.heal()
            peer.settimeout(5)
            assert peer.recv(10) == b"held"
