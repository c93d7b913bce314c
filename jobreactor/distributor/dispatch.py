"""The dispatch policy, pure: pending jobs, node credits, and who gets which job.

Rules (SPEC 1.5.2 generalised by DESIGN "Dispatch and flow control"):
- Pending jobs leave by `priority` (lower first), then FIFO (SPEC D11).
- A node takes a job only while it has credit; among eligible nodes the one with the most free
  credit wins (least loaded), not the first connected.
- Jobs go to nodes that declared the job name; if no connected node declared it, any node may
  take it, so an unknown name fails fast with NoSuchJob there (SPEC D13) instead of waiting.
- `not_node` is always honoured. `node` is a preference, unless `strict_node`
  (always_use_specified_node), in which case the job waits for that node.
The shell calls these methods on events and sends whatever `assign()` returns; nothing here
awaits or touches a socket (practice 3).
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field

from jobreactor.job import JobRecord

BucketKey = tuple[str, str | None, str | None]  # (job name, node, not_node)


@dataclass(slots=True)
class NodeSlot:
    key: int
    name: str
    job_names: frozenset[str]
    credits: int


# A heap entry: (priority, seq, job). seq is unique, so jobs themselves are never compared;
# tuples compare in C, which a dataclass __lt__ did not (3 % of the whole path).
_Entry = tuple[int, int, JobRecord]


@dataclass(slots=True)
class _Bucket:
    key: BucketKey
    heap: list[_Entry] = field(default_factory=list)

    def head(self, pending: dict[str, _Entry]) -> _Entry | None:
        """The best live entry; entries removed or replaced since they were pushed are skipped."""
        heap = self.heap
        while heap and pending.get(heap[0][2].id) is not heap[0]:
            heapq.heappop(heap)
        return heap[0] if heap else None


class Dispatcher:
    """Pending queue + credits. `assign()` returns `(node key, job)` pairs to send now."""

    def __init__(self, *, strict_node: bool = False) -> None:
        self._strict_node = strict_node
        self._seq = itertools.count()
        self._buckets: dict[BucketKey, _Bucket] = {}
        self._pending: dict[str, _Entry] = {}
        self._nodes: dict[int, NodeSlot] = {}
        self._knowers: dict[str, list[NodeSlot]] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._pending

    @property
    def nodes(self) -> list[NodeSlot]:
        return list(self._nodes.values())

    def next_seq(self) -> int:
        return next(self._seq)

    # --- events -----------------------------------------------------------------------------

    def add(self, job: JobRecord, seq: int | None = None) -> None:
        """Queue `job`; `seq` keeps a requeued job's original FIFO place."""
        entry = (job.priority, next(self._seq) if seq is None else seq, job)
        key = (job.name, job.node, job.not_node)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(key)
        heapq.heappush(bucket.heap, entry)
        self._pending[job.id] = entry

    def remove(self, job_id: str) -> tuple[JobRecord, int] | None:
        """Take a pending job out (cancel, or back to the node that still holds it)."""
        entry = self._pending.pop(job_id, None)
        if entry is None:
            return None
        return entry[2], entry[1]

    def get(self, job_id: str) -> JobRecord | None:
        entry = self._pending.get(job_id)
        return None if entry is None else entry[2]

    def peek(self, limit: int) -> list[JobRecord]:
        """Up to `limit` pending jobs, the longest queued first (dashboards). O(limit): not
        the exact dispatch order, which would mean sorting millions on the loop."""
        return [entry[2] for entry in itertools.islice(self._pending.values(), limit)]

    def drain(self) -> list[JobRecord]:
        """Remove and return every pending job, in dispatch order."""
        entries = sorted(self._pending.values(), key=lambda e: (e[0], e[1]))
        self._pending.clear()
        self._buckets.clear()
        return [entry[2] for entry in entries]

    def add_node(self, key: int, name: str, job_names: list[str], credits: int) -> None:
        self._nodes[key] = NodeSlot(key, name, frozenset(job_names), max(0, credits))
        self._reindex()

    def remove_node(self, key: int) -> None:
        if self._nodes.pop(key, None) is not None:
            self._reindex()

    def grant(self, key: int, credits: int) -> None:
        slot = self._nodes.get(key)
        if slot is not None:
            slot.credits += credits

    def set_credits(self, key: int, credits: int) -> None:
        slot = self._nodes.get(key)
        if slot is not None:
            slot.credits = credits

    # --- the decision -----------------------------------------------------------------------

    def assign(self) -> list[tuple[int, JobRecord, int]]:
        """Every (node key, job, seq) that can go out now, best job first."""
        out: list[tuple[int, JobRecord, int]] = []
        if not self._pending:
            return out
        pending = self._pending
        while True:
            best: tuple[_Entry, _Bucket, NodeSlot] | None = None
            for bucket in list(self._buckets.values()):
                head = bucket.head(pending)
                if head is None:
                    del self._buckets[bucket.key]
                    continue
                if best is not None and head[:2] >= best[0][:2]:
                    continue
                slot = self._choose(bucket.key)
                if slot is not None:
                    best = (head, bucket, slot)
            if best is None:
                return out
            entry, bucket, slot = best
            heapq.heappop(bucket.heap)
            job = entry[2]
            del pending[job.id]
            slot.credits -= 1
            out.append((slot.key, job, entry[1]))
            if not pending:
                return out

    def _choose(self, key: BucketKey) -> NodeSlot | None:
        name, node, not_node = key
        knowers = self._knowers.get(name) or list(self._nodes.values())
        if node is not None and not any(slot.name == node for slot in knowers):
            # The app named this node explicitly: it is eligible whatever it declared.
            knowers = knowers + [s for s in self._nodes.values() if s.name == node]
        best: NodeSlot | None = None
        preferred: NodeSlot | None = None
        for slot in knowers:
            if slot.credits <= 0 or slot.name == not_node:
                continue
            if node is not None and slot.name == node:
                if preferred is None or slot.credits > preferred.credits:
                    preferred = slot
            elif best is None or slot.credits > best.credits:
                best = slot
        if preferred is not None:
            return preferred
        if node is not None and self._strict_node:
            return None
        return best

    def _reindex(self) -> None:
        knowers: dict[str, list[NodeSlot]] = {}
        for slot in self._nodes.values():
            for job_name in slot.job_names:
                knowers.setdefault(job_name, []).append(slot)
        self._knowers = knowers
