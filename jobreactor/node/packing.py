"""Packing: far-future jobs wait as bytes in the timer heap, not as records (issue 13).

A job due more than `_PACK_AFTER_S` (node.py) after it is scheduled leaves `_jobs`: its timer
entry carries the record's compact msgpack bytes and the index of the (link, origin) it came
by, and memory storage keeps those same bytes. It is a Held again when it falls due, or when
anything asks for it by id (`_held`: a cancel, a resend, a drop, a wake-up). Node (node.py)
mixes this in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from jobreactor.job import JobRecord
from jobreactor.node.attempts import Held
from jobreactor.node.link import DistributorLink
from jobreactor.node.scheduler import Entry, TimerHeap
from jobreactor.storage.codec import pack_record, peek_lease, unpack_record
from jobreactor.storage.memory import MemoryStorage


class Packing:
    """The packed half of Node's timer. The attributes below are Node's."""

    if TYPE_CHECKING:
        name: str
        _jobs: dict[str, Held]
        _timers: TimerHeap
        _doomed: set[str]

        def _flush_soon(self) -> None: ...

    _memory: MemoryStorage | None
    _packed_n: int

    def _init_packing(self, storage: object) -> None:
        self._memory = storage if isinstance(storage, MemoryStorage) else None
        self._packed_n = 0
        self._metas: list[tuple[DistributorLink, str]] = []  # (link, origin), shared by jobs
        self._meta_index: dict[tuple[DistributorLink, str], int] = {}

    def _pack(self, held: Held, job_id: str, due: float) -> bool:
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
        self._timers.schedule(job_id, due, packed, meta)
        del self._jobs[job_id]
        self._packed_n += 1
        if self._memory is not None:
            self._memory.keep(self.name, job_id, packed)  # one copy, shared
        return True

    def _revive(self, entry: Entry) -> Held:
        """The Held of packed `entry`, back in `_jobs` (the caller reschedules or runs it)."""
        _, job_id, packed, meta = entry  # type: ignore[misc]
        record = unpack_record(packed, job_id)
        link, origin = self._metas[meta]
        held = self._jobs[job_id] = Held(record, link, origin=origin)
        self._packed_n -= 1
        if self._memory is not None:
            self._memory.keep(self.name, job_id, record)  # state changes show there again
        return held

    def _held(self, job_id: str) -> Held | None:
        """The job held under `job_id`, unpacked if it was packed (it stays scheduled)."""
        held = self._jobs.get(job_id)
        if held is not None:
            return held
        entry = self._timers.entry(job_id)
        if entry is None or len(entry) == 2:
            return None
        held = self._revive(entry)
        self._timers.schedule(job_id, entry[0])
        return held

    def _holds(self, job_id: str) -> bool:
        return job_id in self._jobs or job_id in self._timers

    def _packed_jobs(self) -> list[tuple[str, bytes, DistributorLink, str]]:
        """(job id, bytes, link, origin) of every packed job (a scan: rare events only)."""
        metas = self._metas
        return [
            (entry[1], entry[2], *metas[entry[3]])
            for entry in self._timers.entries()
            if len(entry) == 4
        ]

    def _packed_held_from(self, link: DistributorLink) -> list[tuple[str, int]]:
        held = []
        for job_id, packed, by, _ in self._packed_jobs():
            lease, distributor = peek_lease(packed)  # read, not unpacked
            if by is link or distributor == link.configured:
                held.append((job_id, lease))
        return held

    def _forget_packed(self, job_id: str) -> None:
        """Handed back unstarted: gone from here and from storage, never unpacked."""
        if self._timers.cancel(job_id):
            self._packed_n -= 1
            self._doomed.add(job_id)
            self._flush_soon()

    def peek_record(self, job_id: str) -> JobRecord | None:
        """A scheduled job's record for display (a packed one decoded, left packed)."""
        held = self._jobs.get(job_id)
        if held is not None:
            return held.record
        entry = self._timers.entry(job_id)
        return unpack_record(entry[2], job_id) if entry is not None and len(entry) == 4 else None
