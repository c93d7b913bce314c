"""RegistrySource: the dashboard across processes, from the discovery registry.

Every distributor (and every node with a `discovery_url`) publishes `stats()` with its
heartbeat: load, connected nodes, the first pending jobs (without args) and its process's
metrics. This source reads the live members of one group (or of the default group) with
`jobreactor.discovery.live_members`. Figures are as fresh as the last beat
(`registry_beat`, 5 s by default). Metrics are summed once per process (its
`JobMetrics.process` id): a process running a distributor and a node publishes the same
figures twice. The sums never go down (`ProcessTotals`): a process that leaves keeps its last
totals in them, so Prometheus' `increase()` never sees a reset that wasn't one.

It knows no job's definition, no in-flight list and no node's timers: those pages fall back
to Redis node storage when the dashboard has a `redis_url` (StoredJobs).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from typing import Any

from jobreactor.dashboard.sources import NoLiveSource, Snapshot, View, job_view
from jobreactor.discovery import Member, live_members
from jobreactor.discovery.registry import REDIS_ERRORS, connect
from jobreactor.errors import StorageUnavailable
from jobreactor.metrics import EVENTS, JobMetrics
from jobreactor.storage.redis import redact_url


class RegistrySource(NoLiveSource):
    """Live members' figures; what they don't publish is empty, as with no live source."""

    def __init__(self, discovery_url: str, group: str | None = None, prefix: str = "jr") -> None:
        self.url = discovery_url
        self.group = group or "default"
        self.prefix = prefix
        self.label = f"registry {redact_url(discovery_url)} · group {self.group}"
        self.totals = ProcessTotals()

    def _members(self) -> tuple[list[Member], list[Member]]:
        async def read() -> tuple[list[Member], list[Member]]:
            client = connect(self.url)
            try:
                return (
                    await live_members(client, self.group, prefix=self.prefix),
                    await live_members(client, self.group, prefix=self.prefix, kind="node"),
                )
            finally:
                await client.aclose()

        try:
            return asyncio.run(read())
        except REDIS_ERRORS as exc:
            raise StorageUnavailable(f"registry {redact_url(self.url)}: {exc}") from exc

    def snapshot(self) -> Snapshot:
        distributors, nodes = self._members()
        by_process: dict[str, dict[str, Any]] = {}
        for member in [*distributors, *nodes]:
            metrics = member.stats.get("metrics")
            if isinstance(metrics, dict):
                key = f"{member.host}:{member.pid}:{metrics.get('process', '')}"
                by_process[key] = metrics
        parts, at = self.totals.update(by_process)
        return {
            "time": time.time(),
            "metrics_at": at,  # when the newest figures were taken: the chart's clock
            "distributors": [_described(m) for m in distributors],
            "nodes": [_described(m) for m in nodes],
            "metrics_by_process": parts,
        }

    def queues(self, limit: int) -> list[View]:
        distributors, _ = self._members()
        out = []
        for member in distributors:
            stats = _described(member)
            pending = stats.get("pending_jobs") or []
            stats["pending_jobs"] = [job_view(job) for job in pending[:limit]]
            stats["in_flight_jobs"] = []
            stats["in_flight_unlisted"] = True
            out.append(stats)
        return out

    def job(self, job_id: str) -> View | None:
        distributors, _ = self._members()
        for member in distributors:
            for job in member.stats.get("pending_jobs") or []:
                if job.get("id") == job_id:
                    return job_view(job, where="pending", distributor=member.address)
        return None


def _described(member: Member) -> dict[str, Any]:
    """A member's stats with where it runs (the registry entry's own fields win)."""
    stats = dict(member.stats)
    stats.update(host=member.host, pid=member.pid, iid=member.iid)
    stats.setdefault("address", member.address)
    stats.pop("metrics", None)
    return stats


GONE_KEPT = 256  # departed processes kept apart (they may come back: the registry is a hint)


def _went_down(before: dict[str, Any], after: dict[str, Any]) -> bool:
    """Did any counter of one process go down (it restarted, or reset its figures)?"""
    old, new = before.get("counters") or {}, after.get("counters") or {}
    for event in EVENTS:
        mine = new.get(event) or {}
        for name, count in (old.get(event) or {}).items():
            if int(mine.get(name, 0)) < int(count):
                return True
    return False


class ProcessTotals:
    """Per-process metrics snapshots, summed so that no counter ever goes down.

    A process missing from a registry read keeps its last snapshot in the sum (it may be a
    missed read: if it comes back, its newer figures replace the kept ones, never add to
    them). Past `GONE_KEPT` departed processes, the oldest are folded into one running total.
    A process whose counters went down (a restart under the same id) keeps its old totals too.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: dict[str, dict[str, Any]] = {}
        self._gone: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._folded = JobMetrics()

    def update(self, current: dict[str, dict[str, Any]]) -> tuple[list[dict[str, Any]], float]:
        """Take this read's snapshots; return every part of the sum, and the newest time."""
        with self._lock:
            for key in list(self._live):
                if key not in current:
                    self._gone[key] = self._live.pop(key)
            for key, snap in current.items():
                before = self._live.get(key) or self._gone.pop(key, None)
                if before is not None and _went_down(before, snap):
                    self._folded.merge(before)
                self._live[key] = snap
            while len(self._gone) > GONE_KEPT:
                self._folded.merge(self._gone.popitem(last=False)[1])
            at = max((float(s.get("at", 0.0) or 0.0) for s in current.values()), default=0.0)
            parts = [self._folded.snapshot(), *self._gone.values(), *self._live.values()]
            return parts, at
