"""RedisStorage.queue_update: one loop turn's journal writes (the distributor's assignments,
removals and withdrawals, distributor/journal.py) in one call, doing what queue_save,
queue_remove and queue_withdraw do in that order (issue 16)."""

from __future__ import annotations

from jobreactor.job import JobRecord
from jobreactor.storage.redis import RedisStorage


def rec(job_id: str, **fields: object) -> JobRecord:
    job = JobRecord(id=job_id, name="work", args={"id": job_id})
    for name, value in fields.items():
        setattr(job, name, value)
    return job


async def _ids(storage: RedisStorage) -> list[str]:
    return [job.id for job in await storage.queue_load("d1")]


async def test_queue_update_saves_removes_and_withdraws_in_order(
    redis_storage: RedisStorage,
) -> None:
    store = redis_storage
    await store.queue_save("d1", [rec("a"), rec("b"), rec("c"), rec("d")])
    # An assignment (update in place), a new job, a removal and a withdrawal in one call.
    await store.queue_update("d1", [rec("a", lease=7), rec("e")], ["b", "unknown"], ["c"])
    loaded = await store.queue_load("d1")
    assert [job.id for job in loaded] == ["a", "d", "e"]  # an update keeps its place
    assert loaded[0].lease == 7
    await store.queue_update("d1", [rec("c")], [], [])  # withdrawn: its late save is refused
    await store.queue_save("d1", [rec("c")])
    assert await _ids(store) == ["a", "d", "e"]
    await store.queue_update("d1", [], [], [])
    assert await _ids(store) == ["a", "d", "e"]


async def test_queue_update_that_empties_the_journal_leaves_no_sequence(
    redis_storage: RedisStorage,
) -> None:
    store = redis_storage
    await store.queue_save("d1", [rec("a"), rec("b")])
    await store.queue_update("d1", [], ["a"], ["b"])
    assert await _ids(store) == []
    client = await store._redis()
    jobs_key, order_key, seq_key = store.keys.queue("d1")
    assert await client.exists(jobs_key, order_key, seq_key) == 0  # issue 17: no garbage


async def test_a_large_queue_update_is_split_like_the_single_calls(
    redis_storage: RedisStorage,
) -> None:
    store = redis_storage
    ids = [f"q{i:05}" for i in range(1500)]
    await store.queue_save("d1", [rec(job_id) for job_id in ids])
    await store.queue_update("d1", [rec(ids[0], lease=3)], ids[1:1200], ids[1200:1300])
    loaded = await store.queue_load("d1")
    assert [job.id for job in loaded] == [ids[0], *ids[1300:]]
    assert loaded[0].lease == 3
