"""MemoryStorage: best effort, dies with the process (DESIGN: memory storage says so)."""

from __future__ import annotations

from collections.abc import Sequence

from jobreactor.job import JobRecord


class MemoryStorage:
    """Jobs per node in a dict. Loads return copies, so each attempt works on a fresh record."""

    kind = "memory"
    durable = False

    def __init__(self) -> None:
        self._jobs: dict[str, dict[str, JobRecord]] = {}

    def __repr__(self) -> str:
        return f"<MemoryStorage nodes={len(self._jobs)} jobs={self.count()}>"

    def count(self) -> int:
        return sum(len(jobs) for jobs in self._jobs.values())

    async def save_many(self, node: str, jobs: Sequence[JobRecord]) -> None:
        table = self._jobs.setdefault(node, {})
        for job in jobs:
            table[job.id] = job

    async def destroy_many(self, node: str, job_ids: Sequence[str]) -> None:
        table = self._jobs.get(node)
        if table is None:
            return
        for job_id in job_ids:
            table.pop(job_id, None)

    async def load(self, node: str, job_id: str) -> JobRecord | None:
        job = self._jobs.get(node, {}).get(job_id)
        return None if job is None else job.copy()

    async def jobs_for(self, node: str, *, unfinished_only: bool = False) -> list[JobRecord]:
        jobs = self._jobs.get(node, {}).values()
        return [job.copy() for job in jobs if not (unfinished_only and job.is_finished)]

    async def aclose(self) -> None:
        return None
