"""The one storage seam. Memory and Redis implement it; nothing outside storage/ knows a key.

Methods are batch-shaped (`save_many`, `destroy_many`) so a backend can pipeline a whole tick's
writes into one round trip; the node calls them once per loop tick, never once per job.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from jobreactor.job import JobRecord


@runtime_checkable
class Storage(Protocol):
    kind: str  # "memory" or "redis"
    durable: bool  # survives the process (Redis) or not (memory)

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

    async def aclose(self) -> None:
        """Release connections. Safe to call more than once."""
        ...
