"""The registry is a hint (issue 16): a registry fault never retires a working link.

A distributor in its own process (tests/discovery/producer.py) enqueues jobs with a named
feedback; a node finds it through the discovery Redis. While the jobs run, the registry loses
the distributor (FLUSHDB, its member entry deleted, Redis restarted empty on the same port):
every job still runs once and every feedback fires once, and the distributor registers again.
One distributor listed twice (a static `localhost:P`, found as `127.0.0.1:P`) gets one link.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from jobreactor import Reactor, Registry
from jobreactor.discovery.keys import GroupKeys
from jobreactor.discovery.registry import connect, live_members
from jobreactor.errors import JobReactorError
from jobreactor.node.node import Node
from tests.conftest import Recorder, wait_until
from tests.discovery.conftest import FAST, Producer
from tests.redis_server import RedisServer, _free_port, unique_prefix

pytestmark = pytest.mark.timeout(150)
logger = logging.getLogger(__name__)

JOBS = 60
JOB_S = 2.0


def slow_node(reactor: Reactor, runs: Recorder, storage: str, redis_url: str) -> Node:
    registry = Registry()

    @registry.job("work")
    async def work(args: dict[str, Any]) -> None:
        runs(args["i"])
        await asyncio.sleep(JOB_S)

    return reactor.start_node(
        "n1", storage, registry=registry, concurrency=20, redis_url=redis_url
    )._node


def listed(config: dict[str, Any], iid: str) -> bool:
    async def read() -> bool:
        client = connect(config["discovery_url"])
        try:
            members = await live_members(client, prefix=config["redis_prefix"])
        finally:
            await client.aclose()
        return any(m.iid == iid for m in members)

    try:
        return asyncio.run(read())
    except (redis.RedisError, OSError):
        return False


def flush(server: RedisServer, config: dict[str, Any], iid: str) -> None:
    redis.Redis.from_url(server.url).flushdb()


def delete_member(server: RedisServer, config: dict[str, Any], iid: str) -> None:
    keys = GroupKeys(config["redis_prefix"], "default")
    client = redis.Redis.from_url(server.url)
    client.zrem(keys.members("distributor"), iid)
    client.delete(keys.member(iid))


def restart_empty(server: RedisServer, config: dict[str, Any], iid: str) -> None:
    server.stop()
    server.start()  # same port, no persistence: nothing registered


FAULTS: dict[str, Callable[[RedisServer, dict[str, Any], str], None]] = {
    "flushdb": flush,
    "member-deleted": delete_member,
    "restarted-empty": restart_empty,
}


@pytest.mark.parametrize(
    ("storage", "distributor_storage"),
    [("memory", "memory"), ("redis", "memory"), ("memory", "redis")],
    ids=["memory-node", "redis-node", "redis-distributor"],
)
@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_registry_fault_while_jobs_run_loses_and_repeats_nothing(
    fault: str,
    storage: str,
    distributor_storage: str,
    reactors: Callable[..., Reactor],
    producers: Callable[..., Producer],
    redis_server: RedisServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    discovery = RedisServer(tmp_path / "discovery").start()
    try:
        config = {"discovery_url": discovery.url, "redis_prefix": unique_prefix(), **FAST}
        runs = Recorder()
        node = slow_node(reactors(**config), runs, storage, redis_server.url)
        # A redis-backed distributor keeps its journal in another Redis than the registry.
        producer = producers(config, JOBS, distributor_storage, hiredis_url=redis_server.url)
        iid = producer.ready()["iid"]
        wait_until(lambda: len(runs) >= 10, timeout=30, what="the first jobs to run")
        with caplog.at_level(logging.INFO, logger="jobreactor.node"):
            FAULTS[fault](discovery, config, iid)
            wait_until(lambda: listed(config, iid), timeout=20, what="the distributor back")
            ids = {f"{producer.proc.pid}-{i}" for i in range(JOBS)}
            wait_until(
                lambda: {row["i"] for row in producer.lines("fed")} == ids,
                timeout=60,
                what="every feedback",
            )
        fed = Counter(row["i"] for row in producer.lines("fed"))
        ran = Counter(runs.items)
        logger.info("%s on a %s node: %d ran, %d fed", fault, storage, len(ran), len(fed))
        assert set(fed.values()) == {1}  # every handle resolved, once
        assert set(ran) == ids
        assert set(ran.values()) == {1}  # no job ran twice
        assert "no more dialling it" not in caplog.text  # the working link was kept
        assert [li.is_ready for li in node.links] == [True]
    finally:
        discovery.stop()


def linked(node: Node) -> list[str]:
    return [link.configured for link in list(node.links) if link.is_ready]


def run_all(node: Node, enqueue: Callable[[int], Any], count: int, runs: Recorder) -> None:
    """`count` jobs through one node, checking all along that it has one link."""
    links_seen: set[int] = set()
    handles = []
    for i in range(count):
        handles.append(enqueue(i))
        links_seen.add(len(node.links))
    for handle in handles:
        handle.result(30)
    links_seen.add(len(node.links))
    ran = Counter(runs.items)
    assert len(ran) == count
    assert set(ran.values()) == {1}
    assert links_seen == {1}


def fast_node(reactor: Reactor, runs: Recorder, name: str = "n1", **kw: Any) -> Node:
    registry = Registry()
    registry.job("work")(lambda args: runs(args["i"]))
    return reactor.start_node(name, "memory", registry=registry, **kw)._node


def test_static_and_discovered_addresses_of_one_distributor_make_one_link(
    reactors: Callable[..., Reactor], group: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    distributor = reactors(**group)
    _, port = distributor.start_distributor("127.0.0.1", 0)  # registers as 127.0.0.1:P
    runs = Recorder()
    with caplog.at_level(logging.INFO, logger="jobreactor.node"):
        node = fast_node(reactors(**group), runs, distributors=[("localhost", port)])
        assert node.discovered is not None
        wait_until(node.discovered.watcher.reconciled.is_set, 10, "discovery to look")
        run_all(node, lambda i: distributor.enqueue("work", {"i": i}), 300, runs)
    assert linked(node) == [f"localhost:{port}"]
    assert caplog.text.count("ready to work with distributor") == 1  # no flapping


def test_a_distributor_found_before_its_static_address_answers_keeps_one_link(
    reactors: Callable[..., Reactor], group: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    port = _free_port()
    runs = Recorder()
    with caplog.at_level(logging.INFO, logger="jobreactor.node"):
        # The static address answers nothing yet; the distributor then comes up there and is
        # found by discovery first; the static link's redial meets the same instance.
        # (A slow redial, so that discovery finds it first.)
        node = fast_node(
            reactors(**group, reconnect_interval=3.0),
            runs,
            distributors=[("localhost", port)],
            wait=False,
        )
        wait_until(lambda: node.links[0].tried, 20, "the static address to refuse")
        distributor = reactors(**group)
        distributor.start_distributor("127.0.0.1", port)
        wait_until(lambda: linked(node) == [f"127.0.0.1:{port}"], 20, "the distributor found")
        wait_until(
            lambda: [li.configured for li in node.links] == linked(node) == [f"localhost:{port}"],
            20,
            "the static link kept, the found one gone",
        )
        started = time.monotonic()
        run_all(node, lambda i: distributor.enqueue("work", {"i": i}), 300, runs)
    logger.info("300 jobs in %.2fs over one link", time.monotonic() - started)
    assert f"lead to one distributor (instance {distributor.distributor.iid})" in caplog.text
    assert linked(node) == [f"localhost:{port}"]


def test_a_distributor_starts_with_discovery_redis_down_and_registers_when_it_is_back(
    reactors: Callable[..., Reactor], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    discovery = RedisServer(tmp_path / "discovery").start()
    discovery.stop()  # down from the start; its port stays ours to start it on later
    try:
        config = {"discovery_url": discovery.url, "redis_prefix": unique_prefix(), **FAST}
        # Made first: a reactor sets its log level (logger_method) when it is made.
        distributor, static, later = reactors(**config), reactors(), reactors(**config)
        with caplog.at_level(logging.INFO, logger="jobreactor"):
            _, port = distributor.start_distributor("127.0.0.1", 0)  # returns: no raise
            fast_node(static, Recorder(), distributors=[("127.0.0.1", port)])  # static: works
            handle = distributor.enqueue("work", {"i": "during"})
            assert handle is not None
            assert handle.result(10) == {"i": "during"}  # enqueues work during the outage
            discovery.start()
            iid = distributor.distributor.iid
            wait_until(lambda: listed(config, iid), timeout=20, what="the registration")
            found = fast_node(later, Recorder(), "n2", wait=False)
            wait_until(lambda: linked(found) == [f"127.0.0.1:{port}"], 20, "the node to find it")
        messages = [r.getMessage() for r in caplog.records]
        assert len([m for m in messages if "registers in group" in m]) == 1
        assert len([m for m in messages if "reachable again; distributor" in m]) == 1
    finally:
        discovery.stop()


def stored(reactor: Reactor, args: dict[str, Any]) -> None:
    handle = reactor.enqueue("work", args)
    assert handle is not None
    handle.accepted(30)


def test_a_redis_backed_distributor_starts_with_redis_down_and_reads_its_journal_later(
    reactors: Callable[..., Reactor], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = RedisServer(tmp_path / "redis").start()
    server.stop()  # storage and discovery both away from the start
    try:
        config = {"discovery_url": server.url, "redis_prefix": unique_prefix(), **FAST}
        distributor, nodes = reactors(**config, hiredis_url=server.url), reactors()
        with caplog.at_level(logging.INFO, logger="jobreactor.distributor"):
            _, port = distributor.start_distributor("127.0.0.1", 0, storage="redis")
            runs = Recorder()
            # Listed statically: it waits (in the listen backlog) until the journal is read.
            node = fast_node(nodes, runs, distributors=[("127.0.0.1", port)], wait=False)
            with pytest.raises(JobReactorError):  # told: the journal can't store it
                stored(distributor, {"i": "refused"})
            server.start()
            wait_until(lambda: "journal read back" in caplog.text, 30, "the journal read")
            handles = [distributor.enqueue("work", {"i": i}) for i in range(20)]
            assert [h.result(30) if h else None for h in handles] == [{"i": i} for i in range(20)]
        assert sorted(runs.items) == list(range(20))  # once each; the refused one never
        assert linked(node) == [f"127.0.0.1:{port}"]  # accepted once the journal was read
    finally:
        server.stop()
