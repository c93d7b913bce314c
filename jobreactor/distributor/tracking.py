"""In-flight tracking, pure: every job sent until its final report (docs/semantics.md §6).

Each send issues a fresh lease. A report counts only if it names the job's current lease and
comes from the connection (or, for a durable node, the node name) that holds it; anything else
is stale and rejected, which is what makes the final feedback exactly-once.

The app process tracks every job until its final report, a million week-long delayed jobs among
them, so an entry is kept in one of two forms:

* **young**: an `InFlight` object holding the wire form the job was sent in (no copy, no
  encoding). A no-op is reported within milliseconds and never leaves this form.
* **cold**: once `young_limit` entries have piled up, they are frozen, each into one `bytes`
  (cold_form.py: lease, seq, connection, flags, and indexes of its name, node, origin and
  distributor strings in a table kept once; then its record minus those). About 80 bytes a job
  instead of ~700 (an object, ints, floats, the wire dict and its args).
  Reading one builds an `InFlight` view; changes go through the tracker's methods.
  A job that will stay on its node (enqueued `LONG_WAIT_S` or more ahead, or periodic) is
  frozen alone as soon as the node acknowledges it (or at once, adopted acknowledged): it
  would only sit in the young pile until the next batch, and that pile's peak stays in the
  RSS. A job due sooner stays young, so a drain never freezes or thaws.

The record is rebuilt only to requeue or journal the job (node lost, nack, returned).
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Iterator
from typing import Any

import msgpack

from jobreactor.distributor.cold_form import (
    ACKED,
    CANCEL,
    PACK_ERRORS,
    PERIODIC,
    compact_record,
    name_index,
    pack_head,
    packed_record,
    thawed_record,
    unpack_head,
)
from jobreactor.job import JobRecord

# Young entries are frozen in one batch when this many have piled up (reported jobs leave first).
YOUNG_LIMIT = 4096
# An acknowledged job enqueued to wait this long or more (its `make_after`: `after`, `run_at`,
# a cron tick) is frozen at once; one due sooner stays young (its report comes soon, and a
# thaw on the way out would cost the drain CPU for no lasting saving).
LONG_WAIT_S = 60.0


class InFlight:
    """One job out on a node. Read it; change it only through `Tracker` methods."""

    __slots__ = (
        "_wire", "acked", "cancel_requested", "conn", "job_id", "lease", "name", "node",
        "origin", "periodic", "seq",
    )  # fmt: skip

    def __init__(  # noqa: PLR0913 (a record of plain fields)
        self,
        job_id: str,
        name: str,
        wire: dict[str, Any] | bytes | tuple[str, bytes],
        lease: int,
        conn: int | None,  # None: its durable node is away, jobs wait for it (node_grace)
        node: str,
        seq: int,
        acked: bool = False,
        cancel_requested: bool = False,
        periodic: bool = False,
        origin: str = "",  # the dead instance whose journal we adopted it from (else "")
    ) -> None:
        self.job_id, self.name, self._wire, self.lease = job_id, name, wire, lease
        self.conn, self.node, self.seq, self.acked = conn, node, seq, acked
        self.cancel_requested, self.periodic, self.origin = cancel_requested, periodic, origin

    @property
    def job(self) -> JobRecord:
        """The record, rebuilt from its kept form (a fresh copy on every call)."""
        wire = self._wire
        if isinstance(wire, tuple):  # a cold entry's view: (distributor, frozen)
            return JobRecord.from_dict(thawed_record(self.job_id, self.name, *wire))
        packed = wire if isinstance(wire, bytes) else pack_wire(wire)
        return JobRecord.from_dict(msgpack.unpackb(packed, raw=False, strict_map_key=False))

    def _key(self) -> tuple[Any, ...]:
        return (self.job_id, self.lease, self.conn, self.node, self.seq, self.acked,
                self.cancel_requested, self.periodic, self.origin)  # fmt: skip

    def __eq__(self, other: object) -> bool:
        return isinstance(other, InFlight) and self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]  # compared by value, mutable

    def __repr__(self) -> str:
        return (
            f"InFlight({self.job_id!r}, lease={self.lease}, conn={self.conn}, node={self.node!r})"
        )


def pack_wire(record: dict[str, Any]) -> bytes:
    """A record's wire form packed (raises what msgpack raises)."""
    packed: bytes = msgpack.packb(record, use_bin_type=True)
    return packed


class Tracker:
    def __init__(self, young_limit: int = YOUNG_LIMIT) -> None:
        # A random start: a distributor that adopts another's journal takes over leases issued
        # by it, and the two must not collide (2**40 starts, a few million leases each).
        self._next_lease = secrets.randbits(40) + 1
        self._young: dict[str, InFlight] = {}
        self._cold: dict[str, bytes] = {}
        self._young_limit = young_limit
        self._strings: list[str] = [""]
        self._string_index: dict[str, int] = {"": 0}
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
        return len(self._young) + len(self._cold)

    def get(self, job_id: str) -> InFlight | None:
        entry = self._young.get(job_id)
        if entry is not None:
            return entry
        frozen = self._cold.get(job_id)
        return None if frozen is None else self._thaw(job_id, frozen)

    def entries(self) -> Iterator[InFlight]:
        """Every tracked job, oldest frozen first (a scan)."""
        for job_id, frozen in list(self._cold.items()):
            yield self._thaw(job_id, frozen)
        yield from list(self._young.values())

    def names(self) -> Iterator[str]:
        """The job name of every tracked job (a scan; no view built)."""
        strings = self._strings
        for frozen in list(self._cold.values()):
            yield strings[name_index(frozen)]
        for entry in list(self._young.values()):
            yield entry.name

    def peek(self, limit: int) -> list[InFlight]:
        """Up to `limit` jobs out on nodes, oldest sent first (dashboards)."""
        return list(itertools.islice(self.entries(), limit))

    def issue(
        self,
        job: JobRecord,
        conn: int,
        node: str,
        seq: int,
        lease: int | None = None,
        *,
        packed: bytes | None = None,
        wire: dict[str, Any] | None = None,
    ) -> int:
        """Record that `job` goes to `conn` now; return its new lease.

        `lease` re-adopts a job a reconnecting node still holds under the lease we gave it.
        `wire`: the `job.to_dict()` being sent (kept as is: don't change it afterwards), or
        `packed`, that packed; without either the record is packed here.
        """
        if job.id in self._young or job.id in self._cold:  # a new job (the usual) has none
            self.forget(job.id)
        adopted = lease is not None
        if lease is None:
            lease = self._next_lease
        # An adopted lease (from a node that outlived our restart) must never be issued again.
        self._next_lease = max(self._next_lease, lease + 1)
        kept: dict[str, Any] | bytes
        kept = wire if wire is not None else packed if packed is not None else job.to_dict()
        periodic = job.period > 0 or job.cron is not None  # job.is_periodic, without a call
        entry = InFlight(job.id, job.name, kept, lease, conn, node, seq, adopted, False,
                         periodic)  # fmt: skip
        self._add(entry)
        on_conn = self._on_conn
        on_conn[conn] = on_conn.get(conn, 0) + 1
        if not adopted:
            self._by_lease[lease] = job.id
        return lease

    def adopt_orphan(
        self, job: JobRecord, node: str, lease: int, seq: int, origin: str = ""
    ) -> None:
        """A journal (ours restarted, or `origin`'s adopted) says `node` holds `job`."""
        self.forget(job.id)
        self._next_lease = max(self._next_lease, lease + 1)
        entry = InFlight(job.id, job.name, job.to_dict(), lease, None, node, seq, True, False,
                         job.is_periodic, origin)  # fmt: skip
        self._add(entry)
        self._orphans[node] = self._orphans.get(node, 0) + 1

    def ack(self, conn: int, lease: int) -> InFlight | None:
        job_id = self._by_lease.get(lease)
        if job_id is None:
            return None
        entry = self._young.get(job_id)  # the usual: acked within milliseconds, still young
        young = entry is not None
        if entry is None:
            entry = self.get(job_id)
        if entry is None or entry.conn != conn:
            return None
        del self._by_lease[lease]
        entry.acked = True
        if not young:
            self._store(entry)  # a cold one is frozen again
        elif _stays_long(entry):
            self._freeze_young(entry)  # it stays on the node until due: no need to wait
        return entry

    def by_lease(self, conn: int, lease: int) -> InFlight | None:
        job_id = self._by_lease.get(lease)
        entry = None if job_id is None else self.get(job_id)
        return entry if entry is not None and entry.conn == conn else None

    def check_report(self, conn: int, job_id: str, lease: int) -> InFlight | None:
        """The entry if this report is current for `conn`, else None (stale: reject it)."""
        entry = self._young.get(job_id)
        if entry is None:
            frozen = self._cold.get(job_id)
            if frozen is None:
                return None
            entry = self._thaw(job_id, frozen)
        if entry.lease != lease or entry.conn != conn:
            return None
        return entry

    def request_cancel(self, job_id: str) -> InFlight | None:
        """Mark `job_id` as to be cancelled (`JR.cancel`); its entry, or None if not tracked."""
        entry = self.get(job_id)
        if entry is not None:
            entry.cancel_requested = True
            self._store(entry)
        return entry

    def forget(self, job_id: str) -> InFlight | None:
        entry = self._young.pop(job_id, None)
        if entry is None:
            frozen = self._cold.pop(job_id, None)
            if frozen is None:
                return None
            entry = self._thaw(job_id, frozen)
        if not entry.acked:
            self._by_lease.pop(entry.lease, None)
        conn = entry.conn
        if conn is None:
            self._unorphan(entry.node)
            return entry
        left = self._on_conn.get(conn, 0) - 1  # _uncount, inline: once per finished job
        if left > 0:
            self._on_conn[conn] = left
        else:
            self._on_conn.pop(conn, None)
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
        entry = self.get(job_id)
        if entry is None or entry.conn is not None or entry.node != node or entry.lease != lease:
            return None
        return self.rebind(job_id, conn)

    def rebind(self, job_id: str, conn: int) -> InFlight | None:
        """A reconnecting node still holds this job: move it to the new connection."""
        entry = self.get(job_id)
        if entry is None:
            return None
        if entry.conn is None:
            self._unorphan(entry.node)
        self._uncount(entry.conn)
        entry.conn = conn
        self._store(entry)
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
                self._store(entry)
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
        return [e for e in self.entries() if e.conn is None and e.node == node]

    def orphan_count(self, node: str) -> int:
        return self._orphans.get(node, 0)

    def orphans_of_all(self) -> list[InFlight]:
        if not self._orphans:
            return []
        return [e for e in self.entries() if e.conn is None]

    def jobs_on(self, conn: int) -> list[InFlight]:
        """Jobs out on `conn` (a scan: for a closing connection or a take-over, not per job)."""
        if conn not in self._on_conn:
            return []
        return [e for e in self.entries() if e.conn == conn]

    def count_on(self, conn: int) -> int:
        return self._on_conn.get(conn, 0)

    # --- the two forms ------------------------------------------------------------------------

    def _add(self, entry: InFlight) -> None:
        if entry.acked and _stays_long(entry):  # adopted (acknowledged already) and waiting
            frozen = self._freeze(entry)
            if frozen is not None:
                self._cold[entry.job_id] = frozen
                return
        young = self._young
        young[entry.job_id] = entry
        if len(young) >= self._young_limit:
            self._young = {}
            for job_id, old in young.items():
                frozen = self._freeze(old)
                if frozen is None:
                    self._young[job_id] = old  # can't be frozen (odd values): stays young
                else:
                    self._cold[job_id] = frozen

    def _freeze_young(self, entry: InFlight) -> None:
        """Freeze one young entry now (if it fits the cold form; else it stays young)."""
        frozen = self._freeze(entry)
        if frozen is not None:
            del self._young[entry.job_id]
            self._cold[entry.job_id] = frozen

    def _store(self, entry: InFlight) -> None:
        """Write back a changed entry (a cold one is frozen again)."""
        if entry.job_id in self._young:
            return  # the very object
        frozen = self._freeze(entry)
        if frozen is None:
            self._cold.pop(entry.job_id, None)
            self._young[entry.job_id] = entry
        else:
            self._cold[entry.job_id] = frozen

    def _string(self, text: str) -> int:
        index = self._string_index.get(text)
        if index is None:
            index = self._string_index[text] = len(self._strings)
            self._strings.append(text)
        return index

    def _freeze(self, entry: InFlight) -> bytes | None:
        """The cold form of `entry`; None if something in it doesn't fit (kept young then)."""
        wire = entry._wire
        tail: bytes | None
        if isinstance(wire, tuple):  # thawed, changed, frozen again: the record is as it was
            distributor, tail = wire[0], packed_record(wire[1])
        else:
            data = wire if isinstance(wire, dict) else entry.job.to_dict()
            distributor, tail = data.get("distributor", ""), compact_record(data)
        if tail is None:
            return None
        flags = (
            (ACKED if entry.acked else 0)
            | (CANCEL if entry.cancel_requested else 0)
            | (PERIODIC if entry.periodic else 0)
        )
        conn = -1 if entry.conn is None else entry.conn
        dist = self._string(distributor) if type(distributor) is str else 0
        name, node, origin = (self._string(text) for text in (entry.name, entry.node, entry.origin))
        try:
            return pack_head(flags, entry.lease, entry.seq, conn, name, node, origin, dist) + tail
        except PACK_ERRORS:
            return None

    def _thaw(self, job_id: str, frozen: bytes) -> InFlight:
        flags, lease, seq, conn, name, node, origin, dist = unpack_head(frozen)
        strings = self._strings
        return InFlight(
            job_id, strings[name], (strings[dist], frozen), lease, None if conn < 0 else conn,
            strings[node], seq, bool(flags & ACKED), bool(flags & CANCEL),
            bool(flags & PERIODIC), strings[origin],
        )  # fmt: skip


def _stays_long(entry: InFlight) -> bool:
    """Whether an acknowledged job stays on its node a while: periodic, or enqueued to wait
    `LONG_WAIT_S` or more (a no-op in a drain: one dict lookup)."""
    wire = entry._wire
    wait_s = wire.get("make_after") if type(wire) is dict else None
    if wait_s is None:
        return entry.periodic
    return entry.periodic or (type(wait_s) in (float, int) and wait_s >= LONG_WAIT_S)
