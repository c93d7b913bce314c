"""Redis Cluster: data really spreads over the masters, and any node serves as `redis_url`.

The contract, commands, monitor, batch, gems and CLI suites run on the cluster too (their
fixtures are parametrized); these are the checks only a cluster has.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

from jobreactor.job import JobRecord
from jobreactor.storage.connect import open_sync
from jobreactor.storage.redis import RedisStorage
from tests.redis_server import RedisClusterServers, RedisServer

pytestmark = pytest.mark.timeout(60)


def rec(job_id: str) -> JobRecord:
    return JobRecord(id=job_id, name="echo", args={"i": job_id})


@pytest.fixture
def cluster_client(redis_cluster: RedisClusterServers) -> Iterator[Any]:
    client = open_sync(redis_cluster.url, "test", {"decode_responses": True})
    yield client
    client.close()


def test_a_cluster_url_is_served_by_a_cluster_client(
    redis_cluster: RedisClusterServers, cluster_client: Any, redis_server: RedisServer
) -> None:
    assert isinstance(cluster_client, redis.cluster.RedisCluster)
    plain = open_sync(redis_server.url, "test", {"decode_responses": True})
    try:
        assert type(plain) is redis.Redis
    finally:
        plain.close()


async def test_each_nodes_keys_share_a_slot_and_nodes_spread_over_the_masters(
    redis_cluster: RedisClusterServers, cluster_client: Any, prefix: str
) -> None:
    store = RedisStorage(redis_cluster.url, prefix=prefix)
    names = [f"node-{i}" for i in range(24)]
    try:
        for name in names:
            await store.save_many(name, [rec(f"{name}-a"), rec(f"{name}-b")])
        assert store.cluster
        masters: set[int] = set()
        for name in names:
            index = store.keys.index(name)
            jobs = [store.keys.job(name, f"{name}-{x}") for x in "ab"]
            slot = cluster_client.keyslot(index)
            assert {cluster_client.keyslot(key) for key in jobs} == {slot}
            assert cluster_client.keyslot(store.keys.commands(name)) == slot
            owner = cluster_client.get_node_from_key(index)
            # The key is really on that master (asked directly, no redirection).
            direct = redis.Redis(host=owner.host, port=owner.port, decode_responses=True)
            try:
                assert direct.exists(index, *jobs) == 3
            finally:
                direct.close()
            masters.add(owner.port)
        assert masters == {server.port for server in redis_cluster.servers}
        assert sorted(await store.nodes()) == sorted(names)
    finally:
        await store.aclose()


@pytest.mark.parametrize("which", [0, 1, 2])
async def test_any_master_serves_as_the_url(
    redis_cluster: RedisClusterServers, prefix: str, which: int
) -> None:
    """Before issue 13 a url naming a master that didn't own the slot got MOVED errors."""
    store = RedisStorage(redis_cluster.servers[which].url, prefix=prefix)
    other = RedisStorage(redis_cluster.servers[(which + 1) % 3].url, prefix=prefix)
    try:
        names = [f"w{i}" for i in range(6)]
        for name in names:
            await store.save_many(name, [rec(name)])
            assert await store.acquire(f"u-{name}", "me", 60)
            assert await store.lock(f"l-{name}", "tok", 60)
        for name in names:
            assert [job.id for job in await other.jobs_for(name)] == [name]
            assert await other.holder(f"u-{name}") == "me"
            assert await other.lock_holder(f"l-{name}") == "tok"
        await store.queue_save("dist", [rec("q1"), rec("q2")])
        assert [job.id for job in await other.queue_load("dist")] == ["q1", "q2"]
    finally:
        await store.aclose()
        await other.aclose()
