"""More concurrent storage calls than pooled connections wait for one instead of failing."""

from __future__ import annotations

import asyncio

import pytest

from jobreactor.errors import StorageUnavailable
from jobreactor.storage.redis import RedisStorage
from tests.redis_server import RedisServer

pytestmark = pytest.mark.timeout(60)

CALLS = 60


async def test_a_burst_past_max_connections_waits_for_a_connection(
    redis_server: RedisServer, prefix: str
) -> None:
    # Many postponed perform_id jobs re-check their key at once: with redis-py's default pool
    # the calls past its cap raised "Too many connections", and a failed release left the
    # perform id held until its TTL (the job that waited on it "did not finish").
    store = RedisStorage(redis_server.url, prefix=prefix, max_connections=2)
    try:
        owners = [f"job{i}" for i in range(CALLS)]
        acquired = await asyncio.gather(
            *(store.acquire(f"k{i}", o, 5) for i, o in enumerate(owners))
        )
        assert acquired == [True] * CALLS
        await asyncio.gather(*(store.release(f"k{i}", o) for i, o in enumerate(owners)))
        again = await asyncio.gather(*(store.acquire(f"k{i}", "next", 5) for i in range(CALLS)))
        assert again == [True] * CALLS
    finally:
        await store.aclose()


async def test_the_wait_for_a_connection_is_bounded(redis_server: RedisServer, prefix: str) -> None:
    store = RedisStorage(redis_server.url, prefix=prefix, max_connections=1, socket_timeout=0.5)
    try:
        client = await store._redis()
        async with client.client() as held:  # the only connection, taken and kept
            await held.ping()
            with pytest.raises(StorageUnavailable, match="during acquire"):
                await store.acquire("k", "o", 5)
        assert await store.acquire("k", "o", 5)  # given back: calls go through again
    finally:
        await store.aclose()
