"""The failed and retrying indexes (storage/status_index.py): exact through every transition,
on memory, Redis and a Redis Cluster; rebuilt for a store written before they existed."""

from __future__ import annotations

from jobreactor.job import JobRecord, JobStatus
from jobreactor.monitor import RedisMonitor
from jobreactor.storage import Storage
from jobreactor.storage.redis import RedisStorage
from jobreactor.storage.status_index import StatusIndexReader, merge_pages
from tests.redis_server import RedisServer


def _job(i: int, status: JobStatus, at: float) -> JobRecord:
    job = JobRecord(id=f"job-{i:03d}", name="work", args={"i": i})
    job.status = status
    job.failed_at = at if status in (JobStatus.FAILED, JobStatus.ERROR) else None
    job.run_at_ts = at + 100
    return job


async def test_index_follows_every_transition(storage: Storage) -> None:
    assert isinstance(storage, StatusIndexReader)
    jobs = [_job(i, JobStatus.FAILED, 1000.0 + i) for i in range(10)]
    jobs += [_job(i, JobStatus.ERROR, 2000.0 + i) for i in range(10, 15)]
    jobs += [_job(i, JobStatus.NEW, 0.0) for i in range(15, 20)]
    await storage.save_many("n1", jobs)
    assert await storage.index_count("n1", "failed") == 10
    assert await storage.index_count("n1", "retrying") == 5
    page = await storage.index_page("n1", "failed", 0, 3)
    assert [job_id for job_id, _ in page] == ["job-009", "job-008", "job-007"]
    assert [job_id for job_id, _ in await storage.index_page("n1", "retrying", 3, 5)] == [
        "job-013",
        "job-014",
    ]
    # A retrying job fails for good; a failed job is saved again as new; one is deleted; one
    # is claimed away (JR.retry); a retrying job completes.
    await storage.save_many("n1", [_job(10, JobStatus.FAILED, 3000.0)])
    await storage.save_many("n1", [_job(0, JobStatus.NEW, 0.0)])
    await storage.destroy_many("n1", ["job-001"])
    assert [j.id for j in await storage.claim("n1", ["job-002"])] == ["job-002"]
    await storage.save_many("n1", [_job(11, JobStatus.COMPLETE, 0.0)])
    assert await storage.index_count("n1", "failed") == 8  # 10 - 3 + job-010
    assert await storage.index_count("n1", "retrying") == 3
    first = await storage.index_page("n1", "failed", 0, 1)
    assert first == [("job-010", 3000.0)]
    assert await storage.index_count("other", "failed") == 0


def test_merge_pages_orders_across_nodes() -> None:
    pages = {"a": [("a1", 5.0), ("a2", 3.0)], "b": [("b1", 4.0), ("b2", 1.0)]}
    assert [r[1] for r in merge_pages(pages, "failed", 1, 2)] == ["b1", "a2"]
    assert [r[1] for r in merge_pages(pages, "retrying", 0, 3)] == ["b2", "a2", "b1"]


async def test_reindex_builds_the_index_of_an_old_store(
    single_storage: RedisStorage, redis_server: RedisServer
) -> None:
    store = single_storage
    jobs = [_job(i, JobStatus.FAILED, 1000.0 + i) for i in range(7)]
    jobs += [_job(i, JobStatus.ERROR, 1000.0 + i) for i in range(7, 9)]
    jobs += [_job(i, JobStatus.COMPLETE, 0.0) for i in range(9, 12)]
    await store.save_many("old", jobs)
    client = await store._redis()
    tag = store.keys.node_tag("old")
    await client.delete(f"{tag}:failed", f"{tag}:retrying")  # as written before the index
    await client.zadd(f"{tag}:failed", {"gone": 1.0})  # and a stale entry
    with RedisMonitor(redis_server.url, prefix=store.prefix) as monitor:
        assert monitor.reindex() == {"old": {"failed": 7, "retrying": 2}}
        assert monitor.index_count("old", "failed") == 7
        assert monitor.index_count("old", "retrying") == 2
        assert monitor.reindex("old") == {"old": {"failed": 7, "retrying": 2}}  # idempotent
        assert monitor.index_count("old", "failed") == 7
        # The monitor's own retry and delete keep it exact.
        assert monitor.retry("job-006")
        assert monitor.destroy("job-005")
        assert monitor.index_count("old", "failed") == 5
        ids = [job_id for job_id, _ in monitor.index_page("old", "failed", 0, 10)]
        assert ids == ["job-004", "job-003", "job-002", "job-001", "job-000"]
        records = monitor.load_many("old", ids[:2])
        assert [r["status"] for r in records] == ["failed", "failed"]
