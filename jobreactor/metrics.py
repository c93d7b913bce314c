"""Metrics: per-job counters and histograms kept as plain ints, exposed in Prometheus' format.

The hot path pays a dict increment (`METRICS.succeeded[name] += 1`, a `defaultdict(int)`:
a `collections.Counter` costs twice as much)
and, for timings, one `bisect` into a fixed bucket list: well under a microsecond per job
(`python -m bench --only metrics`). prometheus-client only sees these figures at scrape time,
through `JobsCollector`; its own `labels().inc()` costs several times more and takes a lock.

Gauges (pending per distributor, running / scheduled / free credit per node, connected nodes)
are read from the live distributors and nodes of the process when scraped, never maintained.

Owned, not global: a `Reactor` makes its own `JobMetrics` and hands it to the distributors
and nodes it starts (`metrics=`); `METRICS` is only the default of an engine built without one
(eager mode, a bare `Distributor`). What a process shows (`/metrics`, a dashboard mounted in
the app) is `process_metrics()`: every live `JobMetrics` of the process summed, found through
weak references (which metrics objects live here is a true process fact; nothing keeps one
alive). Reset in a forked child: each worker counts its own.

One process, one set of figures. Under a pre-fork server each worker has its own: the
dashboard's `/metrics` in registry mode sums what every live member publishes with its
heartbeat (docs/decisions.md "Observability", across processes), so a scrape never sees one random
worker. A node's own `metrics_port` serves that node process only.

One source per figure: a job's outcomes (succeeded, failed, retried, cancelled) are counted
by the distributor that receives its reports (`count_report`), so a dashboard mounted in the app
is exact with nodes in other processes; a node counts what only it sees (attempts started,
wait and run time, timer lateness). Nothing is counted twice in a process running both.

Label values are registered job names (`register`: declared by a node, or defined in this
process) and node / distributor names, never job ids or args. Any other name counts under
one `unknown` series, so 100k made-up names cost one series, not 100k. The per-name label is
`job_name` (Prometheus owns `job`).
"""

from __future__ import annotations

import bisect
import logging
import os
import secrets
import time
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypedDict

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from jobreactor.definitions import default_registry
from jobreactor.limits import limit_gauges

__all__ = [
    "EVENTS",
    "METRICS",
    "UNKNOWN",
    "Histogram",
    "JobCounts",
    "JobMetrics",
    "JobStats",
    "JobsCollector",
    "job_stats",
    "metrics_registry",
    "process_metrics",
    "reset_all",
]

logger = logging.getLogger("jobreactor.metrics")

UNKNOWN = "unknown"  # the one series every unregistered job name counts under
MAX_NAMES = 2_000  # registered names kept as labels; past it, new names count as unknown

# Seconds. Wait (due → start) and run time span a millisecond to an hour; lateness is small.
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0, 300.0, 1800.0, 3600.0)  # fmt: skip
RUN_BUCKETS = WAIT_BUCKETS
LATENESS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)

# Counter name → help text. `jobreactor_jobs_<event>_total{job_name=...}`.
EVENTS: dict[str, str] = {
    "enqueued": "Jobs accepted by a distributor of this process",
    "dispatched": "Jobs a distributor of this process sent to a node (again after a requeue)",
    "taken_over": "Jobs taken from a node that stayed away past node_grace",
    "started": "Attempts started on a node of this process",
    "succeeded": "Job runs reported successful to a distributor of this process (each run "
    "of a periodic job)",
    "failed": "Jobs reported failed for good (attempts exhausted) to a distributor of this process",
    "retried": "Retry attempts (a failed attempt running again) reported to a distributor of "
    "this process",
    "cancelled": "Jobs reported cancelled to a distributor of this process",
}


PENDING_SAMPLE = 20  # pending jobs a distributor lists in its registry stats


def brief(job: Any) -> dict[str, Any]:
    """A pending job as registry stats list it: no args (size, and they may be private)."""
    return {"id": job.id, "name": job.name, "priority": job.priority, "run_at_ts": job.run_at_ts}


class Histogram:
    """Per key one row: bucket counts with Prometheus `le` semantics (`row[i]` counts values
    in (bounds[i-1], bounds[i]], then +Inf), and last the sum. Not cumulative until exported.
    One list per key, so an observation is one dict lookup, one bisect and two list adds."""

    __slots__ = ("bounds", "rows")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.rows: dict[str, list[float]] = {}

    def observe(self, key: str, value: float, _bisect: Any = bisect.bisect_left) -> None:
        row = self.rows.get(key)
        if row is None:
            row = self.rows[key] = [0] * (len(self.bounds) + 1) + [0.0]
        row[_bisect(self.bounds, value)] += 1
        row[-1] += value

    def counts(self, key: str) -> list[int]:
        """Bucket counts of `key` (not cumulative), +Inf last; [] if never observed."""
        return [int(count) for count in self.rows.get(key, [0.0])[:-1]]

    def total(self, key: str) -> float:
        """Sum of the values observed for `key`."""
        return float(self.rows.get(key, [0.0])[-1])

    def snapshot(self) -> dict[str, Any]:
        return {
            "counts": {key: self.counts(key) for key in self.rows},
            "sums": {key: self.total(key) for key in self.rows},
        }

    def merge(self, other: dict[str, Any]) -> None:
        """Add a `snapshot()` of another process (same buckets) into this one."""
        size = len(self.bounds) + 1
        sums = other.get("sums", {})
        for key, counts in other.get("counts", {}).items():
            if not isinstance(counts, list) or len(counts) != size:
                continue  # other buckets (another version): not addable
            row = self.rows.setdefault(key, [0] * size + [0.0])
            for i, value in enumerate(counts):
                row[i] += int(value)
            row[-1] += float(sums.get(key, 0.0))


class JobMetrics:
    """The figures of one owner (a reactor's distributors and nodes; None when metrics are
    off). `live=False`: a sum or a copy, not counted in `process_metrics()`."""

    def __init__(self, *, live: bool = True) -> None:
        self.enqueued: defaultdict[str, int] = defaultdict(int)
        self.dispatched: defaultdict[str, int] = defaultdict(int)
        self.taken_over: defaultdict[str, int] = defaultdict(int)
        self.started: defaultdict[str, int] = defaultdict(int)
        self.succeeded: defaultdict[str, int] = defaultdict(int)
        self.failed: defaultdict[str, int] = defaultdict(int)
        self.retried: defaultdict[str, int] = defaultdict(int)
        self.cancelled: defaultdict[str, int] = defaultdict(int)
        self.wait = Histogram(WAIT_BUCKETS)  # due (enqueue, for an instant job) → start
        self.run = Histogram(RUN_BUCKETS)  # attempt start → end
        self.lateness = Histogram(LATENESS_BUCKETS)  # a node timer fired this late, by node
        self.members: weakref.WeakSet[Any] = weakref.WeakSet()
        self.known: set[str] = set()  # job names that get their own series (see label)
        # This process's figures, as the registry tells them apart: a fresh id after a reset
        # (a forked child) or a restart, so a dashboard never takes one for the other.
        self.process = secrets.token_hex(8)
        self._over_cap = False
        if live:
            _LIVE.add(self)

    def register(self, names: Iterable[str]) -> None:
        """Job names a node declared or this process defines: each gets its own series."""
        for name in names:
            if name in self.known:
                continue
            if len(self.known) >= MAX_NAMES:
                if not self._over_cap:
                    self._over_cap = True
                    logger.warning(
                        "more than %d job names: further names are counted as %r in metrics",
                        MAX_NAMES,
                        UNKNOWN,
                    )
                return
            self.known.add(name)

    def label(self, name: str) -> str:
        """`name` if registered (or defined in this process's default registry), else
        `unknown`. Hot paths test `name in metrics.known` first and call this on a miss."""
        if name in self.known:
            return name
        if default_registry.get(name) is not None:
            self.register((name,))
            if name in self.known:
                return name
        return UNKNOWN

    def count_report(self, name: str, outcome: str, final: bool, args: dict[str, Any]) -> None:
        """A node's report, checked by the distributor that issued the lease: the one place
        outcomes are counted (a stale or duplicate report never gets here)."""
        key = name if name in self.known else self.label(name)
        if outcome == "success":
            self.succeeded[key] += 1
        elif outcome == "error":
            if final:
                self.failed[key] += 1
        elif outcome == "cancelled":
            self.cancelled[key] += 1
        elif outcome == "started" and args.get("attempt", 1) != 1:
            self.retried[key] += 1

    def counters(self) -> dict[str, defaultdict[str, int]]:
        return {event: getattr(self, event) for event in EVENTS}

    def track(self, member: Any) -> None:
        """A distributor or node whose gauges a scrape reads (weakly held)."""
        self.members.add(member)

    def snapshot(self) -> dict[str, Any]:
        """Plain JSON-able figures, published with the registry heartbeat and summed there."""
        return {
            "process": self.process,
            "at": time.time(),
            "counters": {event: dict(counter) for event, counter in self.counters().items()},
            "wait": self.wait.snapshot(),
            "run": self.run.snapshot(),
            "lateness": self.lateness.snapshot(),
        }

    def merge(self, snapshot: dict[str, Any]) -> None:
        for event, counts in snapshot.get("counters", {}).items():
            if event in EVENTS and isinstance(counts, dict):
                mine = getattr(self, event)
                for name, count in counts.items():
                    mine[str(name)] += int(count)
        for name in ("wait", "run", "lateness"):
            if isinstance(snapshot.get(name), dict):
                getattr(self, name).merge(snapshot[name])

    def job_stats(self, distributors: Iterable[dict[str, Any]]) -> JobStats:
        """`job_stats(self, distributors)`: the `/api/stats` figures (see there)."""
        return job_stats(self, distributors)

    def reset(self) -> None:
        """Forget every figure (tests; a forked child starting afresh)."""
        members, known = self.members, self.known
        self.__init__(live=self in _LIVE)  # type: ignore[misc]
        self.members, self.known = members, known


# Every JobMetrics alive in this process, weakly held: what `process_metrics()` sums.
_LIVE: weakref.WeakSet[JobMetrics] = weakref.WeakSet()
# The default of engines built without an owner (eager mode, a bare Distributor or Node).
METRICS = JobMetrics()
# This process's id for a sum of several owners' figures (drawn again in a forked child).
_PROCESS_ID = [secrets.token_hex(8)]


def process_metrics() -> JobMetrics:
    """This process's figures now: every live JobMetrics in use summed (their members and
    known names too). The only one in use, itself; none, METRICS; else a sum (not live)."""
    owners = [metrics for metrics in list(_LIVE) if _in_use(metrics)]
    if len(owners) <= 1:
        return owners[0] if owners else METRICS
    total = JobMetrics(live=False)
    total.process = _PROCESS_ID[0]
    for metrics in owners:
        total.merge(metrics.snapshot())
        total.members.update(metrics.members)
        total.known |= metrics.known
    return total


def _in_use(metrics: JobMetrics) -> bool:
    """Held by a live engine, or has counted something."""
    return bool(metrics.members) or any(any(c.values()) for c in metrics.counters().values())


def reset_all() -> None:
    """Forget the figures of every live JobMetrics of this process (tests; a forked child)."""
    for metrics in list(_LIVE):
        metrics.reset()


def _after_fork_in_child() -> None:
    reset_all()  # a forked worker counts its own jobs, under process ids of its own
    _PROCESS_ID[0] = secrets.token_hex(8)


os.register_at_fork(after_in_child=_after_fork_in_child)


def totals(metrics: JobMetrics) -> dict[str, int]:
    """Each counter summed over job names: what the overview chart and `jobs stats` show."""
    return {event: sum(counter.values()) for event, counter in metrics.counters().items()}


class JobCounts(TypedDict):
    """The figures of one job name (or of all of them): what `GET <mount>/api/stats` shows."""

    succeeded: int
    failed: int
    retried: int
    enqueued: int
    pending: int
    in_flight: int
    oldest_pending_s: float


class JobStats(JobCounts):
    """`JobCounts` over every name, and per name under `jobs` (`job_stats`)."""

    jobs: dict[str, JobCounts]


def _counts() -> JobCounts:
    return JobCounts(
        succeeded=0, failed=0, retried=0, enqueued=0, pending=0, in_flight=0, oldest_pending_s=0.0
    )


def job_stats(metrics: JobMetrics, distributors: Iterable[dict[str, Any]]) -> JobStats:
    """The pinned `/api/stats` figures: counters from `metrics` (one process's, or the
    registry's sum: `JobMetrics.merge`), queue figures from distributors' `stats()` dicts
    (live, or as published in the registry). Names are labels: registered, or `unknown`."""
    per_name: dict[str, JobCounts] = {}

    def row(name: str) -> JobCounts:
        found = per_name.get(name)
        if found is None:
            found = per_name[name] = _counts()
        return found

    for event in ("succeeded", "failed", "retried", "enqueued"):
        for name, count in getattr(metrics, event).items():
            row(name)[event] += int(count)
    for d in distributors:
        for name, count in (d.get("pending_by_name") or {}).items():
            row(name)["pending"] += int(count)
        for name, count in (d.get("in_flight_by_name") or {}).items():
            row(name)["in_flight"] += int(count)
        for name, age in (d.get("oldest_by_name") or {}).items():
            current = row(name)
            current["oldest_pending_s"] = max(current["oldest_pending_s"], float(age))
    total = _counts()
    for counts in per_name.values():
        for key in ("succeeded", "failed", "retried", "enqueued", "pending", "in_flight"):
            total[key] += counts[key]
        total["oldest_pending_s"] = max(total["oldest_pending_s"], counts["oldest_pending_s"])
    return JobStats(**total, jobs=dict(sorted(per_name.items())))


Gauge = tuple[str, dict[str, str], float]
GaugeReader = Callable[[], Iterable[Gauge]]


def stats_gauges(
    distributors: Iterable[dict[str, Any]], nodes: Iterable[dict[str, Any]]
) -> list[Gauge]:
    """(metric, labels, value) from `Distributor.stats()` / `Node.stats()` dicts: the same
    figures whether read from live objects or from the registry."""
    out: list[Gauge] = []
    for d in distributors:
        labels = {"distributor": str(d.get("address", ""))}
        out.append(("distributor_pending", labels, float(d.get("pending", 0))))
        out.append(("distributor_in_flight", labels, float(d.get("in_flight", 0))))
        out.append(("distributor_connected_nodes", labels, float(len(d.get("nodes", [])))))
        out.append(("no_eligible_node_jobs", labels, float(d.get("no_node_jobs", 0))))
        out.append(("no_eligible_node_seconds", labels, float(d.get("no_node_s", 0.0))))
        for name, age in sorted((d.get("oldest_by_name") or {}).items()):
            out.append(("oldest_pending_seconds", {**labels, "job_name": name}, float(age)))
        for name, count in sorted((d.get("pending_by_name") or {}).items()):
            out.append(("pending_jobs", {**labels, "job_name": name}, float(count)))
    nodes = list(nodes)
    for n in nodes:
        labels = {"node": str(n.get("name", ""))}
        for key in ("held", "running", "scheduled", "free_credit"):
            out.append((f"node_{key}", labels, float(n.get(key, 0))))
    out += limit_gauges(nodes)
    return out


def member_gauges(members: Iterable[Any]) -> list[Gauge]:
    """Gauges of live distributors and nodes of this process, read now."""
    live = [
        m for m in members if not (getattr(m, "closed", False) or getattr(m, "_stopping", False))
    ]
    return stats_gauges(
        [m.stats() for m in live if hasattr(m, "dispatcher")],
        [m.stats() for m in live if not hasattr(m, "dispatcher")],
    )


GAUGE_HELP = {
    "distributor_pending": "Jobs waiting in a distributor for a node",
    "distributor_in_flight": "Jobs a distributor sent out and has not heard the end of",
    "distributor_connected_nodes": "Nodes connected to a distributor",
    "node_held": "Jobs a node holds (running, due, scheduled)",
    "node_running": "Attempts running on a node",
    "node_scheduled": "Jobs waiting on a node's timers (delayed, periodic, retries)",
    "node_free_credit": "Jobs a node would take now (its credit window minus what it holds)",
    "limit_waiting": "Jobs waiting on a node for a limit's slot, per job and key (README Limits)",
    "oldest_pending_seconds": "Age (since due) of the oldest job waiting in a distributor for "
    "a node, per job name",
    "pending_jobs": "Jobs waiting in a distributor for a node, per job name",
    "no_eligible_node_jobs": "Pending jobs no connected node may run (name, node, not_node)",
    "no_eligible_node_seconds": "Age of the oldest pending job no connected node may run",
}


def _histogram(name: str, doc: str, hist: Histogram, label: str) -> HistogramMetricFamily:
    family = HistogramMetricFamily(f"jobreactor_{name}", doc, labels=[label])
    edges = [*(repr(float(b)) for b in hist.bounds), "+Inf"]
    for key in sorted(hist.rows):
        running, buckets = 0, []
        for edge, count in zip(edges, hist.counts(key), strict=True):
            running += count
            buckets.append((edge, float(running)))
        family.add_metric([key], buckets, hist.total(key))
    return family


class JobsCollector(Collector):
    """Exposes a JobMetrics (and gauges) to prometheus-client at scrape time; None: the
    process's figures (`process_metrics()`), read at each scrape."""

    def __init__(
        self, metrics: JobMetrics | None = None, gauge_reader: GaugeReader | None = None
    ) -> None:
        self.metrics = metrics
        self._gauge_reader = gauge_reader

    def _read_gauges(self, metrics: JobMetrics) -> list[Gauge]:
        if self._gauge_reader is not None:
            return list(self._gauge_reader())
        return member_gauges(metrics.members)

    def collect(self) -> Iterator[Metric]:
        metrics = self.metrics if self.metrics is not None else process_metrics()
        for event, counter in metrics.counters().items():
            counts = CounterMetricFamily(
                f"jobreactor_jobs_{event}", EVENTS[event], labels=["job_name"]
            )
            for name, count in sorted(counter.items()):
                counts.add_metric([name], float(count))
            yield counts
        yield _histogram("job_wait_seconds", "Due (enqueued) to start", metrics.wait, "job_name")
        yield _histogram("job_run_seconds", "One attempt, start to end", metrics.run, "job_name")
        yield _histogram(
            "timer_lateness_seconds",
            "Node timer fired after its deadline",
            metrics.lateness,
            "node",
        )
        by_name: dict[str, GaugeMetricFamily] = {}
        for name, labels, value in self._read_gauges(metrics):
            family = by_name.get(name)
            if family is None:
                family = GaugeMetricFamily(
                    f"jobreactor_{name}", GAUGE_HELP.get(name, name), labels=sorted(labels)
                )
                by_name[name] = family
            family.add_metric([labels[k] for k in sorted(labels)], value)
        yield from by_name.values()


def metrics_registry(
    metrics: JobMetrics | None = None, gauge_reader: GaugeReader | None = None
) -> CollectorRegistry:
    """A private registry (not prometheus-client's global one) holding a JobsCollector of
    `metrics` (default: the process's figures, `process_metrics()`)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(JobsCollector(metrics, gauge_reader=gauge_reader))
    return registry
