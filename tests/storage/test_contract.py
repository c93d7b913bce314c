"""The Storage contract: one suite, run against MemoryStorage and a real Redis (STYLE 22).

Every method of `jobreactor.storage.base.Storage` is pinned here; a backend passes or it isn't
a backend. Timing tests use short TTLs and a bounded wait loop, never a single exact sleep.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import fields

import pytest

from jobreactor.job import FINISHED_STATUSES, JobRecord, JobStatus
from jobreactor.storage import Storage
from tests.conftest import eventually

pytestmark = pytest.mark.timeout(30)


def full_record(job_id: str = "j1", node: str = "w1") -> JobRecord:
    """A record with every field away from its default (checked by the test below)."""
    return JobRecord(
        id=job_id,
        name="send_mail",
        args={
            "to": "a@example.org",
            "n": 3,
            "big": 2**62,
            "f": 1.5,
            "none": None,
            "flag": False,
            "nested": {"list": [1, "x", None, True, {"deep": -0.25}]},
            "blob": b"\x00\xff raw",
            "text": 'zürich ✓ "quoted" \n',
        },
        attempt=2,
        status=JobStatus.ERROR,
        run_at_ts=1_700_000_000.125,
        make_after=12.5,
        period=60.0,
        defer=True,
        defer_process=True,
        cron="*/5 * * * *",
        tz="Europe/Berlin",
        catch_up=True,
        node=node,
        not_node="w2",
        distributor="127.0.0.1:5000",
        priority=-3,
        max_attempt=7,
        retry_strategy="exponential",
        max_run_time=30.0,
        on_success="ok-1",
        on_error="err-1",
        run_at=1_700_000_001.5,
        failed_at=1_700_000_002.25,
        last_error="RuntimeError: boom",
        enqueue_id="enq-1",
        perform_id="perf-1",
        duplicate_delay=30.0,
        lock="lock:send_mail:{}",
        lock_timeout=60.0,
        loner=True,
        batch="b-1",
        part="p-1",
        lease=42,
        trace="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        extra={"from_newer_peer": {"k": [1, 2]}, "note": "kept"},
    )


def as_new(record: JobRecord) -> JobRecord:
    """`record` as it first reaches a node. `full_record` is periodic and has run: a storage
    saves such a record only while it is stored (a delete stays deleted), so tests store it
    new first, as a node does (storage/status_index.py `is_update_only`)."""
    first = record.copy()
    first.status = JobStatus.NEW
    return first


def rec(job_id: str, status: str = JobStatus.NEW, **changes: object) -> JobRecord:
    record = JobRecord(id=job_id, name="echo", args={"i": job_id}, status=status)
    for key, value in changes.items():
        setattr(record, key, value)
    return record


def ids(records: list[JobRecord]) -> list[str]:
    return sorted(record.id for record in records)


def test_full_record_sets_every_field() -> None:
    """Guards the round-trip test: a new JobRecord field must be added to full_record."""
    record, plain = full_record(), JobRecord(id="x", name="x", args={})
    same = [f.name for f in fields(JobRecord) if getattr(record, f.name) == getattr(plain, f.name)]
    assert same == []


# --- jobs held by a node ---------------------------------------------------------------------


async def test_save_load_round_trips_every_field(storage: Storage) -> None:
    original = full_record()
    await storage.save_many("w1", [as_new(original)])
    await storage.save_many("w1", [original])
    loaded = await storage.load("w1", "j1")
    assert loaded == full_record()
    assert loaded is not original
    assert isinstance(loaded.attempt, int)
    assert isinstance(loaded.run_at_ts, float)
    assert loaded.defer is True
    assert loaded.args["blob"] == b"\x00\xff raw"
    assert loaded.args["big"] == 2**62


async def test_round_trip_of_a_minimal_record_keeps_defaults(storage: Storage) -> None:
    await storage.save_many("w1", [JobRecord(id="j1", name="echo", args={})])
    assert await storage.load("w1", "j1") == JobRecord(id="j1", name="echo", args={})


async def test_empty_string_and_none_stay_distinct(storage: Storage) -> None:
    await storage.save_many("w1", [rec("j1", last_error="", on_success=None, distributor="")])
    loaded = await storage.load("w1", "j1")
    assert loaded is not None
    assert loaded.last_error == ""
    assert loaded.on_success is None


async def test_load_missing_job_or_other_node_is_none(storage: Storage) -> None:
    await storage.save_many("w1", [rec("j1")])
    assert await storage.load("w1", "nope") is None
    assert await storage.load("w2", "j1") is None
    assert await storage.load("never-seen", "j1") is None


async def test_load_returns_a_fresh_copy_each_time(storage: Storage) -> None:
    await storage.save_many("w1", [rec("j1")])
    first = await storage.load("w1", "j1")
    assert first is not None
    first.args["added_by_attempt"] = True
    first.attempt = 99
    second = await storage.load("w1", "j1")
    assert second == rec("j1")
    assert second is not first


async def test_save_replaces_the_whole_record(storage: Storage) -> None:
    """Fields that went back to None/default don't linger from the earlier version."""
    await storage.save_many("w1", [as_new(full_record())])
    await storage.save_many("w1", [full_record()])
    await storage.save_many("w1", [rec("j1", attempt=3)])
    assert await storage.load("w1", "j1") == rec("j1", attempt=3)


async def test_save_many_and_destroy_many_accept_empty_batches(storage: Storage) -> None:
    await storage.save_many("w1", [])
    await storage.destroy_many("w1", [])
    assert await storage.jobs_for("w1") == []
    assert await storage.nodes() == []


async def test_jobs_for_returns_every_job_of_the_node(storage: Storage) -> None:
    jobs = [rec(f"j{i}") for i in range(5)]
    await storage.save_many("w1", jobs[:3])
    await storage.save_many("w1", jobs[3:])
    assert ids(await storage.jobs_for("w1")) == [f"j{i}" for i in range(5)]
    assert sorted(await storage.jobs_for("w1"), key=lambda r: r.id) == jobs
    assert await storage.jobs_for("w2") == []


async def test_jobs_for_unfinished_only_is_the_intended_filter(storage: Storage) -> None:
    """SPEC 1.15 / D5: unfinished = not complete/cancelled/failed (the Ruby filter was inverted)."""
    await storage.save_many("w1", [rec(status.value, status) for status in JobStatus])
    unfinished = ids(await storage.jobs_for("w1", unfinished_only=True))
    assert unfinished == sorted(s.value for s in JobStatus if s not in FINISHED_STATUSES)
    assert unfinished == sorted(["new", "in progress", "queued", "error"])
    assert len(await storage.jobs_for("w1")) == len(JobStatus)


async def test_jobs_for_pages_through_a_big_node(storage: Storage) -> None:
    jobs = [
        rec(f"j{i:05}", JobStatus.COMPLETE if i % 10 == 0 else JobStatus.NEW) for i in range(2500)
    ]
    await storage.save_many("w1", jobs)
    assert ids(await storage.jobs_for("w1")) == [job.id for job in jobs]
    unfinished = await storage.jobs_for("w1", unfinished_only=True)
    assert len(unfinished) == 2250
    assert len(set(ids(unfinished))) == 2250


async def test_nodes_do_not_see_each_others_jobs(storage: Storage) -> None:
    """D16: the Ruby `*name_*` glob let node "node" see and delete "redis_node"'s jobs."""
    names = ["node", "redis_node", "node_1", "my_node_", "nod"]
    for name in names:
        await storage.save_many(name, [rec(f"{name}-a"), rec(f"{name}-b", JobStatus.ERROR)])
    assert ids(await storage.jobs_for("node")) == ["node-a", "node-b"]
    assert ids(await storage.jobs_for("node", unfinished_only=True)) == ["node-a", "node-b"]
    assert await storage.load("node", "redis_node-a") is None
    await storage.destroy_many("node", ["redis_node-a", "node_1-a"])
    assert await storage.claim("node", ["redis_node-b", "nod-a"]) == []
    for name in names[1:]:
        assert ids(await storage.jobs_for(name)) == [f"{name}-a", f"{name}-b"]
    assert await storage.nodes() == sorted(names)


async def test_same_job_id_on_two_nodes_is_two_jobs(storage: Storage) -> None:
    await storage.save_many("w1", [rec("j1", attempt=1)])
    await storage.save_many("w2", [rec("j1", attempt=2)])
    await storage.destroy_many("w1", ["j1"])
    assert await storage.load("w1", "j1") is None
    assert await storage.load("w2", "j1") == rec("j1", attempt=2)


async def test_destroy_many_deletes_only_the_given_ids(storage: Storage) -> None:
    await storage.save_many("w1", [rec("a"), rec("b"), rec("c")])
    await storage.destroy_many("w1", ["a", "c", "unknown"])
    assert ids(await storage.jobs_for("w1")) == ["b"]
    assert await storage.load("w1", "a") is None
    await storage.destroy_many("w1", ["a"])  # again: ignored
    await storage.destroy_many("nobody", ["b"])
    assert ids(await storage.jobs_for("w1")) == ["b"]


async def test_nodes_lists_nodes_holding_jobs(storage: Storage) -> None:
    assert await storage.nodes() == []
    await storage.save_many("w2", [rec("a")])
    await storage.save_many("w1", [rec("b"), rec("c")])
    assert await storage.nodes() == ["w1", "w2"]
    await storage.destroy_many("w2", ["a"])
    assert await storage.nodes() == ["w1"]
    await storage.claim("w1", ["b", "c"])
    assert await storage.nodes() == []


async def test_claim_takes_the_jobs_away_from_the_node(storage: Storage) -> None:
    await storage.save_many("gone", [as_new(full_record("a", "gone"))])
    await storage.save_many("gone", [full_record("a", "gone"), rec("b"), rec("c")])
    claimed = await storage.claim("gone", ["a", "b", "unknown"])
    assert sorted(claimed, key=lambda r: r.id) == [full_record("a", "gone"), rec("b")]
    assert ids(await storage.jobs_for("gone")) == ["c"]
    assert await storage.load("gone", "a") is None
    assert await storage.claim("gone", ["a", "b"]) == []  # a node coming back finds nothing
    assert await storage.claim("gone", []) == []
    assert await storage.claim("nobody", ["c"]) == []


async def test_concurrent_claims_never_both_get_a_job(storage: Storage, twin: Storage) -> None:
    job_ids = [f"j{i:04}" for i in range(1500)]
    await storage.save_many("gone", [rec(job_id) for job_id in job_ids])
    # Overlapping, differently ordered requests from two clients (two processes, for Redis).
    wants = [job_ids[:1000], job_ids[500:][::-1], job_ids[::2], job_ids[::-3]]
    claims = await asyncio.gather(
        *[(storage if i % 2 else twin).claim("gone", want) for i, want in enumerate(wants)]
    )
    winners: dict[str, int] = {}
    for claimer, got in enumerate(claims):
        for record in got:
            assert record.id not in winners, f"{record.id} claimed twice"
            winners[record.id] = claimer
    assert sorted(winners) == job_ids
    assert await storage.jobs_for("gone") == []


# --- a distributor's durable queue ---------------------------------------------------------


async def test_queue_load_is_oldest_first(storage: Storage) -> None:
    await storage.queue_save("d1", [rec("c"), rec("a")])
    await storage.queue_save("d1", [rec("b")])
    assert [job.id for job in await storage.queue_load("d1")] == ["c", "a", "b"]


async def test_queue_save_again_updates_in_place(storage: Storage) -> None:
    await storage.queue_save("d1", [rec("a"), rec("b"), rec("c")])
    await storage.queue_save("d1", [rec("a", attempt=5, on_success="fb")])
    loaded = await storage.queue_load("d1")
    assert [job.id for job in loaded] == ["a", "b", "c"]
    assert loaded[0] == rec("a", attempt=5, on_success="fb")


async def test_queue_round_trips_every_field(storage: Storage) -> None:
    await storage.queue_save("d1", [full_record()])
    assert await storage.queue_load("d1") == [full_record()]


async def test_queue_remove_and_queues_are_separate(storage: Storage) -> None:
    await storage.queue_save("d1", [rec("a"), rec("b"), rec("c")])
    await storage.queue_save("d2", [rec("a")])
    await storage.queue_remove("d1", ["b", "unknown"])
    await storage.queue_remove("d1", [])
    await storage.queue_remove("nowhere", ["a"])
    assert [job.id for job in await storage.queue_load("d1")] == ["a", "c"]
    assert [job.id for job in await storage.queue_load("d2")] == ["a"]
    await storage.queue_remove("d1", ["a", "c"])
    assert await storage.queue_load("d1") == []
    assert await storage.queue_load("never") == []
    await storage.queue_save("d1", [rec("b")])  # removed, then saved again: at the end
    await storage.queue_save("d1", [])
    assert [job.id for job in await storage.queue_load("d1")] == ["b"]


async def test_queue_keeps_order_across_pages(storage: Storage) -> None:
    job_ids = [f"q{i:05}" for i in range(2500)][::-1]
    for start in range(0, 2500, 700):
        await storage.queue_save("d1", [rec(job_id) for job_id in job_ids[start : start + 700]])
    await storage.queue_remove("d1", job_ids[1000:1100])
    expected = job_ids[:1000] + job_ids[1100:]
    assert [job.id for job in await storage.queue_load("d1")] == expected


# --- unique keys ---------------------------------------------------------------------------


async def test_acquire_release_holder(storage: Storage) -> None:
    assert await storage.holder("enqueue:x") is None
    assert await storage.acquire("enqueue:x", "job-1", 60) is True
    assert await storage.acquire("enqueue:x", "job-1", 60) is True  # already its own
    assert await storage.acquire("enqueue:x", "job-2", 60) is False
    assert await storage.holder("enqueue:x") == "job-1"
    assert await storage.release("enqueue:x", "job-2") is False  # not the owner
    assert await storage.holder("enqueue:x") == "job-1"
    assert await storage.release("enqueue:x", "job-1") is True
    assert await storage.holder("enqueue:x") is None
    assert await storage.release("enqueue:x", "job-1") is False
    assert await storage.acquire("enqueue:x", "job-2", 60) is True
    assert await storage.holder("enqueue:x") == "job-2"


async def test_unique_keys_are_independent(storage: Storage) -> None:
    assert await storage.acquire("enqueue:x", "a", 60)
    assert await storage.acquire("perform:x", "b", 60)
    assert await storage.lock("enqueue:x", "c", 60)  # locks are another namespace
    assert await storage.holder("enqueue:x") == "a"
    assert await storage.holder("perform:x") == "b"


async def test_acquired_key_expires_after_its_ttl(storage: Storage) -> None:
    assert await storage.acquire("k", "first", 0.3)
    assert await storage.acquire("k", "second", 60) is False
    await eventually(lambda: storage.acquire("k", "second", 60))
    assert await storage.holder("k") == "second"
    assert await storage.release("k", "first") is False


async def test_expired_key_has_no_holder(storage: Storage) -> None:
    assert await storage.acquire("k", "first", 0.2)

    async def free() -> bool:
        return await storage.holder("k") is None

    await eventually(free)
    assert await storage.release("k", "first") is False


async def test_owner_acquiring_again_refreshes_the_ttl(storage: Storage) -> None:
    start = time.monotonic()
    assert await storage.acquire("k", "owner", 1.0)
    await asyncio.sleep(0.6)  # the TTL's clock is what is tested: past half of it, no event
    assert await storage.acquire("k", "owner", 1.0)  # now held until ~1.6 s
    await asyncio.sleep(max(0.0, 1.2 - (time.monotonic() - start)))
    assert await storage.holder("k") == "owner"


# --- locks with expiry -------------------------------------------------------------------------


async def test_lock_and_unlock(storage: Storage) -> None:
    assert await storage.lock_holder("L") is None
    assert await storage.lock("L", "t1", 60) is True
    assert await storage.lock("L", "t2", 60) is False
    assert await storage.lock_holder("L") == "t1"
    assert await storage.unlock("L", "t2") == "not_held"
    assert await storage.lock_holder("L") == "t1"
    assert await storage.unlock("L", "t1") == "released"
    assert await storage.lock_holder("L") is None
    assert await storage.unlock("L", "t1") == "not_held"
    assert await storage.unlock("never-locked", "t1") == "not_held"
    assert await storage.lock("L", "t2", 60) is True


async def test_lock_taken_again_with_the_same_token_succeeds(storage: Storage) -> None:
    """A retried call (reply lost) must not leave the caller thinking it has no lock."""
    assert await storage.lock("L", "t1:42", 60)
    assert await storage.lock("L", "t1:42", 60)
    assert await storage.lock_holder("L") == "t1:42"  # tokens may contain ':'
    assert await storage.unlock("L", "t1:42") == "released"


async def test_unlock_after_expiry_says_expired_and_deletes_nothing(storage: Storage) -> None:
    assert await storage.lock("L", "t1", 0.2)
    assert await storage.lock("L", "t2", 0.2) is False

    async def expired() -> bool:
        return await storage.lock_holder("L") is None

    await eventually(expired)
    assert await storage.unlock("L", "t1") == "expired"
    assert await storage.unlock("L", "t1") == "expired"  # still nothing deleted
    assert await storage.lock("L", "t2", 60) is True
    assert await storage.unlock("L", "t1") == "not_held"
    assert await storage.lock_holder("L") == "t2"
    assert await storage.unlock("L", "t2") == "released"


async def test_expired_lock_can_be_taken_by_another_token(storage: Storage) -> None:
    assert await storage.lock("L", "t1", 0.2)
    await eventually(lambda: storage.lock("L", "t2", 60))
    assert await storage.lock_holder("L") == "t2"


@pytest.mark.parametrize("timeout", [None, 0])
async def test_lock_without_timeout_never_expires(storage: Storage, timeout: float | None) -> None:
    assert await storage.lock("L", "t1", timeout)
    await asyncio.sleep(0.3)  # nothing must happen: longer than the 0.2 s TTLs that do expire
    assert await storage.lock("L", "t2", 0.1) is False
    assert await storage.lock_holder("L") == "t1"
    assert await storage.unlock("L", "t1") == "released"


async def test_force_unlock(storage: Storage) -> None:
    assert await storage.force_unlock("L") is False
    assert await storage.lock("L", "t1", None)
    assert await storage.force_unlock("L") is True
    assert await storage.lock_holder("L") is None
    assert await storage.unlock("L", "t1") == "not_held"
    assert await storage.force_unlock("L") is False
    assert await storage.lock("L", "t2", 60)
    assert await storage.lock_holder("L") == "t2"


# --- lifecycle -------------------------------------------------------------------------------


async def test_aclose_is_idempotent(storage: Storage) -> None:
    await storage.save_many("w1", [rec("a")])
    await storage.aclose()
    await storage.aclose()


def test_kind_and_durability(storage: Storage) -> None:
    assert isinstance(storage, Storage)
    assert (storage.kind, storage.durable) in {("memory", False), ("redis", True)}
