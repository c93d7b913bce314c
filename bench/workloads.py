"""The five workloads of issue 6. Each fills and returns a dict of `Fig`s (one table row each).

The app side is this process: an in-process `Reactor` (distributor on a loop thread), jobs
enqueued from a plain thread through `Reactor.enqueue` with a success feedback. Nodes are
separate processes started through the CLI (`bench.harness.NodeProcess`).
"""

from __future__ import annotations

import functools
import gc
import queue
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from bench.context import Context
from bench.harness import (
    BenchError,
    BenchTimeout,
    Cluster,
    RedisServer,
    bounded,
    proc_cpu_s,
    rss_bytes,
    self_cpu_s,
    wait_until,
)
from bench.metrics_cost import metrics_cost
from bench.report import FAILED, INVALID, SKIPPED, Fig, percentile

Figs = dict[str, Fig]

NOOP = "bench_noop"
STAMP = "bench_stamp"
REDIS_BODY = "bench_redis_body"
IDS_KEY = "bench:ids"
DONE_KEY = "bench:done"
EARLY_TOLERANCE_S = 0.001  # clock noise: a start less than 1 ms before its due time is not early

# Best peer per figure: shared/bench-peers/RESULTS.md (medians of 3 passes, N=20000, this
# machine kind). Static reference only; run the peers' harness for a same-run comparison.
PEER = {
    "enqueue": "5,438 (dramatiq)",
    "body_drain": "2,397 (taskiq)",
    "noop_cost": "≈380-410 µs excl. body",
    "start_p50": "0.83 ms (saq)",
    "start_p99": "1.18 ms (taskiq)",
    "idle_start_p50": "1.4 ms (taskiq)",
    "burst_p50": "32.5 ms (celery)",
    "burst_p99": "47.4 ms (celery)",
    "burst_max": "47.8 ms (celery)",
    "sparse_p50": "2.2 ms (celery)",
    "sparse_p99": "3.0 ms (celery)",
    "sparse_max": "3.0 ms (celery)",
}
# The best peer on the peers' async-body workload, measured in one run with ours (issue 13).
BEST_PEER_BODY_RATE = 2_307
# Targets of issues 6 and 13, per storage where they differ (issue 13's where it set one).
TARGET = {
    "enqueue": "≥ 100,000",
    ("noop_e2e", "memory"): "≥ 50,000",
    ("noop_e2e", "redis"): "≥ ~15,000 (6x less than peers)",
    ("noop_cost", "memory"): "≤ 15",
    ("noop_cost", "redis"): "≤ 25",
    ("body_e2e", "memory"): "≥ 10,382 (4.5x best peer)",
    ("body_e2e", "redis"): "≥ 8,075 (3.5x best peer)",
    "start_p50": "≤ 0.3",
    "sparse_p99": "≤ 1.5",
    "burst_p99": "≤ 10",
    "early": "0",
    "memory": "≤ 400 at 10⁶",
    "app_memory": "≤ 300",
    "idle": "≈ 0",
}


def _ms(seconds: float) -> float:
    return seconds * 1000.0


def _fail(figs: Figs, case: str, exc: BaseException) -> None:
    figs[f"{case}/failed"] = Fig(case, "run", None, status=FAILED, note=_reason(exc))


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if not isinstance(exc, BenchError):
        text = f"{type(exc).__name__}: {text}"
    return text[:300]


def _cluster_cpu(cluster: Cluster) -> float:
    return self_cpu_s() + sum(proc_cpu_s(pid) for pid in cluster.node_pids())


class _Collector:
    """Success/error feedbacks of a batch, counted on the reactor's loop thread."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.ok = 0
        self.errors = 0
        self.error_args: list[dict[str, Any]] = []
        self.items: list[tuple[float, dict[str, Any]]] = []
        self.done = threading.Event()

    def success(self, args: dict[str, Any]) -> None:
        self.items.append((time.perf_counter(), args))
        self.ok += 1
        if self.ok + self.errors >= self.expected:
            self.done.set()

    def error(self, args: dict[str, Any]) -> None:
        self.errors += 1
        if len(self.error_args) < 5:
            self.error_args.append(args)
        if self.ok + self.errors >= self.expected:
            self.done.set()

    @property
    def arrived(self) -> int:
        return self.ok + self.errors

    def wait(self, timeout: float, what: str, bar: Any = None, stall_s: float = 20.0) -> None:
        """Until every feedback arrived; BenchTimeout on the deadline or `stall_s` of silence."""
        deadline = time.monotonic() + timeout
        last, last_change = -1, time.monotonic()
        while not self.done.wait(0.1):
            now = time.monotonic()
            if self.arrived != last:
                last, last_change = self.arrived, now
                if bar is not None:
                    bar.update(last)
            if now > deadline or now - last_change > stall_s:
                why = "deadline" if now > deadline else f"no feedback for {stall_s:g} s"
                raise BenchTimeout(
                    f"{what}: {self.arrived}/{self.expected} feedbacks ({why}, {timeout:g} s max)"
                )
        if bar is not None:
            bar.update(self.arrived)
        if self.errors:
            raise BenchError(f"{what}: {self.errors} job(s) failed, e.g. {self.error_args[:1]}")


def _warm_up(cluster: Cluster, name: str, count: int, opts: dict[str, Any] | None = None) -> None:
    """Run `count` jobs through the whole path and wait for them (imports, connections, pools)."""
    col = _Collector(count)
    for i in range(count):
        cluster.reactor.enqueue(name, {"i": i, "warm": True}, opts, success=col.success,
                                error=col.error)  # fmt: skip
    col.wait(30, f"warm-up ({count} x {name})", stall_s=15)


# --- 1. throughput --------------------------------------------------------------------------


def throughput(ctx: Context, storage: str, figs: Figs | None = None) -> Figs:
    """N jobs, enqueue rate and end-to-end rate, no-op and peers' body, with 1 and 2 nodes."""
    figs = {} if figs is None else figs
    redis, no_redis = ctx.redis_or_reason()
    with ctx.cluster(storage, "throughput") as cluster:
        for nodes in (1, 2):
            if nodes == 2:
                cluster.add_node()
            for body, label in ((NOOP, "no-op"), (REDIS_BODY, "peers' body")):
                case = f"{label}, {nodes} node{'s' if nodes > 1 else ''}"
                if body == REDIS_BODY and redis is None:
                    figs[f"{case}/skipped"] = Fig(
                        case, "end-to-end", None, status=SKIPPED, note=f"skipped: {no_redis}"
                    )
                    continue
                try:
                    _throughput_case(ctx, cluster, storage, body, case, redis, figs)
                except BenchError as exc:
                    _fail(figs, case, exc)
                    cluster.check_nodes()  # a dead node ends the workload: the rest would fail
    return figs


def _throughput_case(
    ctx: Context,
    cluster: Cluster,
    storage: str,
    body: str,
    case: str,
    redis: RedisServer | None,
    figs: Figs,
) -> None:
    n = ctx.params.n
    reactor = cluster.reactor
    _warm_up(cluster, body, min(ctx.params.warmup, n))
    if body == REDIS_BODY:
        assert redis is not None
        redis.client.delete(IDS_KEY, DONE_KEY)

    counts = bytearray(n)
    state = {"ok": 0, "errors": 0, "bad": 0, "t_last": 0.0}
    done = threading.Event()
    bad_args: list[Any] = []

    def success(args: dict[str, Any]) -> None:
        i = args.get("i")
        if type(i) is int and 0 <= i < n:
            if counts[i] < 255:
                counts[i] += 1
        else:
            state["bad"] += 1
            if len(bad_args) < 3:
                bad_args.append(args)
        state["ok"] += 1
        if state["ok"] + state["errors"] == n:
            state["t_last"] = time.perf_counter()
            done.set()

    def error(args: dict[str, Any]) -> None:
        state["errors"] += 1
        if state["ok"] + state["errors"] == n:
            state["t_last"] = time.perf_counter()
            done.set()

    ids: list[str | None] = [None] * n
    enq: dict[str, Any] = {}
    enq_bar = ctx.bar(f"{storage}: throughput {case}: enqueue", n)
    fb_bar = ctx.bar(f"{storage}: throughput {case}: feedback", n)

    def enqueue_all() -> None:
        enqueue = reactor.enqueue
        try:
            t0 = time.perf_counter()
            enq["t0"] = t0
            for i in range(n):
                ids[i] = enqueue(body, {"i": i}, success=success, error=error).id
                if not i & 4095:
                    enq_bar.update(i)
            enq["t1"] = time.perf_counter()
        except BaseException as exc:  # noqa: BLE001 -- reported by the waiting thread
            enq["error"] = exc
        enq_bar.update(n if "t1" in enq else 0)

    gc.collect()
    cpu0 = _cluster_cpu(cluster)
    thread = threading.Thread(target=enqueue_all, name="bench-enqueue", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60 + n * 0.002
    last, last_change = -1, time.monotonic()
    while not done.wait(0.1):
        arrived = state["ok"] + state["errors"]
        fb_bar.update(arrived)
        now = time.monotonic()
        if "error" in enq:
            raise BenchError(f"enqueue raised {_reason(enq['error'])}")
        if arrived != last:
            last, last_change = arrived, now
        elif now - last_change > 20 and not thread.is_alive():
            raise BenchTimeout(f"stalled: {arrived}/{n} feedbacks, none for 20 s")
        if now > deadline:
            raise BenchTimeout(f"{arrived}/{n} feedbacks after {60 + n * 0.002:g} s")
    cpu1 = _cluster_cpu(cluster)
    fb_bar.update(n)
    thread.join(10)
    if "t1" not in enq:
        raise BenchError(f"enqueue loop did not finish: {enq.get('error')!r}")
    time.sleep(0.3)  # late duplicates would arrive now

    missing = counts.count(0)
    dups = sum(c - 1 for c in counts if c > 1)
    unique_ids = len(set(ids)) == n and None not in ids
    problems = []
    if missing:
        problems.append(f"{missing} without feedback")
    if dups:
        problems.append(f"{dups} duplicate feedbacks")
    if state["errors"]:
        problems.append(f"{state['errors']} error feedbacks")
    if state["bad"]:
        problems.append(f"{state['bad']} feedbacks without a valid index, e.g. {bad_args[:1]}")
    if not unique_ids:
        problems.append("job ids not unique")
    if body == REDIS_BODY:
        assert redis is not None
        scard = int(redis.client.scard(IDS_KEY))
        ran = int(redis.client.get(DONE_KEY) or 0)
        if scard != n:
            problems.append(f"SCARD {scard} != {n}")
        if ran != n:
            problems.append(f"body ran {ran} times for {n} jobs")
    verified = not problems

    enqueue_s = enq["t1"] - enq["t0"]
    e2e_s = state["t_last"] - enq["t0"]
    e2e_rate = n / e2e_s
    status = "ok" if verified else INVALID
    noop = body == NOOP
    kind = "noop" if noop else "body"
    one = case.endswith(" 1 node")
    figs[f"{case}/enqueue"] = Fig(
        case, "enqueue rate (app thread)", n / enqueue_s, "jobs/s",
        target=TARGET["enqueue"], peer=PEER["enqueue"],
    )  # fmt: skip
    figs[f"{case}/e2e"] = Fig(
        case, "end-to-end rate (all feedbacks in)", e2e_rate, "jobs/s",
        target=TARGET.get((f"{kind}_e2e", storage), "") if one else "",
        peer=PEER["body_drain"] if not noop and one else "",
        status=status, note="; ".join(problems),
    )  # fmt: skip
    if not noop and one:
        figs[f"{case}/x_peer"] = Fig(
            case, "end-to-end rate × best peer", e2e_rate / BEST_PEER_BODY_RATE, "×",
            target="≥ 4.5" if storage == "memory" else "≥ 3.5",
            note=f"best peer: taskiq {BEST_PEER_BODY_RATE:,} jobs/s on this workload (issue 13)",
            status=status,
        )  # fmt: skip
    figs[f"{case}/per_job"] = Fig(
        case, "wall time per job", 1e6 / e2e_rate, "µs",
        target=TARGET.get(("noop_cost", storage), "") if noop and one else "",
        peer=PEER["noop_cost"] if noop and one else "", status=status,
    )  # fmt: skip
    figs[f"{case}/cpu"] = Fig(
        case, "CPU per job (app + nodes)", (cpu1 - cpu0) * 1e6 / n, "µs",
        note=f"{len(cluster.nodes)} node process(es), N={n:,}",
    )  # fmt: skip
    figs[f"{case}/verified"] = Fig(
        case, "every job ran, one feedback each", "yes" if verified else "NO", "",
        status="ok" if verified else INVALID, note="; ".join(problems),
    )  # fmt: skip


# --- 2. latency -----------------------------------------------------------------------------


def latency(ctx: Context, storage: str, figs: Figs | None = None) -> Figs:
    """One job at a time on an idle node: enqueue→start and enqueue→feedback, p50/p99."""
    figs = {} if figs is None else figs
    p = ctx.params
    cluster = ctx.shared_cluster(storage)
    reactor = cluster.reactor
    replies: queue.SimpleQueue[tuple[float, dict[str, Any], bool]] = queue.SimpleQueue()

    def success(args: dict[str, Any]) -> None:
        replies.put((time.perf_counter(), args, True))

    def error(args: dict[str, Any]) -> None:
        replies.put((time.perf_counter(), args, False))

    def one(k: int) -> tuple[float, float]:
        t0_wall = time.time()
        t0 = time.perf_counter()
        reactor.enqueue(STAMP, {"k": k}, success=success, error=error)
        try:
            t_fb, args, ok = replies.get(timeout=10)
        except queue.Empty:
            raise BenchTimeout(f"job {k}: no feedback within 10 s") from None
        if not ok or args.get("k") != k or "started" not in args:
            raise BenchError(f"job {k}: unexpected feedback {args!r} (success={ok})")
        return _ms(args["started"] - t0_wall), _ms(t_fb - t0)

    for k in range(20):  # warm-up
        one(-1 - k)
    starts, feedbacks = [], []
    bar = ctx.bar(f"{storage}: latency back-to-back", p.latency_samples)
    for k in range(p.latency_samples):
        s, f = one(k)
        starts.append(s)
        feedbacks.append(f)
        if not k % 20:
            bar.update(k)
    bar.done()
    idle_starts = []
    rng = random.Random(12345)
    bar = ctx.bar(f"{storage}: latency after idle gaps", p.latency_idle_samples)
    for k in range(p.latency_idle_samples):
        time.sleep(rng.uniform(*p.idle_gap_s))
        idle_starts.append(one(100_000 + k)[0])
        bar.update(k + 1)

    case = f"1 node, one job at a time, {len(starts)} samples"
    figs["start_p50"] = Fig(case, "enqueue→start p50", percentile(starts, 50), "ms",
                            target=TARGET["start_p50"], peer=PEER["start_p50"])  # fmt: skip
    figs["start_p99"] = Fig(case, "enqueue→start p99", percentile(starts, 99), "ms",
                            peer=PEER["start_p99"])  # fmt: skip
    figs["feedback_p50"] = Fig(case, "enqueue→feedback p50", percentile(feedbacks, 50), "ms")
    figs["feedback_p99"] = Fig(case, "enqueue→feedback p99", percentile(feedbacks, 99), "ms")
    gap = f"{p.idle_gap_s[0]:g}-{p.idle_gap_s[1]:g}"
    idle_case = f"1 node, after idle {gap} s, {len(idle_starts)} samples"
    figs["idle_start_p50"] = Fig(
        idle_case, "enqueue→start p50", percentile(idle_starts, 50), "ms",
        peer=PEER["idle_start_p50"],
    )  # fmt: skip
    figs["idle_start_max"] = Fig(idle_case, "enqueue→start max", max(idle_starts, default=0), "ms")
    return figs


# --- 3. delayed -----------------------------------------------------------------------------


def delayed(ctx: Context, storage: str, figs: Figs | None = None) -> Figs:
    """Burst of jobs due `delay_s` after enqueue, then sparse jobs over `spread_s`: lateness."""
    figs = {} if figs is None else figs
    p = ctx.params
    cluster = ctx.shared_cluster(storage)
    reactor = cluster.reactor

    # warm-up: an instant job and a short delayed one (timer machinery up)
    col = _Collector(2)
    reactor.enqueue(STAMP, {"k": -1}, success=col.success, error=col.error)
    reactor.enqueue(STAMP, {"k": -2}, {"after": 0.2}, success=col.success, error=col.error)
    col.wait(15, "delayed warm-up", stall_s=15)

    def run(count: int, due_of: Callable[[int], float], label: str) -> tuple[list[float], int]:
        col = _Collector(count)
        dues: list[float] = [0.0] * count
        for k in range(count):
            due = due_of(k)
            dues[k] = due
            reactor.enqueue(STAMP, {"k": k}, {"after": max(0.0, due - time.time())},
                            success=col.success, error=col.error)  # fmt: skip
        bar = ctx.bar(f"{storage}: delayed {label}", count)
        missing = 0
        try:
            col.wait(max(dues) - time.time() + 10, f"delayed {label}", bar, stall_s=1e9)
        except BenchTimeout:
            missing = count - col.arrived
        late = [_ms(args["started"] - dues[args["k"]]) for _, args in list(col.items)]
        return late, missing

    # burst: each job due delay_s after its own enqueue call
    burst, burst_missing = run(p.burst, lambda _k: time.time() + p.delay_s, "burst")
    # sparse: evenly spread due times, the first delay_s from now
    base = time.time() + p.delay_s
    step = p.spread_s / max(1, p.sparse - 1)
    sparse, sparse_missing = run(p.sparse, lambda k: base + step * k, "sparse")

    early_ms = -_ms(EARLY_TOLERANCE_S)
    for key, label, late, missing, total in (
        ("burst", f"burst: {p.burst} due {p.delay_s:g} s after enqueue", burst, burst_missing,
         p.burst),
        ("sparse", f"sparse: {p.sparse} over {p.spread_s:g} s", sparse, sparse_missing, p.sparse),
    ):  # fmt: skip
        status = INVALID if missing else "ok"
        note = f"{missing} of {total} never ran" if missing else ""
        for q in ("p50", "p99", "max"):
            value = max(late, default=float("nan")) if q == "max" else percentile(late, int(q[1:]))
            figs[f"{key}_{q}"] = Fig(
                label, f"lateness {q}", value, "ms", target=TARGET.get(f"{key}_{q}", ""),
                peer=PEER.get(f"{key}_{q}", ""), status=status, note=note,
            )  # fmt: skip
        early = sum(1 for x in late if x < early_ms)
        figs[f"{key}_early"] = Fig(
            label, "ran early (> 1 ms before due)", early, "jobs", target=TARGET["early"],
            status="ok" if early == 0 and not missing else INVALID,
            note=f"earliest {min(late):+.2f} ms" if late else "",
        )  # fmt: skip
    return figs


# --- 4. memory ------------------------------------------------------------------------------


def _settled_rss(pid: int, timeout: float = 20.0) -> int:
    """RSS once it stops moving (< 0.5 % over 1 s), or the last reading after `timeout`."""
    deadline = time.monotonic() + timeout
    readings = [rss_bytes(pid)]
    while time.monotonic() < deadline:
        time.sleep(0.25)
        readings.append(rss_bytes(pid))
        window = readings[-5:]
        if len(window) == 5 and max(window) - min(window) < 0.005 * max(window):
            break
    return readings[-1]


def memory(ctx: Context, storage: str, figs: Figs | None = None) -> Figs:
    """Pending delayed jobs (after: 3600) in one node, 10⁴ then 10⁵ then 10⁶ (--quick: 10⁵):
    node and app (distributor) RSS per job at each size, from the same empty baseline."""
    figs = {} if figs is None else figs
    sizes = [size for size in (10_000, 100_000, 1_000_000) if size <= ctx.params.memory_jobs]
    if ctx.params.quick:
        sizes = sizes[-1:]  # one size: --quick stays under a minute
    with ctx.cluster(storage, "memory") as cluster:
        node_pid = cluster.node_pids()[0]
        _warm_up(cluster, NOOP, 200)
        _warm_up(cluster, NOOP, 200, {"after": 0.05})
        gc.collect()
        time.sleep(0.5)
        base = (_settled_rss(node_pid, 5), rss_bytes(), _redis_memory(cluster, storage))
        sent = 0
        for size in sizes:
            enqueue_s = _hold_delayed(ctx, cluster, storage, sent, size)
            sent = size
            _memory_figs(figs, cluster, storage, size, base, enqueue_s)
    return figs


def _redis_memory(cluster: Cluster, storage: str) -> int:
    return cluster.redis.used_memory() if storage == "redis" and cluster.redis else 0


# The app's figure is what it keeps per job out on a node. Enqueued in one burst, jobs also
# wait here as records until the node takes them, and the peak of that queue stays in the RSS
# (freed memory between long-lived objects is not given back): steps of this many, each taken
# by the node before the next, keep the queue short, as an app enqueuing over time does.
MEMORY_STEP = 10_000


def _hold_delayed(ctx: Context, cluster: Cluster, storage: str, start: int, total: int) -> float:
    """Enqueue delayed jobs `start`..`total` (in steps of MEMORY_STEP) and wait until the node
    holds all `total`; the enqueue time per job (waits between steps not counted)."""
    reactor = cluster.reactor
    bar = ctx.bar(f"{storage}: memory: enqueue up to {total:,} delayed jobs", total)
    opts = {"after": 3600}
    enqueue_s = 0.0

    def enqueue_step(first: int, end: int) -> float:
        enqueue = reactor.enqueue
        t0 = time.perf_counter()
        for i in range(first, end):
            enqueue(NOOP, {"i": i}, opts)
        bar.update(end)
        return time.perf_counter() - t0

    for first in range(start, total, MEMORY_STEP):
        end = min(total, first + MEMORY_STEP)
        step = functools.partial(enqueue_step, first, end)
        enqueue_s += bounded(step, 60 + (end - first) * 0.001, "enqueue of the delayed jobs")
        _wait_held(ctx, cluster, storage, end)
    return enqueue_s / max(1, total - start)


def _wait_held(ctx: Context, cluster: Cluster, storage: str, total: int) -> None:
    """Until the node holds `total` jobs (a marker after them: FIFO dispatch means every
    delayed job was sent when it is back)."""
    reactor = cluster.reactor
    marker = _Collector(1)
    reactor.enqueue(NOOP, {"i": -1}, success=marker.success, error=marker.error)
    settle = ctx.bar(f"{storage}: memory: node takes {total:,}", total)

    def taken() -> bool:
        cluster.check_nodes()
        info = cluster.node_info()
        held = sum(int(n.get("in_flight", 0)) for n in info)
        settle.update(held)
        if not info:
            raise BenchError("the node left the distributor")
        return marker.done.is_set() and ("in_flight" not in info[0] or held >= total)

    wait_until(taken, 60 + total * 0.0005, "the node holds every pending job", 0.25)


def _memory_figs(
    figs: Figs,
    cluster: Cluster,
    storage: str,
    m: int,
    base: tuple[int, int, int],
    enqueue_s_per_job: float,
) -> None:
    gc.collect()
    node1 = _settled_rss(cluster.node_pids()[0])
    app1 = rss_bytes()
    redis1 = _redis_memory(cluster, storage)
    node0, app0, redis0 = base
    case = f"{m:,} pending jobs, after=3600, 1 node"
    figs[f"{m}/node_bytes_per_job"] = Fig(
        case, "node RSS per pending job", (node1 - node0) / m, "bytes",
        target=TARGET["memory"], note=f"node RSS {node0 / 2**20:.0f} → {node1 / 2**20:.0f} MiB",
    )  # fmt: skip
    figs[f"{m}/app_bytes_per_job"] = Fig(
        case, "app (distributor) RSS per tracked job", (app1 - app0) / m, "bytes",
        target=TARGET["app_memory"],
        note=f"app RSS {app0 / 2**20:.0f} → {app1 / 2**20:.0f} MiB; enqueued in steps of "
        f"{MEMORY_STEP:,}, each taken by the node before the next; approx. (in-process: memory "
        "freed by earlier workloads is reused)",
    )  # fmt: skip
    if storage == "redis":
        figs[f"{m}/redis_bytes_per_job"] = Fig(
            case, "Redis used_memory per pending job", (redis1 - redis0) / m, "bytes"
        )
    figs[f"{m}/delayed_enqueue"] = Fig(
        case, "enqueue rate (delayed jobs)", 1 / enqueue_s_per_job, "jobs/s"
    )


# --- 5. idle --------------------------------------------------------------------------------


def idle(ctx: Context, storage: str, figs: Figs | None = None) -> Figs:
    """CPU seconds used by the distributor (this process) and one node over an idle window."""
    figs = {} if figs is None else figs
    window = ctx.params.idle_s
    cluster = ctx.shared_cluster(storage)
    _warm_up(cluster, NOOP, 20)
    time.sleep(1.0)  # let acknowledgements, reports and pools settle
    node_pid = cluster.node_pids()[0]
    ctx.console.print(f"[dim]{storage}: idle: measuring CPU over {window:g} s (display paused)")
    with ctx.quiet():
        gc.collect()
        node0, app0 = proc_cpu_s(node_pid), self_cpu_s()
        t0 = time.monotonic()
        time.sleep(window)
        node1, app1 = proc_cpu_s(node_pid), self_cpu_s()
        elapsed = time.monotonic() - t0
    cluster.check_nodes()
    case = f"{elapsed:.0f} s idle, 1 node connected"
    figs["node_cpu"] = Fig(case, "node CPU", node1 - node0, "s", target=TARGET["idle"],
                           note=f"{100 * (node1 - node0) / elapsed:.2f} % of a core")  # fmt: skip
    figs["distributor_cpu"] = Fig(
        case, "distributor (app process) CPU", app1 - app0, "s", target=TARGET["idle"],
        note=f"{100 * (app1 - app0) / elapsed:.2f} % of a core; whole app process",
    )  # fmt: skip
    return figs


WORKLOADS: dict[str, Callable[[Context, str, Figs | None], Figs]] = {
    "throughput": throughput,
    "latency": latency,
    "delayed": delayed,
    "memory": memory,
    "idle": idle,
    "metrics": metrics_cost,
}

# Hard deadline per workload (seconds), on top of the bounded waits inside; see cli.run_one.
DEADLINES: dict[str, Callable[[Context], float]] = {
    "throughput": lambda c: 180 + 4 * (90 + c.params.n * 0.003),
    "latency": lambda c: 120 + c.params.latency_samples * 0.1 + c.params.latency_idle_samples,
    "delayed": lambda c: 150,
    "memory": lambda c: 180 + c.params.memory_jobs * 0.002,
    "idle": lambda c: 120 + c.params.idle_s,
    "metrics": lambda c: 300,
}
