"""Metrics: per-job counters and histograms kept as plain ints, exposed in Prometheus' format.

The hot path pays a dict increment (`METRICS.succeeded[name] += 1`, a `defaultdict(int)`:
a `collections.Counter` costs twice as much)
and, for timings, one `bisect` into a fixed bucket list: well under a microsecond per job
(`python -m bench --only metrics`). prometheus-client only sees these figures at scrape time,
through `JobsCollector`; its own `labels().inc()` costs several times more and takes a lock.

Gauges (pending per distributor, running / scheduled / free credit per node, connected nodes)
are read from the live distributors and nodes of the process when scraped, never maintained.

One process, one set of figures. Under a pre-fork server each worker has its own: the
dashboard's `/metrics` in registry mode sums what every live member publishes with its
heartbeat (docs/decisions.md "Observability", across processes), so a scrape never sees one random
worker. A node's own `metrics_port` serves that node process only.

Label values are job names (the ones a node or distributor knows) and node / distributor
names: bounded by configuration, never job ids or args.
"""

from __future__ import annotations

import bisect
import threading
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from jobreactor.limits import limit_gauges

__all__ = [
    "EVENTS",
    "METRICS",
    "Histogram",
    "JobMetrics",
    "JobsCollector",
    "MetricsServer",
    "metrics_registry",
]

# Seconds. Wait (due → start) and run time span a millisecond to an hour; lateness is small.
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0, 300.0, 1800.0, 3600.0)  # fmt: skip
RUN_BUCKETS = WAIT_BUCKETS
LATENESS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)

# Counter name → help text. `jobreactor_jobs_<event>_total{job=...}`.
EVENTS: dict[str, str] = {
    "enqueued": "Jobs accepted by a distributor of this process",
    "dispatched": "Jobs a distributor of this process sent to a node (again after a requeue)",
    "taken_over": "Jobs taken from a node that stayed away past node_grace",
    "started": "Attempts started on a node of this process",
    "succeeded": "Jobs whose chain ended without an error (each run of a periodic job)",
    "failed": "Jobs failed for good (attempts exhausted)",
    "retried": "Failed attempts scheduled to run again",
    "cancelled": "Jobs cancelled on a node (JR.cancel, CancelJob, skipped)",
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
    """The figures of one process. Distributors and nodes hold it (None when metrics are off)."""

    def __init__(self) -> None:
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
        self.lateness = Histogram(LATENESS_BUCKETS)  # a node timer fired this late
        self.members: weakref.WeakSet[Any] = weakref.WeakSet()

    def counters(self) -> dict[str, defaultdict[str, int]]:
        return {event: getattr(self, event) for event in EVENTS}

    def track(self, member: Any) -> None:
        """A distributor or node whose gauges a scrape reads (weakly held)."""
        self.members.add(member)

    def snapshot(self) -> dict[str, Any]:
        """Plain JSON-able figures, published with the registry heartbeat and summed there."""
        return {
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

    def reset(self) -> None:
        """Forget every figure (tests; a forked child starting afresh)."""
        members = self.members
        self.__init__()  # type: ignore[misc]
        self.members = members


METRICS = JobMetrics()


def totals(metrics: JobMetrics) -> dict[str, int]:
    """Each counter summed over job names: what the overview chart and `jobs stats` show."""
    return {event: sum(counter.values()) for event, counter in metrics.counters().items()}


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
}


def _histogram(name: str, doc: str, hist: Histogram) -> HistogramMetricFamily:
    family = HistogramMetricFamily(f"jobreactor_{name}", doc, labels=["job"])
    edges = [*(repr(float(b)) for b in hist.bounds), "+Inf"]
    for key in sorted(hist.rows):
        running, buckets = 0, []
        for edge, count in zip(edges, hist.counts(key), strict=True):
            running += count
            buckets.append((edge, float(running)))
        family.add_metric([key], buckets, hist.total(key))
    return family


class JobsCollector(Collector):
    """Exposes a JobMetrics (and gauges) to prometheus-client at scrape time."""

    def __init__(self, metrics: JobMetrics, gauge_reader: GaugeReader | None = None) -> None:
        self.metrics = metrics
        self._gauge_reader = gauge_reader

    def _read_gauges(self) -> list[Gauge]:
        if self._gauge_reader is not None:
            return list(self._gauge_reader())
        return member_gauges(self.metrics.members)

    def collect(self) -> Iterator[Metric]:
        for event, counter in self.metrics.counters().items():
            counts = CounterMetricFamily(f"jobreactor_jobs_{event}", EVENTS[event], labels=["job"])
            for job, count in sorted(counter.items()):
                counts.add_metric([job], float(count))
            yield counts
        yield _histogram("job_wait_seconds", "Due (enqueued) to start", self.metrics.wait)
        yield _histogram("job_run_seconds", "One attempt, start to end", self.metrics.run)
        yield _histogram(
            "timer_lateness_seconds", "Node timer fired after its deadline", self.metrics.lateness
        )
        by_name: dict[str, GaugeMetricFamily] = {}
        for name, labels, value in self._read_gauges():
            family = by_name.get(name)
            if family is None:
                family = GaugeMetricFamily(
                    f"jobreactor_{name}", GAUGE_HELP.get(name, name), labels=sorted(labels)
                )
                by_name[name] = family
            family.add_metric([labels[k] for k in sorted(labels)], value)
        yield from by_name.values()


def metrics_registry(
    metrics: JobMetrics = METRICS, gauge_reader: GaugeReader | None = None
) -> CollectorRegistry:
    """A private registry (not prometheus-client's global one) holding a JobsCollector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(JobsCollector(metrics, gauge_reader=gauge_reader))
    return registry


class MetricsServer:
    """A node's opt-in `metrics_port`: `/metrics` (this process) and `/health` (liveness).

    A plain threading HTTP server in a daemon thread, off the event loop: a scrape never
    delays a job (`gauge_reader` should hop onto the loop to read the gauges). `/health`
    answers 200 while `alive()` says so, else 503.
    """

    def __init__(
        self,
        host: str,
        port: int,
        alive: Callable[[], bool] | None = None,
        gauge_reader: GaugeReader | None = None,
    ) -> None:
        registry = metrics_registry(gauge_reader=gauge_reader)
        is_alive = alive or (lambda: True)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, CONTENT_TYPE_LATEST, generate_latest(registry))
                elif path in ("/health", "/healthz"):
                    ok = bool(is_alive())
                    self._send(200 if ok else 503, "text/plain", b"ok\n" if ok else b"down\n")
                else:
                    self._send(404, "text/plain", b"not found: /metrics or /health\n")

            def _send(self, code: int, ctype: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return None  # scrapes every few seconds would flood the log

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="jobreactor-metrics", daemon=True
        )

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
