"""Stops are bounded (issue 17): SIGTERM stops a Redis node within its shutdown_timeout
whatever Redis does, and a second SIGTERM stops it at once. Real node process, real Redis."""

from __future__ import annotations

import signal
from collections.abc import Callable

import pytest
import redis as redis_py

from jobreactor import Reactor
from tests.conftest import CliNode, wait_until
from tests.redis_server import RedisServer

SHUTDOWN_S = 3.0


def _node_holding_jobs_with_redis_down(
    reactor: Reactor,
    address: tuple[str, int],
    cli_node: Callable[..., CliNode],
    redis: RedisServer,
    shutdown_s: float,
) -> CliNode:
    node = cli_node(
        "bounded",
        address,
        storage="redis",
        redis_url=redis.url,
        discovery_url=redis.url,  # the registry on the same Redis, as usual
        shutdown_timeout=shutdown_s,
        concurrency=4,
    )
    reactor.wait_for_node("bounded", timeout=20)
    for n in range(2):  # run for a minute: only shutdown_timeout ends them
        reactor.enqueue("slow", {"n": n, "s": 60})
    for n in range(2, 4):  # end while Redis is down: their state can't be written
        reactor.enqueue("slow", {"n": n, "s": 1.5})
    reactor.enqueue("slow", {"n": 99, "s": 0.1}, {"after": 120})
    client = redis_py.Redis.from_url(redis.url)
    wait_until(lambda: len(client.keys("*:job:*")) == 5, 20, "the node to store its jobs")
    client.close()
    redis.kill()
    wait_until(lambda: "storage write failed" in node.log_text(), 20, "a failed write")
    return node


@pytest.mark.timeout(60)
def test_sigterm_stops_a_redis_node_with_redis_down_within_shutdown_timeout(
    reactor: Reactor,
    address: tuple[str, int],
    cli_node: Callable[..., CliNode],
    own_redis_server: RedisServer,
) -> None:
    node = _node_holding_jobs_with_redis_down(
        reactor, address, cli_node, own_redis_server, SHUTDOWN_S
    )
    node.signal(signal.SIGTERM)
    # Its running jobs get shutdown_timeout; closing must not wait for Redis on top of it.
    # (The bound is the wait below: a node that waits for Redis blows it, with a clear error.)
    node.wait(timeout=SHUTDOWN_S + 8)
    assert "stopped" in node.log_text(), node.log_text()[-3000:]


@pytest.mark.timeout(60)
def test_a_second_sigterm_stops_a_redis_node_at_once_with_redis_down(
    reactor: Reactor,
    address: tuple[str, int],
    cli_node: Callable[..., CliNode],
    own_redis_server: RedisServer,
) -> None:
    node = _node_holding_jobs_with_redis_down(reactor, address, cli_node, own_redis_server, 60.0)
    node.signal(signal.SIGTERM)
    wait_until(lambda: "stopping gracefully" in node.log_text(), 10, "the first signal")
    node.signal(signal.SIGTERM)
    node.wait(timeout=10)  # at once: its running jobs alone would hold it 60 s
