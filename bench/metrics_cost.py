"""`--only metrics`: what per-job metrics cost (issue 11: at most ~1 µs per job).

Two figures, both in this process with memory storage:
- the hooks alone: the exact counter increments and histogram observations one successful
  job goes through (enqueued, dispatched, started + wait, run time, succeeded), timed in a
  tight loop, against the same loop with metrics off (the `is not None` checks only);
- end to end: N no-op jobs through a distributor and a memory node of one reactor, metrics
  on vs off, alternated and the best of three rounds each (noisy on a shared machine: the
  difference is within run-to-run noise unless it is larger than it).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from bench.context import Context
from bench.report import SKIPPED, Fig
from jobreactor import Reactor, Registry
from jobreactor.metrics import JobMetrics

Figs = dict[str, Fig]
ROUNDS = 3
HOOK_LOOPS = 200_000


def _hooks(metrics: JobMetrics | None, loops: int) -> float:
    """Seconds per job for the per-job metric work (None: metrics off, only the checks).
    As the code does it: distributor enqueued, dispatched and the outcome of the report
    (count_report); node started + wait and run time, each name checked against the
    registered names (`known`)."""
    name, due = "send_mail", time.time()
    if metrics is not None:
        metrics.register([name])
    report_args: dict[str, Any] = {}
    t0 = time.perf_counter()
    for _ in range(loops):
        if metrics is not None:
            metrics.enqueued[name if name in metrics.known else metrics.label(name)] += 1
        if metrics is not None:
            metrics.dispatched[name if name in metrics.known else metrics.label(name)] += 1
        start = time.time()
        if metrics is not None:
            key = name if name in metrics.known else metrics.label(name)
            metrics.started[key] += 1
            metrics.wait.observe(key, start - due)
        if metrics is not None:
            key = name if name in metrics.known else metrics.label(name)
            metrics.run.observe(key, time.time() - start)
        if metrics is not None:
            if name in metrics.known:
                metrics.succeeded[name] += 1
            else:
                metrics.count_report(name, "success", True, report_args)
    return (time.perf_counter() - t0) / loops


def _end_to_end(n: int, metrics: bool) -> float:
    """Jobs per second through one in-process distributor and memory node."""
    registry = Registry()

    @registry.job("noop")
    def noop(args: dict[str, Any]) -> None:
        return None

    reactor = Reactor(
        metrics=metrics, logger_method="WARNING", log_job_processing=False, prefetch=900
    )
    reactor.run()
    try:
        reactor.start_distributor("127.0.0.1", 0)
        address = ("127.0.0.1", reactor.distributor.address_port())
        reactor.start_node("bench", "memory", [address], registry=registry)
        done = threading.Event()
        count = [0]
        lock = threading.Lock()

        def success(args: dict[str, Any]) -> None:
            with lock:
                count[0] += 1
                if count[0] == n:
                    done.set()

        t0 = time.perf_counter()
        reactor.enqueue_many([("noop", {}, None)] * n, success=success)
        if not done.wait(max(60.0, n * 0.002)):
            raise RuntimeError(f"only {count[0]} of {n} jobs finished")
        return n / (time.perf_counter() - t0)
    finally:
        reactor.stop(timeout=10)


def metrics_cost(ctx: Context, storage: str, figs: Figs | None = None) -> Figs:
    figs = {} if figs is None else figs
    if storage != "memory":
        figs["na"] = Fig("", "measured once, with memory storage", None, status=SKIPPED)
        return figs
    on = min(_hooks(JobMetrics(), HOOK_LOOPS) for _ in range(ROUNDS))
    off = min(_hooks(None, HOOK_LOOPS) for _ in range(ROUNDS))
    case = "hooks of one successful job"
    figs["hooks_on"] = Fig(case, "metrics on", round(on * 1e9), "ns/job", target="≤ 1000 ns")
    figs["hooks_off"] = Fig(case, "metrics off", round(off * 1e9), "ns/job")
    figs["hooks_cost"] = Fig(case, "cost", round((on - off) * 1e9), "ns/job", target="≤ 1000 ns")
    n = min(ctx.params.n, 50_000)
    rates: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(ROUNDS):
        for enabled in (False, True):
            rates[enabled].append(_end_to_end(n, enabled))
    best_on, best_off = max(rates[True]), max(rates[False])
    case = f"{n:,} no-op jobs, in-process memory node, best of {ROUNDS}"
    figs["e2e_on"] = Fig(case, "metrics on", round(best_on), "jobs/s")
    figs["e2e_off"] = Fig(case, "metrics off", round(best_off), "jobs/s")
    figs["e2e_cost"] = Fig(
        case,
        "cost per job",
        round((1 / best_on - 1 / best_off) * 1e6, 2),
        "µs/job",
        target="≤ 1 µs",
        note="on − off of the best rounds; within noise when near 0 (or negative)",
    )
    return figs
