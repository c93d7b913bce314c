"""JR.enqueue_many: many jobs, one wake-up, one durable write (redis-backed distributor)."""

from __future__ import annotations

from typing import Any

import pytest

from jobreactor import InvalidOptions, Reactor, Registry, StorageUnavailable
from tests.conftest import Recorder
from tests.redis_server import RedisServer, unique_prefix

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("storage", ["memory", "redis"])
def test_enqueue_many_runs_every_job_once(storage: str, redis_server: RedisServer) -> None:
    reactor = Reactor(logger_method="WARNING", redis_prefix=unique_prefix())
    reactor.run()
    try:
        host, port = reactor.start_distributor(
            "127.0.0.1", 0, storage=storage, redis_url=redis_server.url
        )
        registry, ran = Registry(), Recorder()
        registry.job("count")(lambda args: ran(args["i"]))
        reactor.start_node("w", "memory", [(host, port)], registry=registry)
        done = Recorder()
        handles = reactor.enqueue_many((("count", {"i": i}, None) for i in range(2000)), done)
        assert all(h.accepted(0) for h in handles)  # stored before enqueue_many returned
        assert sorted(a["i"] for a in done.wait(2000)) == list(range(2000))
        assert sorted(ran.items) == list(range(2000))
        with pytest.raises(InvalidOptions):
            reactor.enqueue_many([("count", {}, {"enqueue_id": "x"})])
        with pytest.raises(ValueError, match="negative"):
            reactor.enqueue_many([("count", {}, None), ("count", {}, {"after": -1})])
    finally:
        reactor.stop(timeout=10)


def test_enqueue_many_raises_when_redis_refuses(tmp_path: Any) -> None:
    server = RedisServer(tmp_path / "r").start()
    reactor = Reactor(logger_method="CRITICAL", redis_prefix=unique_prefix(), enqueue_timeout=10.0)
    reactor.run()
    try:
        reactor.start_distributor("127.0.0.1", 0, storage="redis", redis_url=server.url)
        server.stop()
        with pytest.raises(StorageUnavailable):
            reactor.enqueue_many([("count", {"i": i}, None) for i in range(10)])
    finally:
        reactor.stop(timeout=10)
        server.stop()
