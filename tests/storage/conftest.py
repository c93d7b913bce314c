"""Storage fixtures: every storage under test, each test in its own Redis key prefix."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from jobreactor.storage import MemoryStorage, Storage
from jobreactor.storage.memory import Keyspace
from jobreactor.storage.redis import RedisStorage
from tests.redis_server import (  # noqa: F401
    RedisClusterServers,
    RedisServer,
    own_redis_server,
    unique_prefix,
)


@pytest.fixture
def prefix() -> str:
    return unique_prefix()


@pytest.fixture
async def redis_storage(any_redis_url: str, prefix: str) -> AsyncIterator[RedisStorage]:
    """On a single server, then on a 3-master cluster."""
    store = RedisStorage(any_redis_url, prefix=prefix)
    yield store
    await store.aclose()


@pytest.fixture
async def single_storage(redis_server: RedisServer, prefix: str) -> AsyncIterator[RedisStorage]:
    """On a single server only: for tests that look at it with plain (non-cluster) commands."""
    store = RedisStorage(redis_server.url, prefix=prefix)
    yield store
    await store.aclose()


def _server(request: pytest.FixtureRequest) -> RedisServer | RedisClusterServers:
    name = "redis_cluster" if request.param == "cluster" else "redis_server"
    server: RedisServer | RedisClusterServers = request.getfixturevalue(name)
    return server


@pytest.fixture(params=["memory", "redis", "cluster"])
async def storage(request: pytest.FixtureRequest, prefix: str) -> AsyncIterator[Storage]:
    """The contract suite runs once per backend (SAQ / streaq style), Redis also as a cluster."""
    store: Storage
    if request.param != "memory":
        store = RedisStorage(_server(request).url, prefix=prefix)
    else:
        store = MemoryStorage(Keyspace())  # fresh keys per test, like a fresh Redis prefix
    yield store
    await store.aclose()


@pytest.fixture
async def twin(
    storage: Storage, request: pytest.FixtureRequest, prefix: str
) -> AsyncIterator[Storage]:
    """A second client on the same data (a second process, for Redis): races are real races."""
    other: Storage
    if isinstance(storage, RedisStorage):
        other = RedisStorage(storage._url, prefix=prefix)
    else:
        other = storage
    yield other
    if other is not storage:
        await other.aclose()
