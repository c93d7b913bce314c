"""In-flight tracking, pure: leases, stale reports, connection loss (DESIGN "Ownership")."""

from __future__ import annotations

from dataclasses import replace

from jobreactor.distributor.tracking import LONG_WAIT_S, InFlight, Tracker
from jobreactor.job import JobRecord

CONN1, CONN2, CONN3 = 11, 12, 13


def job(job_id: str) -> JobRecord:
    return JobRecord(job_id, "echo", {"n": job_id})


def test_issue_records_the_job_and_returns_a_lease() -> None:
    tracker = Tracker()
    record = job("j1")
    lease = tracker.issue(record, CONN1, "w1", seq=5)
    entry = tracker.get("j1")
    assert isinstance(entry, InFlight)
    # Kept packed, not as the record: rebuilt equal, a copy each time.
    assert entry.job == record
    assert entry.job is not record
    assert (entry.job_id, entry.name, entry.periodic) == ("j1", "echo", False)
    assert (entry.lease, entry.conn, entry.node, entry.seq) == (lease, CONN1, "w1", 5)
    assert entry.acked is False
    assert entry.cancel_requested is False
    assert len(tracker) == 1
    assert tracker.jobs_on(CONN1) == [entry]
    assert tracker.get("unknown") is None


def test_leases_are_unique() -> None:
    tracker = Tracker()
    leases = [tracker.issue(job(f"j{i}"), CONN1 + i % 3, "w1", seq=i) for i in range(500)]
    assert len(set(leases)) == 500


def test_re_issuing_a_job_gives_a_new_lease_and_retires_the_old_one() -> None:
    tracker = Tracker()
    first = tracker.issue(job("j1"), CONN1, "w1", seq=0)
    second = tracker.issue(job("j1"), CONN2, "w2", seq=0)
    assert second != first
    assert len(tracker) == 1
    assert tracker.check_report(CONN1, "j1", first) is None
    assert tracker.check_report(CONN2, "j1", first) is None
    assert tracker.ack(CONN1, first) is None
    assert tracker.by_lease(CONN1, first) is None
    assert tracker.jobs_on(CONN1) == []
    entry = tracker.check_report(CONN2, "j1", second)
    assert entry is not None
    assert entry.node == "w2"


def test_leases_are_never_reused_after_forget() -> None:
    tracker = Tracker()
    seen = set()
    for i in range(50):
        lease = tracker.issue(job("same"), CONN1, "w1", seq=i)
        assert lease not in seen
        seen.add(lease)
        tracker.forget("same")


# --- check_report -------------------------------------------------------------------------------


def test_check_report_accepts_the_current_lease_from_the_holding_connection() -> None:
    tracker = Tracker()
    lease = tracker.issue(job("j1"), CONN1, "w1", seq=0)
    entry = tracker.check_report(CONN1, "j1", lease)
    assert entry is not None
    assert entry is tracker.get("j1")


def test_check_report_rejects_a_wrong_lease() -> None:
    tracker = Tracker()
    lease = tracker.issue(job("j1"), CONN1, "w1", seq=0)
    other = tracker.issue(job("j2"), CONN1, "w1", seq=1)
    assert tracker.check_report(CONN1, "j1", lease + 1000) is None
    assert tracker.check_report(CONN1, "j1", other) is None  # another job's lease
    assert tracker.check_report(CONN1, "j2", lease) is None


def test_check_report_rejects_the_wrong_connection() -> None:
    tracker = Tracker()
    lease = tracker.issue(job("j1"), CONN1, "w1", seq=0)
    assert tracker.check_report(CONN2, "j1", lease) is None


def test_check_report_rejects_an_unknown_or_finished_job() -> None:
    tracker = Tracker()
    assert tracker.check_report(CONN1, "nope", 1) is None
    lease = tracker.issue(job("j1"), CONN1, "w1", seq=0)
    forgotten = tracker.forget("j1")  # final report handled
    assert forgotten is not None
    assert forgotten.lease == lease
    assert tracker.check_report(CONN1, "j1", lease) is None  # a duplicate final report
    assert tracker.forget("j1") is None
    assert len(tracker) == 0


# --- ack / by_lease -------------------------------------------------------------------------------


def test_ack_marks_the_job_acknowledged() -> None:
    tracker = Tracker()
    lease = tracker.issue(job("j1"), CONN1, "w1", seq=0)
    entry = tracker.ack(CONN1, lease)
    assert entry is not None
    assert entry.acked is True
    # Acknowledged: no lease index entry any more (a nack comes only before the ack); reports
    # find it by job id and lease.
    assert tracker.by_lease(CONN1, lease) is None
    assert tracker.check_report(CONN1, "j1", lease) is entry


def test_ack_from_the_wrong_connection_or_for_an_unknown_lease_is_ignored() -> None:
    tracker = Tracker()
    lease = tracker.issue(job("j1"), CONN1, "w1", seq=0)
    assert tracker.ack(CONN2, lease) is None
    assert tracker.ack(CONN1, lease + 99) is None
    entry = tracker.get("j1")
    assert entry is not None
    assert entry.acked is False
    assert tracker.by_lease(CONN2, lease) is None
    assert tracker.by_lease(CONN1, lease + 99) is None


# --- detach -------------------------------------------------------------------------------------


def two_jobs_on_conn1(tracker: Tracker) -> tuple[int, int]:
    unacked = tracker.issue(job("unacked"), CONN1, "w1", seq=1)
    acked = tracker.issue(job("acked"), CONN1, "w1", seq=2)
    assert tracker.ack(CONN1, acked) is not None
    tracker.issue(job("elsewhere"), CONN2, "w2", seq=3)
    return unacked, acked


def test_detach_returns_unacked_jobs_and_keeps_acked_ones_for_a_durable_node() -> None:
    tracker = Tracker()
    unacked, acked = two_jobs_on_conn1(tracker)
    requeue = tracker.detach(CONN1, keep_acked=True)
    assert [e.job_id for e in requeue] == ["unacked"]
    assert requeue[0].seq == 1  # the original FIFO place travels with it
    assert tracker.get("unacked") is None
    kept = tracker.get("acked")
    assert kept is not None
    assert kept.conn is None
    assert tracker.orphans_of("w1") == [kept]
    assert tracker.orphans_of("w2") == []
    assert tracker.jobs_on(CONN1) == []
    # The stale connection can no longer report or ack.
    assert tracker.check_report(CONN1, "acked", acked) is None
    assert tracker.check_report(CONN1, "unacked", unacked) is None
    assert tracker.ack(CONN1, unacked) is None
    # Other connections are untouched.
    assert [e.job_id for e in tracker.jobs_on(CONN2)] == ["elsewhere"]
    assert len(tracker) == 2


def test_detach_returns_acked_jobs_too_for_a_memory_node() -> None:
    # DESIGN: a job acknowledged by a memory node that disconnects is re-dispatched.
    tracker = Tracker()
    two_jobs_on_conn1(tracker)
    requeue = tracker.detach(CONN1, keep_acked=False)
    assert sorted(e.job_id for e in requeue) == ["acked", "unacked"]
    assert tracker.get("acked") is None
    assert tracker.get("unacked") is None
    assert tracker.orphans_of("w1") == []
    assert len(tracker) == 1


def test_detach_of_an_unknown_connection_returns_nothing() -> None:
    tracker = Tracker()
    tracker.issue(job("j1"), CONN1, "w1", seq=0)
    assert tracker.detach(CONN3, keep_acked=False) == []
    assert len(tracker) == 1


def test_detach_twice_returns_nothing_the_second_time() -> None:
    tracker = Tracker()
    two_jobs_on_conn1(tracker)
    tracker.detach(CONN1, keep_acked=True)
    assert tracker.detach(CONN1, keep_acked=True) == []
    assert tracker.detach(CONN1, keep_acked=False) == []
    assert len(tracker.orphans_of("w1")) == 1


def test_requeued_job_can_be_issued_again_with_a_fresh_lease() -> None:
    tracker = Tracker()
    old = tracker.issue(job("j1"), CONN1, "w1", seq=0)
    [entry] = tracker.detach(CONN1, keep_acked=False)
    new = tracker.issue(entry.job, CONN2, "w2", seq=entry.seq)
    assert new != old
    assert tracker.check_report(CONN2, "j1", new) is not None
    assert tracker.check_report(CONN1, "j1", old) is None


# --- rebind -------------------------------------------------------------------------------------


def test_rebind_moves_an_orphan_to_the_reconnected_node() -> None:
    tracker = Tracker()
    _, acked = two_jobs_on_conn1(tracker)
    tracker.detach(CONN1, keep_acked=True)
    entry = tracker.rebind("acked", CONN3)
    assert entry is not None
    assert entry.conn == CONN3
    assert entry.lease == acked  # the node still holds it under the same lease
    assert tracker.orphans_of("w1") == []
    assert tracker.jobs_on(CONN3) == [entry]
    assert tracker.check_report(CONN3, "acked", acked) is entry


def test_rebind_from_a_live_connection() -> None:
    tracker = Tracker()
    lease = tracker.issue(job("j1"), CONN1, "w1", seq=0)
    entry = tracker.rebind("j1", CONN2)
    assert entry is not None
    assert tracker.jobs_on(CONN1) == []
    assert tracker.jobs_on(CONN2) == [entry]
    assert tracker.check_report(CONN1, "j1", lease) is None
    assert tracker.check_report(CONN2, "j1", lease) is entry
    # Closing the old connection no longer touches the moved job.
    assert tracker.detach(CONN1, keep_acked=False) == []
    assert tracker.get("j1") is entry


def test_rebind_of_an_unknown_job_is_none() -> None:
    tracker = Tracker()
    assert tracker.rebind("nope", CONN1) is None
    assert tracker.jobs_on(CONN1) == []


# --- issue with an explicit lease (a reconnecting node's held jobs) -------------------------


def test_issue_with_an_explicit_lease_adopts_it_as_acked() -> None:
    tracker = Tracker()
    lease = tracker.issue(job("held"), CONN1, "w1", seq=3, lease=77)
    assert lease == 77
    entry = tracker.get("held")
    assert entry is not None
    assert entry.acked is True  # the node stored it long ago
    assert tracker.check_report(CONN1, "held", 77) is entry
    assert tracker.by_lease(CONN1, 77) is None  # acknowledged: found by id and lease only
    # Adopted jobs stay with a durable node that drops again.
    assert tracker.detach(CONN1, keep_acked=True) == []
    assert tracker.orphans_of("w1") == [entry]


def test_adopting_replaces_an_orphaned_entry_of_the_same_job() -> None:
    tracker = Tracker()
    lease = tracker.issue(job("j1"), CONN1, "w1", seq=4)
    tracker.ack(CONN1, lease)
    tracker.detach(CONN1, keep_acked=True)
    adopted = tracker.issue(job("j1"), CONN2, "w1", seq=4, lease=lease)
    assert adopted == lease
    assert len(tracker) == 1
    assert tracker.orphans_of("w1") == []
    assert tracker.check_report(CONN2, "j1", lease) is not None


def test_new_leases_never_collide_with_an_adopted_one() -> None:
    # A node reconnecting to a restarted distributor presents leases this Tracker never issued;
    # leases issued afterwards must not reuse them, or acks would land on the wrong job.
    tracker = Tracker()
    tracker.issue(job("held"), CONN1, "w1", seq=0, lease=3)
    fresh = [tracker.issue(job(f"j{i}"), CONN2, "w2", seq=i + 1) for i in range(10)]
    assert 3 not in fresh
    assert len(set(fresh)) == 10
    entry = tracker.check_report(CONN1, "held", 3)
    assert entry is not None
    assert entry.job.id == "held"
    assert all(tracker.by_lease(CONN2, lease).job_id != "held" for lease in fresh)  # type: ignore[union-attr]


def test_orphan_counts_match_the_entries_through_every_transition() -> None:
    # The count answers "does this node have jobs waiting for it?" on every connect without a
    # scan; it must agree with the entries whatever happens to them.
    import random

    rng = random.Random(7)
    tracker = Tracker()
    nodes = ["w1", "w2", "w3"]
    conns = {name: 100 + i for i, name in enumerate(nodes)}
    for step in range(2_000):
        name = rng.choice(nodes)
        job_id = f"j{rng.randrange(60)}"
        match rng.randrange(6):
            case 0:
                lease = tracker.issue(job(job_id), conns[name], name, seq=step)
                if rng.random() < 0.7:
                    tracker.ack(conns[name], lease)
            case 1:
                tracker.detach(conns[name], keep_acked=rng.random() < 0.8)
                conns[name] += 10  # the node reconnects on a new connection
            case 2:
                tracker.rebind(job_id, conns[name])
            case 3:
                tracker.forget(job_id)
            case 4:
                tracker.adopt_orphan(job(job_id), name, lease=rng.randrange(1, 10**6), seq=step)
            case _:
                entry = tracker.get(job_id)
                if entry is not None and entry.conn is None:
                    tracker.issue(entry.job, conns[name], name, seq=step)
        for node in nodes:
            assert (
                tracker.orphan_count(node)
                == len(tracker.orphans_of(node))
                == sum(1 for e in tracker.peek(10**6) if e.conn is None and e.node == node)
            )


def test_a_report_claims_a_restored_orphan_of_its_node_under_its_lease_only() -> None:
    tracker = Tracker()
    tracker.adopt_orphan(job("j1"), "n1", 7, seq=1)
    assert tracker.claim_reported("j1", "n2", 7, conn=3) is None  # another node
    assert tracker.claim_reported("j1", "n1", 6, conn=3) is None  # another lease
    assert tracker.claim_reported("nope", "n1", 7, conn=3) is None
    entry = tracker.claim_reported("j1", "n1", 7, conn=3)
    assert entry is not None
    assert entry.conn == 3
    assert tracker.orphans_of("n1") == []
    assert tracker.check_report(3, "j1", 7) is entry
    assert tracker.claim_reported("j1", "n1", 7, conn=4) is None  # bound now: not an orphan


# --- the cold form: entries frozen into bytes once `young_limit` have piled up --------------


def frozen_tracker() -> Tracker:
    return Tracker(young_limit=1)  # every entry is frozen as soon as it is issued


def test_a_frozen_entry_reads_back_equal_with_its_record() -> None:
    tracker = frozen_tracker()
    record = JobRecord("j1", "echo", {"n": [1, 2.5, "x"]}, run_at_ts=1e9, period=60.0,
                       distributor="127.0.0.1:5000", extra={"newer": {"a": 1}})  # fmt: skip
    lease = tracker.issue(record, CONN1, "w1", seq=7, wire=record.to_dict())
    entry = tracker.get("j1")
    assert entry is not None
    assert entry.job == record
    assert (entry.job_id, entry.name, entry.periodic) == ("j1", "echo", True)
    assert (entry.lease, entry.conn, entry.node, entry.seq) == (lease, CONN1, "w1", 7)
    assert (entry.acked, entry.cancel_requested, entry.origin) == (False, False, "")
    assert list(tracker.names()) == ["echo"]
    assert tracker.check_report(CONN1, "j1", lease) == entry
    assert tracker.check_report(CONN2, "j1", lease) is None
    assert tracker.check_report(CONN1, "j1", lease + 1) is None


def test_changes_to_a_frozen_entry_are_kept() -> None:
    tracker = frozen_tracker()
    unacked, acked = two_jobs_on_conn1(tracker)
    assert tracker.by_lease(CONN1, unacked) is not None
    entry = tracker.get("acked")
    assert entry is not None
    assert entry.acked is True
    assert tracker.request_cancel("acked") is not None
    assert tracker.request_cancel("nope") is None
    requeue = tracker.detach(CONN1, keep_acked=True)
    assert [e.job_id for e in requeue] == ["unacked"]
    assert requeue[0].job == job("unacked")
    [kept] = tracker.orphans_of("w1")
    assert (kept.job_id, kept.conn, kept.acked, kept.cancel_requested) == (
        "acked",
        None,
        True,
        True,
    )
    assert tracker.orphan_count("w1") == 1
    moved = tracker.rebind("acked", CONN3)
    assert moved is not None
    assert moved.conn == CONN3
    assert tracker.check_report(CONN3, "acked", acked) == moved
    assert tracker.orphans_of("w1") == []
    assert tracker.count_on(CONN3) == 1
    forgotten = tracker.forget("acked")
    assert forgotten is not None
    assert forgotten.job == job("acked")
    assert tracker.count_on(CONN3) == 0


def test_a_frozen_adopted_orphan_keeps_its_origin() -> None:
    tracker = frozen_tracker()
    tracker.adopt_orphan(job("j1"), "w1", lease=42, seq=3, origin="dead-instance")
    [entry] = tracker.orphans_of_all()
    assert (entry.origin, entry.lease, entry.acked, entry.node) == ("dead-instance", 42, True, "w1")
    claimed = tracker.claim_reported("j1", "w1", 42, CONN1)
    assert claimed is not None
    assert claimed.conn == CONN1
    assert tracker.orphans_of_all() == []


def test_an_entry_that_does_not_fit_the_cold_form_stays_young() -> None:
    tracker = frozen_tracker()
    tracker.issue(job("big"), CONN1, "w1", seq=0, lease=2**70)  # no 64-bit lease
    odd = JobRecord("odd", "echo", {}, extra={7: "an int key"})  # type: ignore[dict-item]
    # (an int key, as a peer may send: it would read back as field number 7)
    tracker.issue(odd, CONN1, "w1", seq=1)
    big = tracker.get("big")
    assert big is not None
    assert big.lease == 2**70
    assert tracker.get("odd") is tracker.get("odd")  # the young object itself
    entry = tracker.get("odd")
    assert entry is not None
    assert entry.job == odd
    assert sorted(e.job_id for e in tracker.jobs_on(CONN1)) == ["big", "odd"]


def test_young_entries_are_frozen_in_a_batch_at_the_limit() -> None:
    tracker = Tracker(young_limit=3)
    leases = [tracker.issue(job(f"j{i}"), CONN1, "w1", seq=i) for i in range(7)]
    assert len(tracker) == 7
    assert [e.job_id for e in tracker.peek(10)] == [f"j{i}" for i in range(7)]
    for i, lease in enumerate(leases):
        entry = tracker.check_report(CONN1, f"j{i}", lease)
        assert entry is not None
        assert entry.job == job(f"j{i}")
        assert tracker.ack(CONN1, lease) is not None
    assert all(e.acked for e in tracker.jobs_on(CONN1))


# --- jobs that stay on their node: frozen alone, at the acknowledgement -------------------


def delayed(job_id: str, wait_s: float) -> JobRecord:
    return JobRecord(job_id, "echo", {"n": 1}, run_at_ts=1e9 + wait_s, make_after=wait_s,
                     distributor="127.0.0.1:5000")  # fmt: skip


def is_young(tracker: Tracker, job_id: str) -> bool:
    return tracker.get(job_id) is tracker.get(job_id)  # a frozen one gives a fresh view


def test_an_acknowledged_job_that_waits_long_is_frozen_at_once() -> None:
    tracker = Tracker()  # the batch limit (4,096) is far away
    record = delayed("later", LONG_WAIT_S)
    lease = tracker.issue(record, CONN1, "w1", seq=3, wire=record.to_dict())
    assert is_young(tracker, "later")
    assert tracker.ack(CONN1, lease) is not None
    assert not is_young(tracker, "later")
    entry = tracker.check_report(CONN1, "later", lease)
    assert entry is not None
    assert (entry.acked, entry.lease, entry.conn, entry.seq) == (True, lease, CONN1, 3)
    assert entry.job == record
    assert tracker.count_on(CONN1) == 1
    assert tracker.ack(CONN1, lease) is None  # acknowledged once
    forgotten = tracker.forget("later")
    assert forgotten is not None
    assert forgotten.job == record
    assert (len(tracker), tracker.count_on(CONN1)) == (0, 0)


def test_a_job_due_soon_stays_young_and_a_periodic_one_is_frozen() -> None:
    tracker = Tracker()
    soon, instant = delayed("soon", LONG_WAIT_S - 1), job("instant")
    ticking = JobRecord("tick", "echo", {}, period=1.0)
    for i, record in enumerate((soon, instant, ticking)):
        lease = tracker.issue(record, CONN1, "w1", seq=i, wire=record.to_dict())
        assert tracker.ack(CONN1, lease) is not None
    assert is_young(tracker, "soon")
    assert is_young(tracker, "instant")
    assert not is_young(tracker, "tick")
    tick = tracker.get("tick")
    assert tick is not None
    assert (tick.periodic, tick.acked, tick.job) == (True, True, ticking)


def test_an_adopted_job_that_waits_long_is_frozen_at_once() -> None:
    tracker = Tracker()
    record = delayed("held", 86_400.0)
    tracker.issue(record, CONN1, "w1", seq=0, lease=77)  # a reconnecting node still holds it
    tracker.adopt_orphan(delayed("restored", 86_400.0), "w2", lease=78, seq=1)
    assert not is_young(tracker, "held")
    assert not is_young(tracker, "restored")
    held = tracker.check_report(CONN1, "held", 77)
    assert held is not None
    assert (held.acked, held.job) == (True, record)
    assert tracker.orphan_count("w2") == 1


def test_the_cold_form_keeps_floats_and_any_lease_or_seq() -> None:
    tracker = frozen_tracker()
    whole = replace(delayed("whole", 3600.0), period=60.0, max_run_time=2.5, lock_timeout=1e300)
    tracker.issue(whole, CONN1, "w1", seq=2**40, lease=2**50)  # past the narrow head
    tracker.issue(delayed("small", 0.25), CONN2, "w2", seq=1, lease=2**48 - 1)
    entry = tracker.get("whole")
    assert entry is not None
    assert not is_young(tracker, "whole")
    assert (entry.lease, entry.seq, entry.conn, entry.node) == (2**50, 2**40, CONN1, "w1")
    thawed = entry.job
    assert thawed == whole
    for name in ("run_at_ts", "make_after", "period", "max_run_time", "lock_timeout"):
        assert type(getattr(thawed, name)) is float, name  # 3600.0 is packed as 3600
    small = tracker.get("small")
    assert small is not None
    assert (small.lease, small.conn, small.job) == (2**48 - 1, CONN2, delayed("small", 0.25))
    assert sorted(tracker.names()) == ["echo", "echo"]
