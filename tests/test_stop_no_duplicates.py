"""A closing distributor dispatches nothing (issue 17): a graceful stop with jobs out on two
nodes, repeated under a CPU burner, never runs a job twice. Before, `on_session_closed`
requeued a memory node's jobs and dispatched them to the other node while closing.
Real node processes; each stop is cut short while both nodes still hold jobs."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from jobreactor import Reactor
from tests.conftest import CliNode, make_test_reactor, wait_until
from tests.discovery.conftest import FAST
from tests.proxy import Proxy
from tests.redis_server import RedisServer, unique_prefix
from tests.web.servers import WebNode, read_jsonl

ROUNDS = 20
JOBS_PER_ROUND = 8  # each node's window is 4 (concurrency 2 + prefetch 2): all go out


@pytest.fixture
def cpu_burner() -> Iterator[None]:
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    yield
    for burner in burners:
        burner.kill()
        burner.wait(5)


@pytest.fixture
def two_nodes(tmp_path: Path, redis_server: RedisServer) -> Iterator[dict[str, object]]:
    """Two node processes that find distributors by discovery (a leave retires a link)."""
    group: dict[str, object] = {
        "discovery_url": redis_server.url,
        "redis_prefix": unique_prefix(),
        "group": "dup",
        **FAST,
    }
    out = tmp_path / "out"
    out.mkdir()
    made = [
        WebNode(tmp_path, f"node{i}", out, concurrency=2, prefetch=2, **group) for i in range(2)
    ]
    yield {"out": out, **group}
    for node in made:
        node.stop()


def _all_out(reactor: Reactor, count: int) -> bool:
    nodes = reactor.nodes()
    return len(nodes) == 2 and sum(int(n["in_flight"]) for n in nodes) == count


def _runs(out: Path) -> Counter[int]:
    return Counter(int(row["n"]) for row in read_jsonl(out / "runs.jsonl"))


@pytest.mark.timeout(300)
@pytest.mark.usefixtures("cpu_burner")
def test_graceful_stops_with_jobs_out_on_two_nodes_run_nothing_twice(
    two_nodes: dict[str, object],
) -> None:
    settings = {k: v for k, v in two_nodes.items() if k != "out"}
    out = two_nodes["out"]
    assert isinstance(out, Path)
    sent = 0
    for _ in range(ROUNDS):
        reactor = make_test_reactor(shutdown_timeout=0.3, **settings)
        try:
            reactor.start_distributor("127.0.0.1", 0)
            reactor.wait_for_node("node0", timeout=30)
            reactor.wait_for_node("node1", timeout=30)
            for _ in range(JOBS_PER_ROUND):
                reactor.enqueue("web.record", {"n": sent, "pid": 0, "s": 0.3})
                sent += 1

            wait_until(partial(_all_out, reactor, 8), 30, "every job out on the two nodes")
        finally:
            # Its drain (0.3 s) ends with jobs still out; it leaves the group, the nodes
            # retire their links, then it says goodbye: nothing may go to the other node.
            reactor.stop(timeout=10)
    # Every job went out, so each runs (the nodes keep what they hold); none runs twice.
    wait_until(lambda: len(_runs(out)) == sent, 120, "every job to run")
    twice = {i for i, count in _runs(out).items() if count > 1}
    assert twice == set()


@pytest.mark.timeout(60)
def test_a_node_cut_off_while_the_distributor_stops_keeps_its_jobs_alone(
    tmp_path: Path, cli_node: Callable[..., CliNode]
) -> None:
    """The deterministic form of the race above: a session that closes after `stop()` began
    (here: node a's connection is cut during the drain) sends nothing to node b."""
    out = tmp_path / "runs.jsonl"
    reactor = make_test_reactor(shutdown_timeout=3.0)
    address = reactor.start_distributor("127.0.0.1", 0)
    proxy = Proxy(address)
    cut = False
    try:
        via_proxy = [f"127.0.0.1:{proxy.port}"]
        cli_node("a", address, distributors_override=via_proxy, concurrency=2, prefetch=2)
        cli_node("b", address, concurrency=2, prefetch=10)
        reactor.wait_for_node("a", timeout=30)
        reactor.wait_for_node("b", timeout=30)
        ids = []
        for i in range(4):  # on a (its window), b has room for them all
            handle = reactor.enqueue("slow", {"i": i, "s": 5, "out": str(out)}, {"node": "a"})
            assert handle is not None
            ids.append(handle.id)
        wait_until(partial(_all_out_on, reactor, "a", 4), 30, "a to hold its jobs")
        distributor = reactor.distributor
        # Acknowledged: a has them (sent is not enough: the cut below could catch them in
        # the proxy, and a job that never reached a is not what this test is about).
        wait_until(lambda: all(_acked(distributor, i) for i in ids), 30, "a to acknowledge")
        stopping = threading.Thread(target=reactor.stop, kwargs={"timeout": 20})
        stopping.start()
        wait_until(lambda: distributor.status.closed, 10, "the stop to begin")
        proxy.close()  # a keeps running its jobs; its session closes during the drain
        cut = True
        stopping.join(30)
    finally:
        if not cut:
            proxy.close()
        reactor.stop(timeout=10)
    wait_until(lambda: len(_runs_i(out)) == 4, 30, "a's jobs to run")
    runs = [json.loads(line) for line in out.read_text().splitlines() if line]
    assert sorted((row["i"], row["node"]) for row in runs) == [(i, "a") for i in range(4)]


def _all_out_on(reactor: Reactor, name: str, count: int) -> bool:
    return any(n["name"] == name and n["in_flight"] == count for n in reactor.nodes())


def _acked(distributor: Any, job_id: str) -> bool:
    entry = distributor.tracker.get(job_id)
    return entry is not None and bool(entry.acked)


def _runs_i(out: Path) -> Counter[int]:
    if not out.exists():
        return Counter()
    return Counter(int(json.loads(line)["i"]) for line in out.read_text().splitlines() if line)
