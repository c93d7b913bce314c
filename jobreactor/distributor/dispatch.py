"""The dispatch policy, pure: pending jobs, node credits, and who gets which job.

Rules (docs/semantics.md §2; docs/decisions.md "Dispatch"):
- Pending jobs leave by `priority` (lower first), then FIFO.
- A node takes a job only while it has credit; among eligible nodes the one with the most free
  credit wins (least loaded; the first connected on a tie), not the first connected. Nodes sit
  in heaps by free credit (one per set of declared names, one over all), so the choice costs
  O(log nodes), not a scan: 1,000 connected nodes cost what 10 do.
- Jobs go to nodes that declared the job name; if no connected node declared it, any node may
  take it, so an unknown name fails fast with NoSuchJob there instead of waiting.
- `not_node` is always honoured. `node` is a preference, unless `strict_node`
  (always_use_specified_node), in which case the job waits for that node.
The shell calls these methods on events and sends whatever `assign()` returns; nothing here
awaits or touches a socket.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field

from jobreactor.job import JobRecord

BucketKey = tuple[str, str | None, str | None]  # (job name, node, not_node)


@dataclass(slots=True)
class NodeSlot:
    key: int
    name: str
    job_names: frozenset[str]
    credits: int


# A node heap entry: (-credits when pushed, key). Most credit first, then the first connected.
_NodeEntry = tuple[int, int]


class _NodeHeap:
    """Nodes by free credit, with lazy invalidation. A grant pushes a fresh entry; a job sent
    pushes nothing: the node's old entry now claims too much credit, and is corrected when it
    reaches the top (entries claiming too little are older than a grant: dropped). Compacted
    when stale entries pile up."""

    __slots__ = ("heap", "members")

    def __init__(self) -> None:
        self.heap: list[_NodeEntry] = []
        self.members: dict[int, NodeSlot] = {}

    def push(self, slot: NodeSlot) -> None:
        if slot.credits > 0:
            heapq.heappush(self.heap, (-slot.credits, slot.key))
            if len(self.heap) > 4 * len(self.members) + 64:
                self.compact()

    def compact(self) -> None:
        self.heap = [(-s.credits, s.key) for s in self.members.values() if s.credits > 0]
        heapq.heapify(self.heap)

    def _live(self, entry: _NodeEntry) -> NodeSlot | None:
        """The entry's node if the entry is exact; otherwise pop it (re-pushed if it was
        claiming too much) and return None."""
        slot = self.members.get(entry[1])
        if slot is not None and -entry[0] == slot.credits:
            return slot
        heapq.heappop(self.heap)
        if slot is not None and 0 < slot.credits < -entry[0]:
            heapq.heappush(self.heap, (-slot.credits, slot.key))
        return None

    def best(self, not_node: str | None) -> NodeSlot | None:
        """The node with the most credit whose name isn't `not_node`."""
        heap = self.heap
        while heap:
            slot = self._live(heap[0])
            if slot is None:
                continue
            if slot.name != not_node:
                return slot
            break
        else:
            return None
        # The best is the excluded node: look past it (and past its namesakes), put them back.
        parked = [heapq.heappop(heap)]
        found: NodeSlot | None = None
        while heap:
            slot = self._live(heap[0])
            if slot is None:
                continue
            if slot.name != not_node:
                found = slot
                break
            parked.append(heapq.heappop(heap))
        for entry in parked:
            heapq.heappush(heap, entry)
        return found


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
        self._by_name: dict[str, list[NodeSlot]] = {}
        # Nodes grouped by the set of names they declared (usually one set for all), a heap
        # each, and which groups know each job name; plus one heap over every node.
        self._groups: dict[frozenset[str], _NodeHeap] = {}
        self._knowers: dict[str, list[_NodeHeap]] = {}
        self._everyone = _NodeHeap()
        self._everyone_kept = False

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
        """The first `limit` pending jobs in dispatch order (priority, then FIFO), for
        dashboards and registry stats: a walk down the buckets' heaps, O(limit · log), no sort
        of the whole queue (entries removed since they were pushed are skipped)."""
        walk: list[tuple[int, int, int, int, list[_Entry]]] = [
            (*bucket.heap[0][:2], id(bucket.heap), 0, bucket.heap)
            for bucket in self._buckets.values()
            if bucket.heap
        ]
        heapq.heapify(walk)
        out: list[JobRecord] = []
        pending = self._pending
        while walk and len(out) < limit:
            _, _, key, i, heap = heapq.heappop(walk)
            entry = heap[i]
            if pending.get(entry[2].id) is entry:
                out.append(entry[2])
            for child in (2 * i + 1, 2 * i + 2):
                if child < len(heap):
                    heapq.heappush(walk, (*heap[child][:2], key, child, heap))
        return out

    def entries(self) -> list[tuple[int, int, JobRecord]]:
        """Every pending (priority, seq, job), unordered: a copy to sort off the loop."""
        return list(self._pending.values())

    def pending_jobs(self) -> Iterator[JobRecord]:
        """Every pending job, in arrival order (backlog.py reads them for metrics/health)."""
        return (entry[2] for entry in self._pending.values())

    def drain(self) -> list[JobRecord]:
        """Remove and return every pending job, in dispatch order."""
        entries = sorted(self._pending.values(), key=lambda e: (e[0], e[1]))
        self._pending.clear()
        self._buckets.clear()
        return [entry[2] for entry in entries]

    def add_node(self, key: int, name: str, job_names: list[str], credits: int) -> None:
        self.remove_node(key)
        slot = NodeSlot(key, name, frozenset(job_names), max(0, credits))
        self._nodes[key] = slot
        self._by_name.setdefault(name, []).append(slot)
        group = self._groups.get(slot.job_names)
        if group is None:
            group = self._groups[slot.job_names] = _NodeHeap()
            for job_name in slot.job_names:
                self._knowers.setdefault(job_name, []).append(group)
        group.members[key] = slot
        self._everyone.members[key] = slot
        self._granted(slot)

    def remove_node(self, key: int) -> None:
        slot = self._nodes.pop(key, None)
        if slot is None:
            return
        namesakes = self._by_name[slot.name]
        namesakes.remove(slot)
        if not namesakes:
            del self._by_name[slot.name]
        del self._everyone.members[key]
        group = self._groups[slot.job_names]
        del group.members[key]
        if not group.members:
            del self._groups[slot.job_names]
            for job_name in slot.job_names:
                groups = self._knowers[job_name]
                groups.remove(group)
                if not groups:
                    del self._knowers[job_name]

    def grant(self, key: int, credits: int) -> None:
        slot = self._nodes.get(key)
        if slot is not None:
            slot.credits += credits
            self._granted(slot)

    def set_credits(self, key: int, credits: int) -> None:
        slot = self._nodes.get(key)
        if slot is not None:
            slot.credits = credits
            self._granted(slot)

    def _granted(self, slot: NodeSlot) -> None:
        """Credit went up (or was set): a fresh heap entry (a drop needs none, see _NodeHeap)."""
        self._groups[slot.job_names].push(slot)
        if self._everyone_kept:
            self._everyone.push(slot)

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
        if node is not None and node != not_node:
            # The app named this node: it is eligible whatever it declared, and preferred.
            preferred: NodeSlot | None = None
            for slot in self._by_name.get(node, ()):
                if slot.credits > 0 and (preferred is None or slot.credits > preferred.credits):
                    preferred = slot
            if preferred is not None:
                return preferred
        if node is not None and self._strict_node:
            return None
        groups = self._knowers.get(name)
        if groups is None:  # nobody declared it: anyone may take it (and fail fast, D13)
            if not self._everyone_kept:
                # Kept from the first such job on; until then credit changes skip it.
                self._everyone_kept = True
                self._everyone.compact()
            return self._everyone.best(not_node)
        best: NodeSlot | None = None
        for group in groups:
            found = group.best(not_node)
            if found is not None and (
                best is None or (found.credits, -found.key) > (best.credits, -best.key)
            ):
                best = found
        return best
