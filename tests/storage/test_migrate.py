"""`jobreactor jobs migrate`: data of the single-tag layout (before issue 13) moves over."""

from __future__ import annotations

import time
from typing import Any

import pytest

from jobreactor.job import JobRecord
from jobreactor.storage.codec import encode_job, record_json
from jobreactor.storage.connect import open_sync
from jobreactor.storage.keys import LegacyKeys
from jobreactor.storage.redis import RedisStorage
from tests.test_cli_jobs import jobs_cli

pytestmark = pytest.mark.timeout(60)


def write_legacy(client: Any, prefix: str) -> None:
    """What RedisStorage wrote before issue 13, key for key."""
    old = LegacyKeys(prefix)
    client.sadd(old.nodes, "w1", "w2")
    for node, ids in (("w1", ["a", "b"]), ("w2", ["c"])):
        for job_id in ids:
            record = JobRecord(id=job_id, name="echo", args={"n": job_id}, run_at_ts=time.time())
            client.hset(old.job(node, job_id), mapping=encode_job(record))
            client.sadd(old.index(node), job_id)
    jobs_key, order_key, seq_key = old.queue("distributor:127.0.0.1:5000")
    for seq, job_id in enumerate(["q1", "q2"], start=1):
        client.hset(jobs_key, job_id, record_json(JobRecord(id=job_id, name="echo", args={})))
        client.zadd(order_key, {job_id: seq})
    client.set(seq_key, 2)
    client.set(f"{old.base}:uniq:perform:x", "a", px=60_000)
    client.set(f"{old.base}:lock:L", "tok:0")


async def test_migrate_moves_every_owner_to_its_own_tag(any_redis_url: str, prefix: str) -> None:
    client = open_sync(any_redis_url, "test", {"decode_responses": True})
    try:
        write_legacy(client, prefix)
        done = jobs_cli("migrate", url=any_redis_url, prefix=prefix)
        assert done.returncode == 0, done.stderr
        assert "3 job(s), 1 journal(s), 1 unique key(s), 1 lock(s)" in done.stdout
        leftovers = list(client.scan_iter(match=f"{{{prefix}}}:*"))
        assert leftovers == [f"{{{prefix}}}:nodes"]  # the directory keeps its name
        again = jobs_cli("migrate", url=any_redis_url, prefix=prefix)
        assert "0 job(s), 0 journal(s)" in again.stdout  # idempotent
        assert 0 < client.pttl(f"{{{prefix}:u:perform:x}}") <= 60_000
    finally:
        client.close()
    store = RedisStorage(any_redis_url, prefix=prefix)
    try:
        assert sorted(job.id for job in await store.jobs_for("w1")) == ["a", "b"]
        assert [job.args for job in await store.jobs_for("w2")] == [{"n": "c"}]
        assert sorted(await store.nodes()) == ["w1", "w2"]
        queued = await store.queue_load("distributor:127.0.0.1:5000")
        assert [job.id for job in queued] == ["q1", "q2"]
        await store.queue_save(
            "distributor:127.0.0.1:5000", [JobRecord(id="q3", name="e", args={})]
        )
        queued = await store.queue_load("distributor:127.0.0.1:5000")
        assert [job.id for job in queued] == ["q1", "q2", "q3"]  # the sequence carried on
        assert await store.holder("perform:x") == "a"
        assert await store.lock_holder("L") == "tok"
    finally:
        await store.aclose()
