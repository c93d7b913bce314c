"""Where the dashboard's figures come from: one small interface, two implementations.

- `LocalSource(reactor)`: mounted in a single-process app, it reads the reactor's own
  distributors and nodes (on the reactor's loop, through `Reactor.call`) and their storages.
- `RegistrySource` (registry.py): across processes, what every distributor and node publishes
  with its discovery heartbeat.

Failed jobs and a job's stored record come from Redis node storage (`RedisMonitor`) when the
dashboard is given a `redis_url`, else from the reactor's own storages (LocalSource).
Every method is synchronous and bounded (`limit`); the app calls them in a worker thread.
"""

from __future__ import annotations

import os
import socket
import time
from typing import TYPE_CHECKING, Any, Protocol

from jobreactor import joblists as listing
from jobreactor.dashboard.readers import SCHEDULED_MAX, LocalLists
from jobreactor.definitions import JobDefinition
from jobreactor.job import JobStatus
from jobreactor.joblists import MonitorIndex, Query, job_view
from jobreactor.metrics import process_metrics

if TYPE_CHECKING:
    from jobreactor.distributor import Distributor
    from jobreactor.monitor import RedisMonitor
    from jobreactor.node import Node
    from jobreactor.reactor import Reactor

Snapshot = dict[str, Any]
View = dict[str, Any]
Chain = dict[str, list[str]]


class Source(Protocol):
    """What every dashboard page reads."""

    label: str

    def snapshot(self) -> Snapshot:
        """{"distributors": [...], "nodes": [...], "metrics": JobMetrics.snapshot()}."""
        ...

    def queues(self, limit: int) -> list[View]:
        """Per distributor: address, counts, the first `limit` pending and in-flight jobs."""
        ...

    def scheduled(self, limit: int) -> list[View]:
        """Jobs waiting on node timers (delayed, periodic, retries), soonest first."""
        ...

    def list_jobs(self, query: Query) -> dict[str, Any] | None:
        """One page of pending / retrying / scheduled / failed jobs (dashboard/listing.py);
        None: this source doesn't see that kind of job."""
        ...

    def job(self, job_id: str) -> View | None:
        """One job wherever it is: pending, in flight, held by a node, or stored."""
        ...

    def retry(self, job_id: str) -> bool: ...

    def delete(self, job_id: str) -> bool: ...

    def cancel(self, job_id: str) -> bool | None:
        """None: this source cannot cancel (it sees no distributor it could ask)."""
        ...

    @property
    def can_cancel(self) -> bool:
        """Whether `cancel` can work here (the pages offer Cancel only then)."""
        ...

    def control_node(self, name: str, op: str, who: str) -> tuple[str | None, str]:
        """quiet / resume / drain node `name`: (its state after or None, an error or "")."""
        ...

    def chain(self, name: str) -> Chain | None:
        """The job's steps and errbacks by name, if this source knows its definition."""
        ...


def chain_of(definition: JobDefinition | None) -> Chain | None:
    if definition is None:
        return None
    body = getattr(definition.fn, "__qualname__", definition.name)
    return {
        "steps": [body, *(name for name, _ in definition.callbacks)],
        "errbacks": [name for name, _ in definition.errbacks],
    }


def _here(stats: dict[str, Any]) -> dict[str, Any]:
    stats.setdefault("host", socket.gethostname())
    stats.setdefault("pid", os.getpid())
    return stats


class LocalSource:
    """The reactor this app runs: its distributors, nodes and their storages."""

    def __init__(self, reactor: Reactor) -> None:
        self.reactor = reactor
        self.label = "this process"
        self._lists = LocalLists(self)

    def _distributors(self) -> list[Distributor]:
        return list(self.reactor.members.distributors)

    def _nodes(self) -> list[Node]:
        return list(self.reactor.members.nodes)

    def _on_loop(self, fn: Any) -> Any:
        async def run() -> Any:
            return fn()

        return self.reactor.call(run, timeout=10.0)

    def snapshot(self) -> Snapshot:
        def read() -> Snapshot:
            return {
                "time": time.time(),
                "distributors": [_here(d.stats()) for d in self._distributors()],
                "nodes": [_here(n.stats()) for n in self._nodes()],
                "metrics": process_metrics().snapshot(),
            }

        return dict(self._on_loop(read))

    def queues(self, limit: int) -> list[View]:
        def read() -> list[View]:
            return [
                {
                    **_here(d.stats()),
                    "pending_jobs": [job_view(j) for j in d.dispatcher.peek(limit)],
                    "in_flight_jobs": [
                        job_view(e.job, node=e.node, acked=e.acked) for e in d.tracker.peek(limit)
                    ],
                }
                for d in self._distributors()
            ]

        return list(self._on_loop(read))

    def scheduled(self, limit: int) -> list[View]:
        def read() -> list[View]:
            out: list[View] = []
            for node in self._nodes():
                for job_id in node.scheduled_ids(limit):
                    record = node.peek_record(job_id)
                    if record is not None:
                        out.append(job_view(record, node=node.name))
            out.sort(key=lambda view: view["run_at_ts"])
            return out[:limit]

        return list(self._on_loop(read))

    def list_jobs(self, query: Query) -> dict[str, Any] | None:
        return self._lists.list_jobs(query)

    @property
    def can_cancel(self) -> bool:
        return bool(self._distributors())

    def control_node(self, name: str, op: str, who: str) -> tuple[str | None, str]:
        from jobreactor.housekeeping import control_node

        async def ask() -> tuple[str | None, str]:
            return await control_node(self.reactor.members, name, op, who)

        answer: tuple[str | None, str] = self.reactor.call(ask, timeout=30.0)
        return answer

    def job(self, job_id: str) -> View | None:
        def live() -> View | None:
            for d in self._distributors():
                pending = d.dispatcher.get(job_id)
                if pending is not None:
                    return job_view(pending, where="pending", distributor=d.address)
                entry = d.tracker.get(job_id)
                if entry is not None:
                    return job_view(entry.job, where="in flight", node=entry.node)
            for node in self._nodes():
                record = node.peek_record(job_id)
                if record is not None:
                    return job_view(record, where="held by node", node=node.name)
            return None

        found: View | None = self._on_loop(live)
        if found is not None:
            return found

        async def stored() -> View | None:
            for storage in self.reactor.members.storages():
                for node in await storage.nodes():
                    record = await storage.load(node, job_id)
                    if record is not None:
                        return job_view(record, where="stored", node=node, stored=True)
            return None

        result: View | None = self.reactor.call(stored, timeout=10.0)
        return result

    def retry(self, job_id: str) -> bool:
        """A failed job runs again (JR.retry); a retrying one runs now ("retry now")."""

        def now() -> bool:
            return any(node.control.retry_now(job_id) for node in self._nodes())

        return bool(self._on_loop(now)) or self.reactor.retry(job_id)

    def delete(self, job_id: str) -> bool:
        async def destroy() -> bool:
            for storage in self.reactor.members.storages():
                for node in await storage.nodes():
                    record = await storage.load(node, job_id)
                    if record is not None and record.is_finished:
                        await storage.destroy_many(node, [job_id])
                        return True
            return False

        done: bool = self.reactor.call(destroy, timeout=10.0)
        return done

    def cancel(self, job_id: str) -> bool | None:
        if not self._distributors():
            return None
        return self.reactor.cancel(job_id)

    def chain(self, name: str) -> Chain | None:
        for registry in [*(n.registry for n in self._nodes()), self.reactor.registry]:
            found = chain_of(registry.get(name))
            if found is not None:
                return found
        return None


class StoredJobs:
    """Failed jobs and stored records from Redis node storage (RedisMonitor), bounded scans."""

    SCAN_BUDGET = 20_000  # records read at most by a scheduled-jobs page
    SCAN_TIME_S = 0.5  # and for this long at most (in the worker thread, never on a loop)

    def __init__(self, monitor: RedisMonitor) -> None:
        self.monitor = monitor
        self.index = MonitorIndex(monitor)

    def list_jobs(self, query: Query) -> dict[str, Any] | None:
        """Failed and retrying jobs from the indexes; scheduled ones by a bounded scan."""
        if query.status == "failed":
            return listing.indexed(self.index, "failed", query)
        if query.status == "retrying":
            return listing.indexed(self.index, "retrying", query)
        if query.status == "scheduled":
            views, complete = self._scan_scheduled(SCHEDULED_MAX)
            return listing.page_of(query, views, partial=not complete)
        return None

    def job(self, job_id: str) -> View | None:
        node = self.monitor.node_of(job_id)
        record = None if node is None else self.monitor.load(job_id)
        return None if record is None else job_view(record, where="stored", node=node, stored=True)

    def retry(self, job_id: str) -> bool:
        return self.monitor.retry(job_id)

    def delete(self, job_id: str) -> bool:
        return self.monitor.destroy(job_id)

    def scheduled(self, limit: int) -> list[View]:
        """Stored jobs due later (delayed, periodic), for nodes this process can't see."""
        return self._scan_scheduled(limit)[0]

    def _scan_scheduled(self, limit: int) -> tuple[list[View], bool]:
        """(what a bounded scan found, whether it read every record)."""
        now = time.time()
        deadline = time.monotonic() + self.SCAN_TIME_S
        out: list[View] = []
        complete = True
        found = self.monitor.iter_jobs(budget=self.SCAN_BUDGET)
        for read, (node, record) in enumerate(found, 1):
            if time.monotonic() > deadline or read >= self.SCAN_BUDGET:
                complete = False
                break
            status = record.get("status", JobStatus.NEW.value)
            due = float(record.get("run_at_ts") or 0.0)
            if status in (JobStatus.NEW.value, JobStatus.QUEUED.value) and due > now:
                # (a retry due later has status "error": the retrying list has it)
                out.append(job_view(record, node=node, stored=True))
                if len(out) >= limit:
                    complete = False
                    break
        out.sort(key=lambda view: view["run_at_ts"])
        return out, complete


class NoLiveSource:
    """`jobreactor dashboard --redis-url` alone: no live process in sight, only Redis storage."""

    label = "redis node storage"

    def snapshot(self) -> Snapshot:
        return {"time": time.time(), "distributors": [], "nodes": [], "metrics": {}}

    def queues(self, limit: int) -> list[View]:
        return []

    def scheduled(self, limit: int) -> list[View]:
        return []

    def list_jobs(self, query: Query) -> dict[str, Any] | None:
        return None

    @property
    def can_cancel(self) -> bool:
        return False

    def control_node(self, name: str, op: str, who: str) -> tuple[str | None, str]:
        return None, "this dashboard sees no distributor to reach the node through"

    def job(self, job_id: str) -> View | None:
        return None

    def retry(self, job_id: str) -> bool:
        return False

    def delete(self, job_id: str) -> bool:
        return False

    def cancel(self, job_id: str) -> bool | None:
        return None

    def chain(self, name: str) -> Chain | None:
        return None
