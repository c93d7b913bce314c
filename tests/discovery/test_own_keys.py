"""What a Redis-backed distributor leaves in Redis (issue 17): every key it writes for itself
has a TTL or is gone after a graceful stop or a failed start, and Redis restarting empty is
not mistaken for an adoption. Real redis-server."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
import redis as redis_py

from jobreactor import Reactor, Registry
from tests.conftest import Recorder, wait_until
from tests.redis_server import RedisServer, _free_port

pytestmark = pytest.mark.timeout(90)


def keys_without_ttl(url: str, prefix: str) -> list[str]:
    client = redis_py.Redis.from_url(url, decode_responses=True)
    try:
        return sorted(k for k in client.scan_iter(f"*{prefix}*") if client.pttl(k) == -1)
    finally:
        client.close()


def _journal_records(url: str) -> list[str]:
    """The group's journal ownership records (discovery/keys.py) in that Redis."""
    client = redis_py.Redis.from_url(url, decode_responses=True)
    try:
        return list(client.scan_iter("*:journal:*"))
    finally:
        client.close()


def _worker(reactors: Callable[..., Reactor], group: dict[str, Any], fed: Recorder) -> Reactor:
    reactor = reactors(**group, hiredis_url=group["discovery_url"])
    reactor.register_feedback("fed", fed)
    reactor.start_distributor("127.0.0.1", 0, storage="redis")
    return reactor


def _node(reactor: Reactor) -> None:
    registry = Registry()

    @registry.job("work")
    async def work(args: dict[str, Any]) -> None:
        return None  # what is asserted is read after every feedback: how long it ran is moot

    reactor.start_node("n1", "memory", registry=registry, concurrency=4)


@pytest.mark.parametrize("handover", [False, True], ids=["drain", "handover"])
def test_a_graceful_stop_leaves_no_key_without_ttl(
    reactors: Callable[..., Reactor], group: dict[str, Any], handover: bool
) -> None:
    fed = Recorder()
    worker = _worker(reactors, group, fed)
    _node(worker)
    for i in range(30):
        worker.enqueue("work", {"i": i}, success="fed")
    fed.wait(30)
    assert keys_without_ttl(group["discovery_url"], group["redis_prefix"]) != []  # in use
    worker.stop(timeout=10, handover=handover)
    assert keys_without_ttl(group["discovery_url"], group["redis_prefix"]) == []


def test_a_start_that_never_reached_its_storage_leaves_no_key_without_ttl(
    reactors: Callable[..., Reactor], group: dict[str, Any]
) -> None:
    worker = reactors(**group, hiredis_url=f"redis://127.0.0.1:{_free_port()}/0")
    # The registry answers, the journal's storage does not: the start returns (it keeps
    # trying in the background: issue 16) and the stop leaves the registry as it found it.
    worker.start_distributor("127.0.0.1", 0, storage="redis")
    worker.stop(timeout=5)
    assert keys_without_ttl(group["discovery_url"], group["redis_prefix"]) == []


def test_redis_restarted_empty_is_not_reported_as_a_stall(
    reactors: Callable[..., Reactor],
    group: dict[str, Any],
    own_redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    group = {**group, "discovery_url": own_redis_server.url}
    fed = Recorder()
    worker = _worker(reactors, group, fed)
    caplog.set_level(logging.WARNING, logger="jobreactor")
    own_redis_server.stop()
    own_redis_server.start()  # same port, nothing in it
    wait_until(lambda: bool(_journal_records(own_redis_server.url)), 20, "the journal back")
    _node(worker)
    handle = worker.enqueue("work", {"i": 1}, success="fed")
    assert handle is not None
    fed.wait(1)
    assert "was adopted by another distributor" not in caplog.text
