"""Taking a failed job back out of a storage, to run it again (`JR.retry`, a node's `retry`).

Shared by the app side (housekeeping.py: storages the app's reactor holds) and the node side
(node/commands.py: a node asked over the wire), so it lives beside the storage it works on.
"""

from __future__ import annotations

import time

from jobreactor.job import JobRecord, JobStatus
from jobreactor.storage.base import Storage

__all__ = ["take_failed"]


async def take_failed(storage: Storage, job_id: str) -> tuple[str, JobRecord] | None:
    """Claim failed job `job_id` from whichever node stored it; (that node, the job reset)."""
    for owner in await storage.nodes():
        record = await storage.load(owner, job_id)
        if record is None or record.status != JobStatus.FAILED:
            continue
        claimed = await storage.claim(owner, [job_id])
        if not claimed:
            continue  # someone else took it between the load and the claim
        job = claimed[0]
        job.attempt, job.status, job.lease = 0, JobStatus.NEW, 0
        job.run_at_ts, job.make_after, job.node = time.time(), 0.0, None
        return owner, job
    return None
