"""MemoryStorage: best effort, dies with the process (docs/semantics.md §6).

Same semantics as RedisStorage within one process (the contract suite runs both), with
expiries on `time.monotonic()`. Expired unique keys and locks are dropped lazily, when touched,
and by an occasional sweep so a long-lived process doesn't collect them forever.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Sequence
from typing import Final

from jobreactor.job import JobRecord
from jobreactor.storage.base import UnlockResult
from jobreactor.storage.codec import unpack_record
from jobreactor.storage.status_index import IndexKind, MemoryIndex, is_update_only

# Sweep expired keys once per this many acquire/lock calls (amortised O(1)).
_SWEEP_EVERY: Final = 4096
# An expired lock is remembered this long, so `unlock` can still answer "expired" (as Redis).
_LOCK_GRACE_S: Final = 86_400.0
# Withdrawn (queue, job id) pairs remembered, so a late save of one is refused.
_WITHDRAWN_KEPT: Final = 65_536

# (owner or token, monotonic expiry or None for never)
_Entry = tuple[str, float | None]
# A node's job: its record, or the bytes of a far-future one the node keeps packed (`keep`).
_Stored = JobRecord | bytes


def _copy(job_id: str, job: _Stored) -> JobRecord:
    return unpack_record(job, job_id) if isinstance(job, bytes) else job.copy()


class Keyspace:
    """Unique keys and locks. A reactor owns one and gives it to every memory storage it opens,
    so its distributor and its nodes see one another's (the gems' features hold "within one
    process" on memory: an app or a node process runs one reactor). A storage made without one
    has its own."""

    def __init__(self) -> None:
        self.uniq: dict[str, _Entry] = {}
        self.locks: dict[str, _Entry] = {}


def _live(entry: _Entry | None, now: float) -> bool:
    return entry is not None and (entry[1] is None or entry[1] > now)


def _expiry(seconds: float | None, now: float) -> float | None:
    """None, 0, negative or infinite means never."""
    if seconds is None or not 0 < seconds < float("inf"):
        return None
    return now + seconds


class MemoryStorage:
    """Jobs per node in a dict. Loads return copies, so each attempt works on a fresh record."""

    kind = "memory"
    durable = False

    def __init__(self, keyspace: Keyspace | None = None) -> None:
        self._jobs: dict[str, dict[str, _Stored]] = {}
        self._queues: dict[str, dict[str, JobRecord]] = {}  # insertion order = queue order
        self._withdrawn: collections.OrderedDict[tuple[str, str], None] = collections.OrderedDict()
        keys = Keyspace() if keyspace is None else keyspace
        self._uniq = keys.uniq
        self._locks = keys.locks
        self._calls = 0
        self._index = MemoryIndex()  # failed and retrying jobs per node (status_index.py)

    def __repr__(self) -> str:
        return f"<MemoryStorage nodes={len(self._jobs)} jobs={self.count()}>"

    def count(self) -> int:
        return sum(len(jobs) for jobs in self._jobs.values())

    # --- jobs held by a node (hot path: keep these cheap) ---------------------------------------

    async def save_many(self, node: str, jobs: Sequence[JobRecord]) -> None:
        table = self._jobs.setdefault(node, {})
        gone: set[str] = set()
        for job in jobs:
            if (job.period or job.cron is not None) and job.id not in table and is_update_only(job):
                gone.add(job.id)  # deleted: a periodic run's own save doesn't bring it back
                continue
            table[job.id] = job
        self._index.saved(node, [job for job in jobs if job.id not in gone] if gone else jobs)

    def note_status(self, node: str, job: JobRecord) -> None:
        """A node changed a record this storage shares with it: follow its status."""
        self._index.note(node, job)

    def keep(self, node: str, job_id: str, job: _Stored) -> None:
        """Hold `job` (the node's own record, or its packed bytes) for a job still stored:
        the node shares it rather than the storage keeping a second copy."""
        table = self._jobs.get(node)
        if table is not None and job_id in table:
            table[job_id] = job

    async def destroy_many(self, node: str, job_ids: Sequence[str]) -> None:
        table = self._jobs.get(node)
        if table is None:
            return
        for job_id in job_ids:
            table.pop(job_id, None)
        self._index.removed(node, job_ids)

    async def load(self, node: str, job_id: str) -> JobRecord | None:
        job = self._jobs.get(node, {}).get(job_id)
        return None if job is None else _copy(job_id, job)

    async def jobs_for(self, node: str, *, unfinished_only: bool = False) -> list[JobRecord]:
        jobs = [_copy(job_id, job) for job_id, job in self._jobs.get(node, {}).items()]
        return [job for job in jobs if not (unfinished_only and job.is_finished)]

    async def nodes(self) -> list[str]:
        return sorted(name for name, table in self._jobs.items() if table)

    async def claim(self, from_node: str, job_ids: Sequence[str]) -> list[JobRecord]:
        # No await inside: atomic with respect to every other coroutine on the loop.
        table = self._jobs.get(from_node)
        if table is None:
            return []
        taken = ((job_id, table.pop(job_id, None)) for job_id in job_ids)
        out = [_copy(job_id, job) for job_id, job in taken if job is not None]
        self._index.removed(from_node, [job.id for job in out])
        return out

    async def index_count(self, node: str, kind: IndexKind) -> int:
        return self._index.count(node, kind)

    async def index_page(
        self, node: str, kind: IndexKind, start: int, count: int
    ) -> list[tuple[str, float]]:
        return self._index.page(node, kind, start, count)

    # --- a distributor's durable queue ----------------------------------------------------------

    async def queue_save(self, queue: str, jobs: Sequence[JobRecord]) -> None:
        table = self._queues.setdefault(queue, {})
        for job in jobs:
            if (queue, job.id) not in self._withdrawn:
                table[job.id] = job  # a re-save keeps the job's place in the queue
        if not table:
            del self._queues[queue]

    async def queue_withdraw(self, queue: str, job_ids: Sequence[str]) -> None:
        await self.queue_remove(queue, job_ids)
        for job_id in job_ids:
            self._withdrawn[(queue, job_id)] = None
        while len(self._withdrawn) > _WITHDRAWN_KEPT:
            self._withdrawn.popitem(last=False)

    async def queue_remove(self, queue: str, job_ids: Sequence[str]) -> None:
        table = self._queues.get(queue)
        if table is None:
            return
        for job_id in job_ids:
            table.pop(job_id, None)
        if not table:
            del self._queues[queue]

    async def queue_load(self, queue: str) -> list[JobRecord]:
        return [job.copy() for job in self._queues.get(queue, {}).values()]

    # --- unique keys ------------------------------------------------------------------------------

    async def acquire(self, key: str, owner: str, ttl_s: float) -> bool:
        now = time.monotonic()
        self._maybe_sweep(now)
        entry = self._uniq.get(key)
        if _live(entry, now) and entry is not None and entry[0] != owner:
            return False
        self._uniq[key] = (owner, _expiry(ttl_s, now))  # the owner taking it again refreshes it
        return True

    async def release(self, key: str, owner: str) -> bool:
        entry = self._uniq.get(key)
        if entry is None or entry[0] != owner or not _live(entry, time.monotonic()):
            return False
        del self._uniq[key]
        return True

    async def holder(self, key: str) -> str | None:
        entry = self._uniq.get(key)
        return entry[0] if entry is not None and _live(entry, time.monotonic()) else None

    # --- locks with expiry --------------------------------------------------------------------

    async def lock(self, key: str, token: str, timeout_s: float | None) -> bool:
        now = time.monotonic()
        self._maybe_sweep(now)
        entry = self._locks.get(key)
        if _live(entry, now) and entry is not None and entry[0] != token:
            return False
        # Not re-entrant in spirit (tokens are per attempt), but taking it again with the same
        # token succeeds, as a retried Redis call would.
        self._locks[key] = (token, _expiry(timeout_s, now))
        return True

    async def unlock(self, key: str, token: str) -> UnlockResult:
        entry = self._locks.get(key)
        if entry is None or entry[0] != token:
            return "not_held"
        if not _live(entry, time.monotonic()):
            return "expired"  # someone may take it now; it isn't ours to delete
        del self._locks[key]
        return "released"

    async def lock_holder(self, key: str) -> str | None:
        entry = self._locks.get(key)
        return entry[0] if entry is not None and _live(entry, time.monotonic()) else None

    async def force_unlock(self, key: str) -> bool:
        return self._locks.pop(key, None) is not None

    def _maybe_sweep(self, now: float) -> None:
        self._calls += 1
        if self._calls % _SWEEP_EVERY:
            return
        for key in [k for k, e in self._uniq.items() if not _live(e, now)]:
            del self._uniq[key]
        for key in [
            k for k, e in self._locks.items() if e[1] is not None and e[1] + _LOCK_GRACE_S <= now
        ]:
            del self._locks[key]

    async def aclose(self) -> None:
        return None
