"""In-flight tracking, pure: every job sent until its final report (docs/semantics.md §6).

Each send issues a fresh lease. A report counts only if it names the job's current lease and
comes from the connection (or, for a durable node, the node name) that holds it; anything else
is stale and rejected, which is what makes the final feedback exactly-once.

A job out on a node is kept packed (the msgpack bytes of its wire form), not as a JobRecord:
the app process tracks every job until its final report, a million week-long delayed jobs
among them, and feedback needs only the lease and the connection. The record is rebuilt only
to requeue or journal the job (node lost, nack, returned).
"""

from __future__ import annotations

import itertools
import secrets
from dataclasses import dataclass
from typing import Any

import msgpack

from jobreactor.job import JobRecord


@dataclass(slots=True)
class InFlight:
    job_id: str
    name: str
    packed: bytes  # msgpack of the record's wire form (JobRecord.to_dict)
    lease: int
    conn: int | None  # None: its durable node is away, jobs wait for it (node_grace)
    node: str
    seq: int
    acked: bool = False
    cancel_requested: bool = False
    periodic: bool = False
    origin: str = ""  # the dead instance whose journal we adopted it from (else "")

    @property
    def job(self) -> JobRecord:
        """The record, rebuilt from its packed form (a fresh copy on every call)."""
        return JobRecord.from_dict(msgpack.unpackb(self.packed, raw=False, strict_map_key=False))


def pack_wire(record: dict[str, Any]) -> bytes:
    """The packed form kept for a job out on a node (raises what msgpack raises)."""
    packed: bytes = msgpack.packb(record, use_bin_type=True)
    return packed


class Tracker:
    def __init__(self) -> None:
        # A random start: a distributor that adopts another's journal takes over leases issued
        # by it, and the two must not collide (2**40 starts, a few million leases each).
        self._next_lease = secrets.randbits(40) + 1
        self._jobs: dict[str, InFlight] = {}
        # Jobs per connection, counted (a million delayed jobs: no index entry each); the jobs
        # themselves are found by a scan, only when a connection closes or a node is taken over.
        self._on_conn: dict[int, int] = {}
        # Lease -> job id until the node acknowledges (acks and nacks name leases; reports name
        # the job): a job waiting on a node for a week keeps no entry here.
        self._by_lease: dict[int, str] = {}
        # Jobs per durable node that is away (conn None), counted: a node's every connect asks
        # whether it has any, and that must not scan a million tracked jobs.
        self._orphans: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._jobs)

    def get(self, job_id: str) -> InFlight | None:
        return self._jobs.get(job_id)

    def peek(self, limit: int) -> list[InFlight]:
        """Up to `limit` jobs out on nodes, oldest sent first (dashboards)."""
        return list(itertools.islice(self._jobs.values(), limit))

    def issue(
        self,
        job: JobRecord,
        conn: int,
        node: str,
        seq: int,
        lease: int | None = None,
        *,
        packed: bytes | None = None,
    ) -> int:
        """Record that `job` goes to `conn` now; return its new lease.

        `lease` re-adopts a job a reconnecting node still holds under the lease we gave it.
        `packed`: `pack_wire(job.to_dict())` if the caller has it already.
        """
        self.forget(job.id)
        adopted = lease is not None
        if lease is None:
            lease = self._next_lease
        # An adopted lease (from a node that outlived our restart) must never be issued again.
        self._next_lease = max(self._next_lease, lease + 1)
        if packed is None:
            packed = pack_wire(job.to_dict())
        self._jobs[job.id] = InFlight(
            job.id, job.name, packed, lease, conn, node, seq, adopted, False, job.is_periodic
        )
        self._on_conn[conn] = self._on_conn.get(conn, 0) + 1
        if not adopted:
            self._by_lease[lease] = job.id
        return lease

    def adopt_orphan(
        self, job: JobRecord, node: str, lease: int, seq: int, origin: str = ""
    ) -> None:
        """A journal (ours restarted, or `origin`'s adopted) says `node` holds `job`."""
        self.forget(job.id)
        self._next_lease = max(self._next_lease, lease + 1)
        packed = pack_wire(job.to_dict())
        self._jobs[job.id] = InFlight(
            job.id, job.name, packed, lease, None, node, seq, True, False, job.is_periodic, origin
        )
        self._orphans[node] = self._orphans.get(node, 0) + 1

    def ack(self, conn: int, lease: int) -> InFlight | None:
        job_id = self._by_lease.get(lease)
        entry = None if job_id is None else self._jobs.get(job_id)
        if entry is None or entry.conn != conn:
            return None
        entry.acked = True
        del self._by_lease[lease]
        return entry

    def by_lease(self, conn: int, lease: int) -> InFlight | None:
        job_id = self._by_lease.get(lease)
        entry = None if job_id is None else self._jobs.get(job_id)
        return entry if entry is not None and entry.conn == conn else None

    def check_report(self, conn: int, job_id: str, lease: int) -> InFlight | None:
        """The entry if this report is current for `conn`, else None (stale: reject it)."""
        entry = self._jobs.get(job_id)
        if entry is None or entry.lease != lease or entry.conn != conn:
            return None
        return entry

    def forget(self, job_id: str) -> InFlight | None:
        entry = self._jobs.pop(job_id, None)
        if entry is None:
            return None
        if not entry.acked:
            self._by_lease.pop(entry.lease, None)
        if entry.conn is None:
            self._unorphan(entry.node)
        self._uncount(entry.conn)
        return entry

    def _unorphan(self, node: str) -> None:
        left = self._orphans.get(node, 0) - 1
        if left > 0:
            self._orphans[node] = left
        else:
            self._orphans.pop(node, None)

    def _uncount(self, conn: int | None) -> None:
        if conn is not None:
            left = self._on_conn.get(conn, 0) - 1
            if left > 0:
                self._on_conn[conn] = left
            else:
                self._on_conn.pop(conn, None)

    def claim_reported(self, job_id: str, node: str, lease: int, conn: int) -> InFlight | None:
        """A report from `node` (on `conn`) for a job restored from the journal as out on it
        under `lease`: the job finished before the node could list it among the jobs it holds,
        so only its report says it is there. Rebind and return it; None if it is not that."""
        entry = self._jobs.get(job_id)
        if entry is None or entry.conn is not None or entry.node != node or entry.lease != lease:
            return None
        return self.rebind(job_id, conn)

    def rebind(self, job_id: str, conn: int) -> InFlight | None:
        """A reconnecting node still holds this job: move it to the new connection."""
        entry = self._jobs.get(job_id)
        if entry is None:
            return None
        if entry.conn is None:
            self._unorphan(entry.node)
        self._uncount(entry.conn)
        entry.conn = conn
        self._on_conn[conn] = self._on_conn.get(conn, 0) + 1
        return entry

    def detach(self, conn: int, *, keep_acked: bool) -> list[InFlight]:
        """`conn` closed. Return the entries to requeue (and forget them).

        Unacknowledged jobs always come back. Acknowledged ones come back too unless
        `keep_acked` (a durable node owns them while it is away; see `orphans_of`).
        """
        requeue: list[InFlight] = []
        for entry in self.jobs_on(conn):
            if keep_acked and entry.acked:
                entry.conn = None
                self._orphans[entry.node] = self._orphans.get(entry.node, 0) + 1
            else:
                self.forget(entry.job_id)
                requeue.append(entry)
        self._on_conn.pop(conn, None)
        return requeue

    def orphans_of(self, node: str) -> list[InFlight]:
        """Jobs of durable node `node` held while it is away (a scan, only if it has any)."""
        if node not in self._orphans:
            return []
        return [e for e in self._jobs.values() if e.conn is None and e.node == node]

    def orphan_count(self, node: str) -> int:
        return self._orphans.get(node, 0)

    def orphans_of_all(self) -> list[InFlight]:
        return [e for e in self._jobs.values() if e.conn is None]

    def jobs_on(self, conn: int) -> list[InFlight]:
        """Jobs out on `conn` (a scan: for a closing connection or a take-over, not per job)."""
        if conn not in self._on_conn:
            return []
        return [e for e in self._jobs.values() if e.conn == conn]

    def count_on(self, conn: int) -> int:
        return self._on_conn.get(conn, 0)
