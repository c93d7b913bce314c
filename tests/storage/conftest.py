"""Storage fixtures: every storage under test, each test in its own Redis key prefix."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from jobreactor.storage import MemoryStorage, Storage
from jobreactor.storage.memory import Keyspace
from jobreactor.storage.redis import RedisStorage
from tests.redis_server import RedisServer, own_redis_server, unique_prefix  # noqa: F401


@pytest.fixture
def prefix() -> str:
    return unique_prefix()


@pytest.fixture
async def redis_storage(redis_server: RedisServer, prefix: str) -> AsyncIterator[RedisStorage]:
    store = RedisStorage(redis_server.url, prefix=prefix)
    yield store
    await store.aclose()


@pytest.fixture(params=["memory", "redis"])
async def storage(request: pytest.FixtureRequest, prefix: str) -> AsyncIterator[Storage]:
    """The contract suite runs once per backend (SAQ / streaq style)."""
    store: Storage
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        store = RedisStorage(server.url, prefix=prefix)
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
        server: RedisServer = request.getfixturevalue("redis_server")
        other = RedisStorage(server.url, prefix=prefix)
    else:
        other = storage
    yield other
    if other is not storage:
        await other.aclose()
