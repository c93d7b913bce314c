"""A node with only `discovery_url` follows its group: new distributors, left ones, dead ones."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from jobreactor import Reactor, Registry
from jobreactor.node.node import Node
from tests.conftest import Recorder, wait_until
from tests.discovery.conftest import FAST, Producer
from tests.redis_server import RedisServer, unique_prefix

pytestmark = pytest.mark.timeout(90)
logger = logging.getLogger(__name__)


def start_node(reactor: Reactor, runs: Recorder | None = None, **kw: Any) -> Node:
    registry = Registry()
    registry.job("work")(lambda args: runs(args["i"]) if runs is not None else None)
    return reactor.start_node("n1", "memory", registry=registry, **kw)._node


def fed_all(producer: Producer, count: int) -> bool:
    return len(producer.lines("fed")) == count


def linked(node: Node) -> set[str]:
    return {link.configured for link in list(node.links) if link.is_ready}


def test_node_picks_up_each_new_distributor_and_drops_left_ones(
    reactors: Callable[..., Reactor], group: dict[str, Any]
) -> None:
    node = start_node(reactors(**group))
    assert node.links == []
    delays = []
    distributors = []
    for _ in range(3):
        reactor = reactors(**group)
        started = time.monotonic()
        reactor.start_distributor("127.0.0.1", 0)
        reactor.wait_for_node("n1", timeout=5)  # pub/sub join: well within the beat
        delays.append(time.monotonic() - started)
        distributors.append(reactor)
    logger.info("node started using new distributors after %s s", [f"{d:.3f}" for d in delays])
    addresses = {r.distributor.address for r in distributors}
    wait_until(lambda: linked(node) == addresses, timeout=5, what="three links")
    gone = distributors[0].distributor.address
    distributors[0].stop(timeout=5)  # graceful: announces leave
    wait_until(lambda: gone not in {li.configured for li in node.links}, 5, "link retired")
    assert linked(node) == addresses - {gone}


def test_discovered_and_static_distributors_together(
    reactors: Callable[..., Reactor], group: dict[str, Any]
) -> None:
    static = reactors()  # no discovery: listed by address
    host, port = static.start_distributor("127.0.0.1", 0)
    found = reactors(**group)
    found.start_distributor("127.0.0.1", 0)
    runs = Recorder()
    node = start_node(reactors(**group), runs, distributors=[(host, port)])
    found.wait_for_node("n1", timeout=5)
    assert static.enqueue("work", {"i": "s"}).result(10) == {"i": "s"}  # type: ignore[union-attr]
    assert found.enqueue("work", {"i": "f"}).result(10) == {"i": "f"}  # type: ignore[union-attr]
    assert sorted(runs.items) == ["f", "s"]
    assert linked(node) == {f"{host}:{port}", found.distributor.address}


def test_killed_distributor_expires_and_is_no_longer_dialled(
    reactors: Callable[..., Reactor], group: dict[str, Any], producers: Callable[..., Producer]
) -> None:
    node = start_node(reactors(**group))
    victim = producers(group, 0)
    address = victim.ready()["address"]
    wait_until(lambda: address in linked(node), timeout=10, what="the node to link")
    victim.proc.kill()
    victim.proc.wait(10)
    # No leave message: the entry expires after registry_ttl and the next beat notices.
    wait_until(lambda: address not in {li.configured for li in node.links}, 10, "expiry")
    assert node.discovered is not None
    assert node.discovered.retired == {}  # it held nothing from there: nothing kept


@pytest.mark.timeout(180)
def test_scale_two_four_two_worker_processes_while_jobs_flow(
    reactors: Callable[..., Reactor], group: dict[str, Any], producers: Callable[..., Producer]
) -> None:
    runs = Recorder()
    node = start_node(reactors(**group), runs)
    per = 150
    first = [producers(group, per, delay=0.01) for _ in range(2)]
    for p in first:
        p.ready()
    more = [producers(group, per, delay=0.01) for _ in range(2)]
    addresses = {p.ready()["address"] for p in first + more}
    wait_until(lambda: linked(node) == addresses, timeout=20, what="four links")
    for p in first + more:
        wait_until(partial(fed_all, p, per), timeout=60, what="every feedback")
    for p in first:
        p.terminate()
    left = {p.ready()["address"] for p in more}
    wait_until(lambda: {li.configured for li in node.links} == left, 10, "two links left")
    ran = Counter(runs.items)
    assert len(ran) == 4 * per
    assert set(ran.values()) == {1}
    for p in first + more:
        assert sorted(row["i"] for row in p.lines("fed")) == sorted(
            f"{p.proc.pid}-{i}" for i in range(per)
        )


def test_a_different_process_at_a_registered_address_is_refused(
    reactors: Callable[..., Reactor], group: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    # A distributor outside the group sits at an address the registry lists for another
    # instance (what a recycled port looks like): the node must not work with it.
    stranger = reactors()
    _, port = stranger.start_distributor("127.0.0.1", 0)
    ghost = reactors(**group)
    ghost.start_distributor("127.0.0.1", 0, advertise=f"127.0.0.1:{port}")
    node = start_node(reactors(**group))
    wait_until(lambda: "a recycled port" in caplog.text, timeout=10, what="the refusal")
    assert linked(node) == set()  # refused at every redial, never welcomed


def test_redis_outage_keeps_known_distributors_and_finds_new_ones_after(
    reactors: Callable[..., Reactor], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = RedisServer(tmp_path / "r").start()
    try:
        config = {"discovery_url": server.url, "redis_prefix": unique_prefix(), **FAST}
        first = reactors(**config)
        first.start_distributor("127.0.0.1", 0)
        runs = Recorder()
        node = start_node(reactors(**config), runs)
        first.wait_for_node("n1", timeout=10)
        server.stop()
        # Registry gone: the pair that knows each other goes on working.
        assert first.enqueue("work", {"i": "during"}).result(10) == {"i": "during"}  # type: ignore[union-attr]
        wait_until(lambda: "unreachable" in caplog.text, timeout=10, what="the outage logged")
        assert first.distributor.address in linked(node)
        server.start()
        second = reactors(**config)
        second.start_distributor("127.0.0.1", 0)
        second.wait_for_node("n1", timeout=20)  # found again once Redis is back
        assert runs.items == ["during"]
        said = [r.getMessage() for r in caplog.records if r.name == "jobreactor.discovery"]
        assert len([m for m in said if "discovery of group" in m and "unreachable" in m]) == 1
    finally:
        server.stop()
