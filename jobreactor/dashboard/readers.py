"""The job lists of each source (listing.py's answer shape), kept apart from sources.py.

- `LocalLists(reactor)`: pending jobs of this process's distributors in dispatch order; failed
  and retrying jobs from its storages' indexes; scheduled jobs from its nodes' timers.
(`joblists.MonitorIndex` reads failed and retrying jobs from Redis node storage.)

The reactor's loop only ever copies (a page of a heap walk, a list of entries, an index
page); sorting, filtering and rendering happen in the dashboard's worker thread.
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any, Final

from jobreactor import joblists as listing
from jobreactor.job import JobStatus
from jobreactor.joblists import Query, View, job_view
from jobreactor.storage.status_index import IndexKind, StatusIndexReader

if TYPE_CHECKING:
    from jobreactor.dashboard.sources import LocalSource

WALK_MAX: Final = 2_000  # pending jobs read by a heap walk on the loop; deeper pages copy
SCHEDULED_MAX: Final = 5_000  # timers listed at most (a search looks at these)


_view = job_view
_dispatch_order = operator.itemgetter(0, 1)  # (priority, seq) of a pending entry


class LocalIndex:
    """listing.IndexReader over the storages of a reactor (each call one trip to its loop)."""

    def __init__(self, source: LocalSource) -> None:
        self.source = source
        self._owner: dict[str, StatusIndexReader] = {}

    def nodes(self) -> list[str]:
        async def read() -> dict[str, StatusIndexReader]:
            owners: dict[str, StatusIndexReader] = {}
            for storage in self.source.reactor.members.storages():
                if isinstance(storage, StatusIndexReader):
                    for node in await storage.nodes():
                        owners.setdefault(node, storage)
            return owners

        self._owner = self.source.reactor.call(read, timeout=10.0)
        return sorted(self._owner)

    def _storage(self, node: str) -> StatusIndexReader | None:
        if node not in self._owner:
            self.nodes()
        return self._owner.get(node)

    def index_count(self, node: str, kind: IndexKind) -> int:
        storage = self._storage(node)
        if storage is None:
            return 0

        async def read() -> int:
            return await storage.index_count(node, kind)

        return int(self.source.reactor.call(read, timeout=10.0))

    def index_page(
        self, node: str, kind: IndexKind, start: int, count: int
    ) -> list[tuple[str, float]]:
        storage = self._storage(node)
        if storage is None:
            return []

        async def read() -> list[tuple[str, float]]:
            return await storage.index_page(node, kind, start, count)

        return list(self.source.reactor.call(read, timeout=10.0))

    def views(self, node: str, job_ids: list[str]) -> list[View]:
        storage: Any = self._storage(node)
        if storage is None:
            return []

        async def read() -> list[Any]:
            return [await storage.load(node, job_id) for job_id in job_ids]

        records = self.source.reactor.call(read, timeout=10.0)
        return [_view(r, node=node, stored=True) for r in records if r is not None]


class LocalLists:
    """`list_jobs` of LocalSource."""

    def __init__(self, source: LocalSource) -> None:
        self.source = source
        self.index = LocalIndex(source)

    def list_jobs(self, query: Query) -> dict[str, Any]:
        if query.status in ("failed", "retrying"):
            kind: IndexKind = "failed" if query.status == "failed" else "retrying"
            return listing.indexed(self.index, kind, query)
        if query.status == "pending":
            return self.pending(query)
        return self.scheduled(query)

    def pending(self, query: Query) -> dict[str, Any]:
        """Per distributor (in order), its jobs in dispatch order; totals per distributor."""
        need = query.start + query.per_page
        walk = not query.searching and need <= WALK_MAX

        def read() -> list[tuple[str, int, Any]]:
            out = []
            for d in self.source._distributors():
                jobs = d.dispatcher.peek(need) if walk else d.dispatcher.entries()
                out.append((d.address, len(d.dispatcher), jobs))
            return out

        found = self.source._on_loop(read)
        totals = {address: count for address, count, _ in found}
        ordered: list[tuple[str, Any]] = []
        for address, _, jobs in found:
            if not walk:
                jobs = [entry[2] for entry in sorted(jobs, key=_dispatch_order)]
            ordered += [(address, job) for job in jobs]
        total = sum(totals.values())
        if query.searching:  # matched on the records; views of this page only (to_dict costs)
            ordered = [
                (a, j) for a, j in ordered if query.matches_fields(j.id, j.name, None, j.args)
            ]
            total = len(ordered)
        page = ordered[query.start : query.start + query.per_page]
        jobs = [_view(job, where="pending", distributor=address) for address, job in page]
        return listing.answer(query, total, jobs, by_distributor=totals)

    def scheduled(self, query: Query) -> dict[str, Any]:
        """Delayed and periodic jobs on this process's nodes' timers, soonest first (retries
        have their own list); periodic ones with their last and next run."""

        def read() -> list[View]:
            out: list[View] = []
            for node in self.source._nodes():
                for job_id in node.scheduled_ids(SCHEDULED_MAX):
                    record = node.peek_record(job_id)
                    if record is not None and record.status != JobStatus.ERROR:
                        out.append(_view(record, node=node.name, where="scheduled"))
            return out

        views: list[View] = self.source._on_loop(read)
        views.sort(key=lambda view: view["run_at_ts"])
        return listing.page_of(query, views)
