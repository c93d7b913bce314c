"""The dispatch policy, pure: pending jobs, node credits, and who gets which job.

Rules (docs/semantics.md §2; docs/decisions.md "Dispatch"):
- Pending jobs leave by `priority` (lower first), then FIFO.
- A node takes a job only while it has credit; among eligible nodes the one with the most free
  credit wins (least loaded; the first connected on a tie), not the first connected. Nodes sit
  in heaps by free credit (one per set of declared names, one over all), so the choice costs
  O(log nodes), not a scan: 1,000 connected nodes cost what 10 do.
- Pending jobs sit in buckets by (name, node, not_node); a heap orders the buckets by their
  best job, and a bucket no node with credit may serve waits aside, indexed by what would
  unblock it, so a job costs O(log buckets) and a grant O(the node's names): 100k distinct
  names cost what one does (issue 18).
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
    window: int = 0  # the most free credit counted for it (0: no bound)


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
        if slot is not None and 0 < slot.credits < -entry[0]:
            # Every job sent leaves its node's entry claiming too much: one heap operation.
            heapq.heapreplace(self.heap, (-slot.credits, slot.key))
        else:
            heapq.heappop(self.heap)
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
    # The (priority, seq) under which it sits in the dispatcher's ready heap; None while it is
    # blocked (no eligible node has credit) or not there yet.
    queued: tuple[int, int] | None = None

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
        # Buckets by their best job: the next job out is found in O(log buckets), not by a scan
        # of every (name, node, not_node) bucket per job (8k names took 14.6 s; issue 18).
        self._ready: list[tuple[int, int, BucketKey]] = []
        # Buckets no node with credit may serve, by what unblocks them: a grant to a node that
        # declared the name (or to the named node); names nobody declared wait in `_anyone`.
        self._blocked: dict[str, dict[BucketKey, _Bucket]] = {}
        self._blocked_for_node: dict[str, dict[BucketKey, _Bucket]] = {}
        self._blocked_anyone: dict[BucketKey, _Bucket] = {}
        self._credit = 0  # free credit over all nodes: none, nothing to look at
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
            self._queue(bucket, entry)
        elif bucket.queued is not None and entry[:2] < bucket.queued:
            self._queue(bucket, entry)  # a better head: the old ready entry goes stale
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
        self._ready.clear()
        self._blocked.clear()
        self._blocked_for_node.clear()
        self._blocked_anyone.clear()
        return [entry[2] for entry in entries]

    def add_node(
        self, key: int, name: str, job_names: list[str], credits: int, window: int = 0
    ) -> None:
        self.remove_node(key)
        credits = max(0, credits)
        slot = NodeSlot(key, name, frozenset(job_names), credits, window)
        self._nodes[key] = slot
        self._by_name.setdefault(name, []).append(slot)
        group = self._groups.get(slot.job_names)
        if group is None:
            group = self._groups[slot.job_names] = _NodeHeap()
            for job_name in slot.job_names:
                self._knowers.setdefault(job_name, []).append(group)
        group.members[key] = slot
        self._everyone.members[key] = slot
        self._credit += credits
        self._granted(slot)

    def remove_node(self, key: int) -> None:
        slot = self._nodes.pop(key, None)
        if slot is None:
            return
        self._credit -= slot.credits
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
                    self._unblock(self._blocked.pop(job_name, {}))  # now anyone may take it

    def grant(self, key: int, credits: int) -> bool:
        """Add free credit; False if nothing changed (no credit, or the window was full)."""
        slot = self._nodes.get(key)
        return slot is not None and self.set_credits(key, slot.credits + credits)

    def set_credits(self, key: int, credits: int) -> bool:
        """Set a node's free credit (clamped to its window); False if nothing changed."""
        slot = self._nodes.get(key)
        if slot is None:
            return False
        if slot.window and credits > slot.window:  # more than it can ever take
            credits = slot.window
        if credits == slot.credits:
            return False  # a flood of acks granting nothing new costs no dispatch round
        self._credit += credits - slot.credits
        slot.credits = credits
        self._granted(slot)
        return True

    def _granted(self, slot: NodeSlot) -> None:
        """Credit went up (or was set): a fresh heap entry (a drop needs none, see _NodeHeap),
        and the buckets this node may serve are looked at again: O(its names)."""
        self._groups[slot.job_names].push(slot)
        if self._everyone_kept:
            self._everyone.push(slot)
        if slot.credits <= 0:
            return
        if self._blocked:
            for job_name in slot.job_names:
                if job_name in self._blocked:
                    self._unblock(self._blocked.pop(job_name))
        if self._blocked_for_node:
            self._unblock(self._blocked_for_node.pop(slot.name, {}))
        if self._blocked_anyone:
            anyone, self._blocked_anyone = self._blocked_anyone, {}
            self._unblock(anyone)

    # --- the ready heap ---------------------------------------------------------------------

    def _queue(self, bucket: _Bucket, entry: _Entry) -> None:
        bucket.queued = (entry[0], entry[1])
        heapq.heappush(self._ready, (entry[0], entry[1], bucket.key))

    def _block(self, bucket: _Bucket) -> None:
        bucket.queued = None
        name, node, _ = bucket.key
        if name in self._knowers:
            self._blocked.setdefault(name, {})[bucket.key] = bucket
        else:
            self._blocked_anyone[bucket.key] = bucket
        if node is not None:
            self._blocked_for_node.setdefault(node, {})[bucket.key] = bucket

    def _unblock(self, buckets: dict[BucketKey, _Bucket]) -> None:
        for bucket in buckets.values():
            if bucket.queued is not None or self._buckets.get(bucket.key) is not bucket:
                continue  # already back (it sat in two indexes), or gone
            head = bucket.head(self._pending)
            if head is None:
                del self._buckets[bucket.key]
            else:
                self._queue(bucket, head)

    # --- the decision -----------------------------------------------------------------------

    def assign(self) -> list[tuple[int, JobRecord, int]]:
        """Every (node key, job, seq) that can go out now, best job first.

        The best bucket comes off the ready heap; one no node with credit may serve is set
        aside until a grant could change that, so a turn costs O(jobs sent × log buckets).
        While a bucket stays the best, its next job is taken without touching the heap.
        """
        out: list[tuple[int, JobRecord, int]] = []
        pending, ready = self._pending, self._ready
        head: _Entry | None = None  # carried over: the best bucket's next job
        bucket: _Bucket | None = None
        while pending and self._credit > 0:
            if head is None or bucket is None:
                bucket, head = self._next_ready()
                if bucket is None or head is None:
                    break
            slot = self._choose(bucket.key)
            if slot is None:
                self._block(bucket)
                head = None
                continue
            heapq.heappop(bucket.heap)
            job = head[2]
            del pending[job.id]
            slot.credits -= 1
            self._credit -= 1
            out.append((slot.key, job, head[1]))
            head = bucket.head(pending)
            if head is None:
                del self._buckets[bucket.key]
            elif ready and ready[0][:2] < head[:2]:
                self._queue(bucket, head)  # another bucket is better now
                head = None
            else:
                bucket.queued = (head[0], head[1])
        if head is not None and bucket is not None:  # carried but not sent: back in the heap
            self._queue(bucket, head)
        return out

    def _next_ready(self) -> tuple[_Bucket | None, _Entry | None]:
        """The best queued bucket and its head, dropping stale heap entries on the way."""
        ready, pending = self._ready, self._pending
        while ready:
            priority, seq, key = heapq.heappop(ready)
            bucket = self._buckets.get(key)
            if bucket is None or bucket.queued != (priority, seq):
                continue  # stale: the bucket is queued under a better head, blocked or gone
            head = bucket.head(pending)
            if head is None:
                del self._buckets[key]
            elif head[:2] != (priority, seq):  # its head was taken out: queue the new one
                self._queue(bucket, head)
            else:
                return bucket, head
        return None, None

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
