"""A periodic (or cron) record deleted between a run's record check and that run's own save
stays deleted (issue 16): the storage saves an update of a periodic record only while the
record is still stored. Deterministic: the delete is done between the check and the save
by the test itself, on memory, Redis and a Redis Cluster."""

from __future__ import annotations

from jobreactor.job import JobRecord, JobStatus
from jobreactor.storage import Storage
from jobreactor.storage.redis import RedisStorage
from jobreactor.storage.status_index import StatusIndexReader


def _periodic(job_id: str, *, cron: bool = False) -> JobRecord:
    job = JobRecord(id=job_id, name="tick", args={})
    if cron:
        job.cron = "*/5 * * * *"
    else:
        job.period = 60.0
    return job


def _after_a_run(job: JobRecord, status: JobStatus) -> JobRecord:
    """The record as a run saves it (node/attempts.py): no longer new."""
    job.status = status
    job.attempt = 0 if status == JobStatus.QUEUED else 1
    job.run_at_ts = 2_000_000_000.0
    job.failed_at = 1_999_999_000.0 if status == JobStatus.ERROR else None
    return job


async def test_a_deleted_periodic_record_is_not_brought_back_by_a_runs_save(
    storage: Storage,
) -> None:
    jobs = [_periodic("every"), _periodic("cron", cron=True), _periodic("failing")]
    await storage.save_many("n1", jobs)  # accepted: new records are always stored
    for job in jobs:
        assert await storage.load("n1", job.id) is not None
    # The run checked its record (node/guards.py record_gone): still there. Now deleted.
    await storage.destroy_many("n1", [job.id for job in jobs])
    await storage.save_many(
        "n1",
        [
            _after_a_run(jobs[0], JobStatus.QUEUED),
            _after_a_run(jobs[1], JobStatus.IN_PROGRESS),
            _after_a_run(jobs[2], JobStatus.ERROR),
        ],
    )
    for job in jobs:
        assert await storage.load("n1", job.id) is None, job.id
    assert isinstance(storage, StatusIndexReader)
    assert await storage.index_count("n1", "retrying") == 0  # "failing" was not re-indexed


async def test_updates_of_a_stored_periodic_record_are_saved(storage: Storage) -> None:
    job, plain = _periodic("every"), JobRecord(id="plain", name="work", args={})
    await storage.save_many("n1", [job])
    plain.status = JobStatus.IN_PROGRESS  # not periodic: saved whether stored or not
    await storage.save_many("n1", [_after_a_run(job, JobStatus.ERROR), plain])
    stored = await storage.load("n1", "every")
    assert stored is not None
    assert stored.status == JobStatus.ERROR
    assert stored.run_at_ts == 2_000_000_000.0
    assert isinstance(storage, StatusIndexReader)
    assert await storage.index_count("n1", "retrying") == 1
    assert await storage.load("n1", "plain") is not None


async def test_a_plain_del_of_a_periodic_record_also_stays(single_storage: RedisStorage) -> None:
    job = _periodic("every")
    await single_storage.save_many("n1", [job])
    client = await single_storage._redis()
    assert await client.delete(single_storage.keys.job("n1", "every")) == 1  # redis-cli DEL
    await single_storage.save_many("n1", [_after_a_run(job, JobStatus.QUEUED)])
    assert await single_storage.load("n1", "every") is None
    assert await client.exists(single_storage.keys.job("n1", "every")) == 0
