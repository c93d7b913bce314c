"""Time on a node, pure: one heap of due times, one ready queue (docs/semantics.md §2).

A million delayed jobs are a million small heap entries, not a million asyncio handles: the
node arms a single loop timer for `next_deadline()`. Time is a parameter: callers
pass `now` in loop-clock seconds, so tests use plain numbers and never sleep.

Entries are never removed from the middle: each carries a token, and an entry whose token is
no longer the job's current one (cancelled or rescheduled) is skipped when it surfaces.
"""

from __future__ import annotations

import heapq
import itertools

# How early the node arms its loop timer, so the timer fires before the due time, not up to
# 1.5 ms after it (the rest is waited out turn by turn: see `timer_lead`). uvloop (libuv)
# keeps timers in whole milliseconds on a clock read in whole milliseconds: `call_at(t)`
# rounds `t` to the nearest millisecond (up to 0.5 ms early), and the poll's timeout is
# counted from the current millisecond truncated (the wait overshoots by the part of the
# millisecond already gone, 0-1 ms). With the default asyncio loop the poll rounds up (0-1 ms
# late). Armed 1.5 ms early, the timer fires 0.5-2 ms before the due time.
LOOP_TIMER_LEAD_S = 0.0015


def timer_lead(deadline: float, now: float) -> float | None:
    """Seconds the loop timer fired before `deadline`: None if `deadline` is reached (run
    the due jobs now), else how long is left. The node then waits the rest on the loop's ready
    queue (`call_soon`, I/O keeps flowing), at most `LOOP_TIMER_LEAD_S` plus a millisecond of
    CPU per timer: no sleeping, so no wake-up latency either."""
    return None if now >= deadline else deadline - now


# `(due, job_id)`, or `(due, job_id, packed, meta)` for a job that waits packed: the entry is
# then all the node keeps of it (its record's bytes and an index of the link it came by).
Entry = tuple[float, str] | tuple[float, str, bytes, int]


class TimerHeap:
    """Due times of scheduled jobs.

    An entry is `(due, job_id)` (or the packed form above); the job's live entry is that very
    tuple (compared by identity), so a stale entry costs no token object: this heap holds a
    million jobs.
    """

    def __init__(self) -> None:
        self._heap: list[Entry] = []
        self._live: dict[str, Entry] = {}

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._live

    def schedule(self, job_id: str, due: float, packed: bytes | None = None, meta: int = 0) -> None:
        """(Re)schedule `job_id` at `due`; an earlier schedule of it is forgotten."""
        entry: Entry = (due, job_id) if packed is None else (due, job_id, packed, meta)
        self._live[job_id] = entry
        heapq.heappush(self._heap, entry)

    def entry(self, job_id: str) -> Entry | None:
        return self._live.get(job_id)

    def entries(self) -> list[Entry]:
        return list(self._live.values())

    def cancel(self, job_id: str) -> bool:
        return self._live.pop(job_id, None) is not None

    def peek(self, limit: int) -> list[str]:
        """The `limit` soonest scheduled job ids, soonest first (dashboards)."""
        return [entry[1] for entry in heapq.nsmallest(limit, self._live.values())]

    def next_deadline(self) -> float | None:
        heap, live = self._heap, self._live
        while heap and live.get(heap[0][1]) is not heap[0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def pop_due(self, now: float) -> list[str]:
        """Remove and return, in due order, every job due at or before `now`."""
        return [entry[1] for entry in self.pop_due_entries(now)]

    def pop_due_entries(self, now: float) -> list[Entry]:
        """`pop_due` with the live entries themselves (packed ones carry their bytes)."""
        due: list[Entry] = []
        heap, live = self._heap, self._live
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            if live.get(entry[1]) is entry:
                del live[entry[1]]
                due.append(entry)
        if len(heap) > 64 and len(heap) > 4 * len(live):
            self._compact()
        return due

    def _compact(self) -> None:
        live = self._live
        self._heap = [entry for entry in self._heap if live.get(entry[1]) is entry]
        heapq.heapify(self._heap)


class ReadyQueue:
    """Jobs due now, waiting for a free run slot: by priority (lower first), then due order.

    As in TimerHeap, a job's live entry is that very tuple, so a removed-then-pushed job
    takes its new place and its old entry is skipped.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, str]] = []
        self._seq = itertools.count()
        self._live: dict[str, tuple[int, int, str]] = {}

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._live

    def push(self, job_id: str, priority: int = 0) -> None:
        if job_id not in self._live:
            entry = (priority, next(self._seq), job_id)
            self._live[job_id] = entry
            heapq.heappush(self._heap, entry)

    def remove(self, job_id: str) -> bool:
        return self._live.pop(job_id, None) is not None

    def pop(self) -> str | None:
        heap, live = self._heap, self._live
        while heap:
            entry = heapq.heappop(heap)
            if live.get(entry[2]) is entry:
                del live[entry[2]]
                return entry[2]
        return None

    def ids(self) -> list[str]:
        return list(self._live)
