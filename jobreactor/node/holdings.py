"""Holdings: every job a node holds, and when each is due (pure: no loop, no I/O).

`jobs` maps an id to its `HeldJob`; `timers` holds the due times of scheduled jobs, `ready` the
jobs due now waiting for a run slot (node/scheduler.py). A job due far ahead waits *packed*
(issue 13): it leaves `jobs`, and its timer entry carries the record's compact msgpack bytes
and the index of the (link, origin) it came by; memory storage keeps those same bytes. It is a
HeldJob again when it falls due (`revive`) or when anything asks for it by id (`find`: a cancel,
a resend, a drop, a wake-up).
"""

from __future__ import annotations

from jobreactor.job import JobRecord
from jobreactor.node.held import HeldJob, Outlet
from jobreactor.node.scheduler import Entry, ReadyQueue, TimerHeap
from jobreactor.storage.codec import pack_record, peek_lease, unpack_record
from jobreactor.storage.memory import MemoryStorage

PackedJob = tuple[str, bytes, Outlet, str]  # (job id, record bytes, link, origin)


class Holdings:
    """The node's jobs by id, its timer heap and ready queue, and the packed far-future jobs."""

    def __init__(self, node_name: str, storage: object) -> None:
        self.name = node_name
        self.jobs: dict[str, HeldJob] = {}
        self.timers = TimerHeap()
        self.ready = ReadyQueue()
        self.packed_n = 0
        self._memory = storage if isinstance(storage, MemoryStorage) else None
        self._metas: list[tuple[Outlet, str]] = []  # (link, origin), shared by packed jobs
        self._meta_index: dict[tuple[Outlet, str], int] = {}

    def __len__(self) -> int:
        """Jobs held, packed ones included."""
        return len(self.jobs) + self.packed_n

    def find(self, job_id: str) -> HeldJob | None:
        """The job held under `job_id`, unpacked if it was packed (it stays scheduled)."""
        held = self.jobs.get(job_id)
        if held is not None:
            return held
        entry = self.timers.entry(job_id)
        if entry is None or len(entry) == 2:
            return None
        held = self.revive(entry)
        self.timers.schedule(job_id, entry[0])
        return held

    def holds(self, job_id: str) -> bool:
        return job_id in self.jobs or job_id in self.timers

    def remove(self, job_id: str) -> None:
        """Gone from here: unscheduled, out of the ready queue and of `jobs`."""
        self.timers.cancel(job_id)
        self.ready.remove(job_id)
        self.jobs.pop(job_id, None)

    def unschedule(self, job_id: str) -> None:
        """Still held, but neither on a timer nor ready (to be scheduled anew)."""
        self.timers.cancel(job_id)
        self.ready.remove(job_id)

    # --- packing --------------------------------------------------------------------------------

    def pack(self, held: HeldJob, due: float) -> bool:
        """Schedule `held` at `due` packed, if nothing but its record is in flight."""
        link = held.link
        if (
            link is None
            or held.running
            or held.holds_credit
            or held.dropped
            or held.cancel_requested
            or held.perform_held
            or held.lock_token is not None
            or held.releasing is not None
        ):
            return False
        packed = pack_record(held.record)
        if packed is None:
            return False  # a value msgpack can't carry (set by a callback): keep the record
        key = (link, held.origin)
        meta = self._meta_index.get(key)
        if meta is None:
            meta = self._meta_index[key] = len(self._metas)
            self._metas.append(key)
        job_id = held.record.id
        self.timers.schedule(job_id, due, packed, meta)
        del self.jobs[job_id]
        self.packed_n += 1
        if self._memory is not None:
            self._memory.keep(self.name, job_id, packed)  # one copy, shared
        return True

    def revive(self, entry: Entry) -> HeldJob:
        """The HeldJob of packed `entry`, back in `jobs` (the caller reschedules or runs it)."""
        _, job_id, packed, meta = entry  # type: ignore[misc]
        record = unpack_record(packed, job_id)
        link, origin = self._metas[meta]
        held = self.jobs[job_id] = HeldJob(record, link, origin=origin)
        self.packed_n -= 1
        if self._memory is not None:
            self._memory.keep(self.name, job_id, record)  # state changes show there again
        return held

    def packed_jobs(self) -> list[PackedJob]:
        """(job id, bytes, link, origin) of every packed job (a scan: rare events only)."""
        metas = self._metas
        return [
            (entry[1], entry[2], *metas[entry[3]])
            for entry in self.timers.entries()
            if len(entry) == 4
        ]

    def packed_held_from(self, link: Outlet) -> list[tuple[str, int]]:
        held = []
        for job_id, packed, by, _ in self.packed_jobs():
            lease, distributor = peek_lease(packed)  # read, not unpacked
            if by is link or distributor == link.configured:
                held.append((job_id, lease))
        return held

    def forget_packed(self, job_id: str) -> bool:
        """Handed back unstarted: gone from here, never unpacked. True if it was held."""
        if self.timers.cancel(job_id):
            self.packed_n -= 1
            return True
        return False

    # --- reading ---------------------------------------------------------------------------------

    def peek_record(self, job_id: str) -> JobRecord | None:
        """A held job's record for display (a packed one decoded, left packed)."""
        held = self.jobs.get(job_id)
        if held is not None:
            return held.record
        entry = self.timers.entry(job_id)
        return unpack_record(entry[2], job_id) if entry is not None and len(entry) == 4 else None

    def scheduled_ids(self, limit: int) -> list[str]:
        """The `limit` soonest scheduled job ids, soonest first (dashboards)."""
        return self.timers.peek(limit)
