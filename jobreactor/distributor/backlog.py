"""What is waiting in a distributor and for how long: the queue-latency figures.

`read_backlog` walks the pending jobs once (O(pending), on the loop) and says, per job name
(a metrics label: registered or `unknown`), how many wait, how long the oldest has waited since
it was due, how many are out on nodes, and which wait with no connected node allowed to run
them (no node declared the name and none is connected, the named node is away under
`always_use_specified_node`, or `not_node` excludes every node). It runs when figures are read
(a scrape, `/health`, the registry beat) and on `BacklogWatch`'s timer, never per job.

`BacklogWatch` arms one loop timer (`warn_no_node_after`) while jobs are pending, not a poll of
an idle distributor: when jobs have waited that long with no eligible node it logs a WARNING
once (again only when other names get stuck, and rate-limited), saying what to do.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from jobreactor.distributor.dispatch import BucketKey, Dispatcher, NodeSlot
from jobreactor.distributor.status import Status
from jobreactor.distributor.tracking import Tracker
from jobreactor.ratelimit import RateLimitedLog

logger = logging.getLogger("jobreactor.distributor")

STUCK_NAMES_SHOWN = 10  # names listed in stats and in the warning
FRESH_S = 1.0  # a backlog read is reused this long


@dataclass(slots=True)
class Backlog:
    oldest_s: float = 0.0
    pending_by_name: dict[str, int] = field(default_factory=dict)
    oldest_by_name: dict[str, float] = field(default_factory=dict)
    in_flight_by_name: dict[str, int] = field(default_factory=dict)
    no_node_jobs: int = 0  # pending jobs no connected node may run
    no_node_s: float = 0.0  # how long the oldest of them has been due
    no_node_names: list[str] = field(default_factory=list)

    def stats(self) -> dict[str, Any]:
        """The keys `Distributor.stats()` publishes (metrics.stats_gauges, job_stats read them)."""
        return {
            "oldest_pending_s": round(self.oldest_s, 3),
            "pending_by_name": self.pending_by_name,
            "oldest_by_name": {k: round(v, 3) for k, v in self.oldest_by_name.items()},
            "in_flight_by_name": self.in_flight_by_name,
            "no_node_jobs": self.no_node_jobs,
            "no_node_s": round(self.no_node_s, 3),
            "no_node_names": self.no_node_names,
        }


def eligible(key: BucketKey, nodes: list[NodeSlot], strict_node: bool) -> bool:
    """Could any connected node ever take a job of `key` (credit aside)? Dispatcher's rules."""
    name, node, not_node = key
    if node is not None and node != not_node and any(s.name == node for s in nodes):
        return True
    if node is not None and strict_node:
        return False
    declared = [s for s in nodes if name in s.job_names]
    return any(s.name != not_node for s in declared or nodes)


def read_backlog(
    jobs: Iterable[Any],
    in_flight_names: Iterable[str],
    nodes: list[NodeSlot],
    strict_node: bool,
    label: Callable[[str], str],
) -> Backlog:
    """The backlog of `jobs` (pending) and `in_flight_names`; `label` names a job's series."""
    now = time.time()
    # Keyed by (label, node, not_node): names no node declared are all `unknown` (a node's
    # names are registered), so 100k made-up names make one key, and the same rule decides
    # whether a node may take any of them.
    due: dict[BucketKey, float] = {}  # earliest due time per key
    count: collections.Counter[BucketKey] = collections.Counter()
    labels: dict[str, str] = {}
    for job in jobs:
        name = job.name
        named = labels.get(name)
        if named is None:
            named = labels[name] = label(name)
        key = (named, job.node, job.not_node)
        count[key] += 1
        at = due.get(key)
        if at is None or job.run_at_ts < at:
            due[key] = job.run_at_ts
    out = Backlog()
    stuck: list[str] = []
    for key, at in due.items():
        name, age = key[0], max(0.0, now - at)
        out.pending_by_name[name] = out.pending_by_name.get(name, 0) + count[key]
        out.oldest_by_name[name] = max(out.oldest_by_name.get(name, 0.0), age)
        out.oldest_s = max(out.oldest_s, age)
        if not eligible(key, nodes, strict_node):
            out.no_node_jobs += count[key]
            out.no_node_s = max(out.no_node_s, age)
            if name not in stuck:
                stuck.append(name)
    out.no_node_names = sorted(stuck)[:STUCK_NAMES_SHOWN]
    for name, n in collections.Counter(in_flight_names).items():
        key_name = label(name)
        out.in_flight_by_name[key_name] = out.in_flight_by_name.get(key_name, 0) + n
    return out


class BacklogWatch:
    """Reads a distributor's backlog, and warns when jobs wait with no eligible node.
    `label` is the metrics' (a job name's series); `where` names the distributor in logs."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        tracker: Tracker,
        status: Status,
        *,
        warn_after: float,
        strict_node: bool,
        label: Callable[[str], str],
        where: Callable[[], str],
    ) -> None:
        self._dispatcher = dispatcher
        self._tracker = tracker
        self._status = status
        self._after = warn_after
        self._strict_node = strict_node
        self._label = label
        self._where = where
        self._timer: asyncio.TimerHandle | None = None
        self._warned: set[str] = set()
        self._log = RateLimitedLog(logger, logging.WARNING, 60.0)
        self._last: tuple[float, Backlog] | None = None

    @property
    def idle(self) -> bool:
        """No check is armed (the distributor arms one when jobs are left pending)."""
        return self._timer is None

    def read(self) -> Backlog:
        """The backlog now; a read less than `FRESH_S` old is reused (a scrape, a beat and
        /health in the same second walk the pending jobs once)."""
        now = time.monotonic()
        if self._last is not None and now - self._last[0] < FRESH_S:
            return self._last[1]
        tracker = self._tracker
        backlog = read_backlog(
            self._dispatcher.pending_jobs(),
            tracker.names(),
            self._dispatcher.nodes,
            self._strict_node,
            self._label,
        )
        self._last = (now, backlog)
        return backlog

    def arm(self) -> None:
        if self._after > 0 and self._timer is None and not self._status.closed:
            self._timer = asyncio.get_running_loop().call_later(self._after, self._check)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        self._timer = None
        if self._status.closed or not len(self._dispatcher):
            self._warned.clear()
            return
        backlog = self.read()
        if backlog.no_node_s >= self._after:
            names = set(backlog.no_node_names)
            if not names <= self._warned:
                self._warned |= names
                self._log(
                    "distributor %s: %d job(s) (%s) have waited %.0f s with no connected node "
                    "allowed to run them: start a node that defines these job names and dials "
                    "this distributor (or its discovery group), or check their node / not_node "
                    "options and always_use_specified_node",
                    self._where(),
                    backlog.no_node_jobs,
                    ", ".join(backlog.no_node_names),
                    backlog.no_node_s,
                )
        elif not backlog.no_node_jobs:
            self._warned.clear()
        self.arm()
