"""The one storage seam. Memory and Redis implement it; nothing outside storage/ knows a key.

Methods are batch-shaped (`save_many`, `destroy_many`, `queue_save`) so a backend can pipeline
a whole tick's writes into one round trip; callers use them once per loop tick, never once per
job. Every backend error surfaces as `StorageError` (`StorageUnavailable` when the backend
can't be reached), never as a redis-py exception.

Four families:
- jobs a node holds (`save_many` … `claim`), partitioned by node name;
- a distributor's durable queue (`queue_*`): jobs accepted but not finished, so they survive
  a distributor restart (docs/semantics.md §6);
- unique keys (`acquire` / `release` / `holder`): dj_one's enqueue_id and perform_id, loner;
- locks with owner tokens and expiry (`lock` / `unlock` / `lock_holder`): resque-lock(-timeout).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol, runtime_checkable

from jobreactor.job import JobRecord

UnlockResult = Literal["released", "expired", "not_held"]


@runtime_checkable
class Storage(Protocol):
    kind: str  # "memory" or "redis"
    durable: bool  # survives the process (Redis) or not (memory)

    # --- jobs held by a node ----------------------------------------------------------------

    async def save_many(self, node: str, jobs: Sequence[JobRecord]) -> None:
        """Store each job under `node`, replacing any earlier version with the same id."""
        ...

    async def destroy_many(self, node: str, job_ids: Sequence[str]) -> None:
        """Delete these jobs of `node`; unknown ids are ignored."""
        ...

    async def load(self, node: str, job_id: str) -> JobRecord | None:
        """A fresh copy of one job of `node`, or None if it is gone."""
        ...

    async def jobs_for(self, node: str, *, unfinished_only: bool = False) -> list[JobRecord]:
        """Every job stored for `node` (only those not complete/cancelled/failed if asked)."""
        ...

    async def nodes(self) -> list[str]:
        """Names of the nodes that have stored jobs."""
        ...

    async def claim(self, from_node: str, job_ids: Sequence[str]) -> list[JobRecord]:
        """Atomically take these jobs away from `from_node` and return the ones that were there.

        After it returns, `from_node` no longer has them (a node coming back finds nothing to
        resume), and two concurrent claims of one job never both get it.
        """
        ...

    # --- a distributor's durable queue --------------------------------------------------------

    async def queue_save(self, queue: str, jobs: Sequence[JobRecord]) -> None:
        """Remember these accepted jobs (with their feedback names) under `queue`."""
        ...

    async def queue_remove(self, queue: str, job_ids: Sequence[str]) -> None:
        """Forget these jobs (their final report arrived, or they were cancelled)."""
        ...

    async def queue_withdraw(self, queue: str, job_ids: Sequence[str]) -> None:
        """Forget these jobs, and make a later `queue_save` of them a no-op: their enqueue
        timed out and the caller was told they won't run, but the write may still land."""
        ...

    async def queue_load(self, queue: str) -> list[JobRecord]:
        """Every job still remembered under `queue`, oldest first."""
        ...

    # --- unique keys (dj_one, loner) ------------------------------------------------------------

    async def acquire(self, key: str, owner: str, ttl_s: float) -> bool:
        """Take `key` for `owner` if free (or already `owner`'s); it expires after `ttl_s`."""
        ...

    async def release(self, key: str, owner: str) -> bool:
        """Free `key` if `owner` holds it; True if it did."""
        ...

    async def holder(self, key: str) -> str | None:
        """Who holds `key` now, if anyone."""
        ...

    # --- locks with expiry (resque-lock-timeout) --------------------------------------------

    async def lock(self, key: str, token: str, timeout_s: float | None) -> bool:
        """Take lock `key` with owner `token`; `timeout_s` None or 0 means it never expires."""
        ...

    async def unlock(self, key: str, token: str) -> UnlockResult:
        """Release if `token` still holds it: "released"; "expired" if it ran out (someone
        else may hold it now, so nothing is deleted); "not_held" otherwise."""
        ...

    async def lock_holder(self, key: str) -> str | None: ...

    async def force_unlock(self, key: str) -> bool:
        """`JR.release_lock(key)`: delete the lock whoever holds it; True if it existed."""
        ...

    async def aclose(self) -> None:
        """Release connections. Safe to call more than once."""
        ...
