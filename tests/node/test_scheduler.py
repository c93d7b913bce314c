"""The node's pure time logic (practice 4, 21): plain numbers for `now`, no loop, no sleeps."""

from __future__ import annotations

import math
import random
import tracemalloc

import pytest

from jobreactor.job import next_periodic_due, retry_delay
from jobreactor.node.scheduler import LOOP_TIMER_LEAD_S, ReadyQueue, TimerHeap, timer_lead

# --- TimerHeap ---------------------------------------------------------------------------------


def test_jobs_come_out_in_due_order() -> None:
    heap = TimerHeap()
    heap.schedule("late", due=20.0)
    heap.schedule("early", due=10.0)
    heap.schedule("middle", due=15.0)
    assert heap.next_deadline() == 10.0
    assert heap.pop_due(now=15.0) == ["early", "middle"]
    assert heap.next_deadline() == 20.0
    assert len(heap) == 1
    assert "late" in heap
    assert "early" not in heap


def test_equal_due_times_all_pop_together_in_enqueue_order() -> None:
    """Ties are FIFO-ish: broken by job id, and a reactor's ids count up in enqueue order."""
    heap = TimerHeap()
    ids = [f"0123456789abcdef{i:08x}" for i in range(300)]  # the reactor's id format
    for job_id in ids:
        heap.schedule(job_id, due=5.0)
    heap.schedule("later", due=5.5)
    assert heap.pop_due(now=5.0) == ids
    assert heap.pop_due(now=5.5) == ["later"]


def test_equal_due_times_with_arbitrary_ids_each_pop_once() -> None:
    heap = TimerHeap()
    names = [f"job-{random.Random(i).random()}" for i in range(100)]
    for name in names:
        heap.schedule(name, due=5.0)
    out = heap.pop_due(now=5.0)
    assert sorted(out) == sorted(names)
    assert len(out) == len(names)


def test_pop_due_boundary_due_equal_to_now_pops() -> None:
    heap = TimerHeap()
    heap.schedule("a", due=10.0)
    assert heap.pop_due(now=math.nextafter(10.0, 0.0)) == []
    assert heap.pop_due(now=10.0) == ["a"]
    assert heap.pop_due(now=10.0) == []
    assert heap.next_deadline() is None
    assert len(heap) == 0


def test_reschedule_later_replaces_the_old_entry() -> None:
    heap = TimerHeap()
    heap.schedule("a", due=10.0)
    heap.schedule("a", due=30.0)
    assert len(heap) == 1
    assert heap.next_deadline() == 30.0  # the stale 10.0 entry is skipped
    assert heap.pop_due(now=20.0) == []
    assert heap.pop_due(now=30.0) == ["a"]
    assert heap.pop_due(now=1e9) == []


def test_reschedule_earlier_pops_once() -> None:
    heap = TimerHeap()
    heap.schedule("a", due=30.0)
    heap.schedule("a", due=10.0)
    assert heap.next_deadline() == 10.0
    assert heap.pop_due(now=10.0) == ["a"]
    assert heap.next_deadline() is None  # the 30.0 entry is stale
    assert heap.pop_due(now=1e9) == []


def test_cancel() -> None:
    heap = TimerHeap()
    heap.schedule("a", due=10.0)
    heap.schedule("b", due=20.0)
    assert heap.cancel("a") is True
    assert heap.cancel("a") is False
    assert heap.cancel("never") is False
    assert "a" not in heap
    assert len(heap) == 1
    assert heap.next_deadline() == 20.0  # skips the cancelled entry
    assert heap.pop_due(now=100.0) == ["b"]


def test_cancel_then_schedule_again_is_live_at_its_new_time() -> None:
    heap = TimerHeap()
    heap.schedule("a", due=10.0)
    heap.cancel("a")
    heap.schedule("a", due=50.0)
    assert heap.pop_due(now=20.0) == []
    assert heap.next_deadline() == 50.0
    assert heap.pop_due(now=50.0) == ["a"]


def test_next_deadline_of_an_empty_or_all_cancelled_heap_is_none() -> None:
    heap = TimerHeap()
    assert heap.next_deadline() is None
    for i in range(10):
        heap.schedule(f"j{i}", due=float(i))
    for i in range(10):
        heap.cancel(f"j{i}")
    assert heap.next_deadline() is None
    assert heap.pop_due(now=1e9) == []


def test_100k_random_due_times_come_out_sorted_and_complete() -> None:
    rng = random.Random(1234)
    heap = TimerHeap()
    expected: list[tuple[float, str]] = []
    for i in range(100_000):
        due = round(rng.uniform(0.0, 1000.0), 2)  # rounded: plenty of ties too
        job_id = f"job-{i:06d}"
        heap.schedule(job_id, due)
        expected.append((due, job_id))
    assert len(heap) == 100_000
    expected.sort()
    popped: list[str] = []
    now = 0.0
    while now < 1000.0:  # the node's timer firing at increasing times
        now += rng.uniform(0.0, 25.0)
        deadline = heap.next_deadline()
        batch = heap.pop_due(now)
        if batch:
            assert deadline is not None
            assert deadline <= now
        popped.extend(batch)
    popped.extend(heap.pop_due(math.inf))
    assert popped == [job_id for _, job_id in expected]
    assert len(heap) == 0
    assert heap.next_deadline() is None


def test_compaction_keeps_every_live_entry_at_its_latest_time() -> None:
    heap = TimerHeap()
    n = 1000
    for round_ in range(6):  # each job rescheduled 5 times: 6,000 entries, 1,000 live
        for i in range(n):
            heap.schedule(f"j{i}", due=1000.0 + i + round_ * 0.25)
    for i in range(0, n, 2):
        heap.cancel(f"j{i}")
    assert len(heap) == n // 2
    assert heap.pop_due(now=0.0) == []  # nothing due; the heap is compacted on the way
    assert len(heap._heap) <= 4 * len(heap)  # stale entries were dropped
    assert heap.next_deadline() == 1000.0 + 1 + 5 * 0.25
    out = heap.pop_due(now=math.inf)
    assert out == [f"j{i}" for i in range(1, n, 2)]
    assert len(heap) == 0


def test_compaction_during_a_pop_keeps_later_entries() -> None:
    heap = TimerHeap()
    for i in range(200):
        heap.schedule(f"j{i}", due=float(i))
    for i in range(200):
        heap.schedule(f"j{i}", due=float(i) + 0.5)  # 400 entries, 200 live
    first = heap.pop_due(now=149.9)  # pops 150 live; 50 live left vs ~250 entries: compacts
    assert first == [f"j{i}" for i in range(150)]
    assert len(heap) == 50
    assert heap.pop_due(now=math.inf) == [f"j{i}" for i in range(150, 200)]


def test_memory_per_scheduled_job_is_small() -> None:
    """A million delayed jobs must fit well under 1 GiB (issue 3): the heap's share of it."""
    n = 100_000
    ids = [f"{i:024x}" for i in range(n)]  # the ids exist anyway (the node's job table)
    dues = [1_000_000.0 + i * 0.001 for i in range(n)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        heap = TimerHeap()
        for job_id, due in zip(ids, dues, strict=True):
            heap.schedule(job_id, due)
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    per_job = used / n
    assert per_job < 300, f"{per_job:.0f} bytes per scheduled job"
    assert len(heap) == n


# --- ReadyQueue --------------------------------------------------------------------------------


def drain(queue: ReadyQueue) -> list[str]:
    out: list[str] = []
    while (job_id := queue.pop()) is not None:
        out.append(job_id)
    return out


def test_ready_queue_lower_priority_first_then_insertion_order() -> None:
    queue = ReadyQueue()
    queue.push("a", priority=5)
    queue.push("b", priority=0)
    queue.push("c", priority=5)
    queue.push("d", priority=-1)
    queue.push("e", priority=0)
    assert len(queue) == 5
    assert drain(queue) == ["d", "b", "e", "a", "c"]
    assert len(queue) == 0
    assert queue.pop() is None


def test_ready_queue_push_twice_is_one_entry() -> None:
    queue = ReadyQueue()
    queue.push("a")
    queue.push("a")
    assert len(queue) == 1
    assert drain(queue) == ["a"]


def test_ready_queue_remove() -> None:
    queue = ReadyQueue()
    for name in "abc":
        queue.push(name)
    assert queue.remove("b") is True
    assert queue.remove("b") is False
    assert queue.remove("never") is False
    assert "b" not in queue
    assert sorted(queue.ids()) == ["a", "c"]
    assert drain(queue) == ["a", "c"]


def test_ready_queue_re_push_after_remove_pops_once() -> None:
    queue = ReadyQueue()
    queue.push("a")
    queue.remove("a")
    queue.push("a")
    assert len(queue) == 1
    assert queue.pop() == "a"
    assert queue.pop() is None
    assert len(queue) == 0


def test_ready_queue_re_push_after_remove_takes_its_new_place() -> None:
    """A removed job pushed again is ordered by its new priority and push, not the stale one."""
    queue = ReadyQueue()
    queue.push("a", priority=0)
    queue.push("b", priority=0)
    queue.remove("a")
    queue.push("a", priority=0)  # now behind b
    assert drain(queue) == ["b", "a"]

    queue.push("x", priority=0)
    queue.remove("x")
    queue.push("x", priority=5)
    queue.push("y", priority=1)
    assert drain(queue) == ["y", "x"]


# --- timing rules (job.py) ---------------------------------------------------------------------


def test_periodic_due_has_no_drift_over_1000_periods() -> None:
    rng = random.Random(7)
    period, first_due = 0.1, 1_000.0
    due = first_due
    naive = first_due
    for k in range(1, 1001):
        finished = due + rng.uniform(0.0, 0.09)  # each run starts late and takes a while
        due = next_periodic_due(due, period, finished)
        naive = finished + period  # what "period after the run completed" would give
        assert due == pytest.approx(first_due + k * period, abs=1e-6)
    assert due == pytest.approx(first_due + 1000 * period, abs=1e-6)
    assert naive - due > 0.0  # the naive rule drifts later; the grid does not


def test_periodic_due_skips_missed_runs_onto_the_grid() -> None:
    # Busy or down for 3.5 periods: runs at 110, 120, 130 are skipped, not replayed.
    assert next_periodic_due(100.0, 10.0, now=135.0) == 140.0
    assert next_periodic_due(100.0, 10.0, now=199.9) == 200.0
    # Finished exactly on a grid point: that point is due now.
    assert next_periodic_due(100.0, 10.0, now=130.0) == 130.0
    # On time (or early): the next grid point.
    assert next_periodic_due(100.0, 10.0, now=100.0) == 110.0
    assert next_periodic_due(100.0, 10.0, now=95.0) == 110.0
    assert next_periodic_due(100.0, 10.0, now=100.01) == 110.0


def test_periodic_due_sub_second_period() -> None:
    due = 0.0
    for _ in range(10):
        due = next_periodic_due(due, 0.25, now=due + 0.01)
    assert due == pytest.approx(2.5)


def test_retry_delay_linear_and_exponential() -> None:
    assert [retry_delay(a, "linear", 5) for a in (1, 2, 3, 9)] == [5, 10, 15, 45]
    assert retry_delay(3, "linear", 0) == 0
    assert [retry_delay(a, "exponential", 5) for a in (1, 2, 3)] == [6.0, 21.0, 86.0]


# --- arming the loop timer early (uvloop counts whole milliseconds) ---------------------------


def test_timer_lead_says_how_much_is_left_until_the_deadline() -> None:
    assert timer_lead(10.0, 10.0) is None
    assert timer_lead(10.0, 10.5) is None
    left = timer_lead(10.0, 10.0 - LOOP_TIMER_LEAD_S)
    assert left is not None
    assert abs(left - LOOP_TIMER_LEAD_S) < 1e-9
