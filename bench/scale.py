"""Scale workloads of issue 13: nodes per distributor, and Redis Cluster against one server.

* `fanout` -- the app process's CPU per job (enqueue, dispatch, feedback) with 10, 100 and
  1,000 connected nodes. The nodes are real node sessions on real sockets, all in one other
  process (`bench.fleet`), so only the distributor's side is measured here. Goal: flat, the
  1,000-node figure within 20 % of the 10-node one.
* `cluster` -- end-to-end no-op rate with redis node storage on one redis-server and on a
  3-master Redis Cluster (same node count, same N).
"""

from __future__ import annotations

import gc
import subprocess
import sys
import time
from typing import Any

from bench.context import Context
from bench.harness import (
    REGISTRY,
    RUN_ROOT,
    BenchError,
    Cluster,
    RedisClusterServers,
    _child_env,
    stop_processes,
    wait_until,
)
from bench.report import SKIPPED, Fig
from bench.workloads import NOOP, Figs, _Collector, _fail, _warm_up

FANOUT_TARGET = "≤ 1.2× the 10-node figure"
FLEET_CONCURRENCY = 2


def _drain(cluster: Cluster, n: int, what: str) -> tuple[float, float]:
    """Enqueue `n` no-ops and wait for every feedback: (app CPU s, wall s)."""
    col = _Collector(n)
    gc.collect()
    cpu0, t0 = time.process_time(), time.perf_counter()
    enqueue = cluster.reactor.enqueue
    for i in range(n):
        enqueue(NOOP, {"i": i}, success=col.success, error=col.error)
    col.wait(60 + n * 0.01, what, stall_s=30)
    return time.process_time() - cpu0, time.perf_counter() - t0


def fanout(ctx: Context, storage: str, figs: Figs | None = None) -> Figs:
    figs = {} if figs is None else figs
    if storage != "memory":  # the distributor's side doesn't depend on node storage
        return figs
    n = 2_000 if ctx.params.quick else 30_000
    per_job: dict[int, float] = {}
    for nodes in (10, 100, 1_000):
        case = f"{nodes:,} nodes connected"
        try:
            per_job[nodes] = _fanout_case(ctx, nodes, n)
        except BenchError as exc:
            _fail(figs, case, exc)
            continue
        figs[f"fanout/{nodes}"] = Fig(
            case, "app CPU per job (enqueue + dispatch + feedback)", per_job[nodes], "µs",
            target=FANOUT_TARGET if nodes > 10 else "", note=f"N={n:,} no-ops, "
            f"{nodes} node sessions in one fleet process, concurrency {FLEET_CONCURRENCY} each",
        )  # fmt: skip
    if 10 in per_job and 1_000 in per_job:
        figs["fanout/ratio"] = Fig(
            "1,000 vs 10 nodes", "app CPU per job, ratio", per_job[1_000] / per_job[10], "×",
            target="≤ 1.2",
        )  # fmt: skip
    return figs


def _fanout_case(ctx: Context, nodes: int, n: int) -> float:
    with ctx.cluster("memory", f"fanout{nodes}", nodes=0) as cluster:
        assert cluster.address is not None
        host, port = cluster.address
        log = (cluster.workdir / "fleet.log").open("wb")
        fleet = subprocess.Popen(
            [sys.executable, "-m", "bench.fleet", f"{host}:{port}", str(nodes),
             "--concurrency", str(FLEET_CONCURRENCY)],
            stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, cwd=RUN_ROOT,
            env=_child_env(),
        )  # fmt: skip
        REGISTRY.add(fleet)
        try:
            bar = ctx.bar(f"fanout: {nodes} nodes connect", nodes)

            def joined() -> bool:
                if fleet.poll() is not None:
                    raise BenchError(f"the fleet process exited with {fleet.returncode}")
                count = len(cluster.node_info())
                bar.update(count)
                return count >= nodes

            wait_until(joined, 60 + nodes * 0.1, f"{nodes} fleet nodes joining", 0.2)
            _warm_up(cluster, NOOP, min(2 * nodes * FLEET_CONCURRENCY, 2_000))
            with ctx.quiet():
                cpu, _ = _drain(cluster, n, f"fanout with {nodes} nodes")
            return cpu * 1e6 / n
        finally:
            if fleet.stdin is not None:
                fleet.stdin.close()
            stop_processes([fleet], grace=15)
            log.close()


def cluster_vs_single(ctx: Context, storage: str, figs: Figs | None = None) -> Figs:
    figs = {} if figs is None else figs
    if storage != "redis":
        return figs
    n = 1_000 if ctx.params.quick else 20_000
    rates: dict[str, float] = {}
    single = ctx.redis()
    try:
        servers = RedisClusterServers(ctx.workdir)
    except BenchError as exc:
        figs["cluster/na"] = Fig("", "3-master cluster", None, status=SKIPPED, note=str(exc))
        return figs
    try:
        for label, redis in (("one redis-server", single), ("3-master Redis Cluster", servers)):
            case = f"redis node storage on {label}, 2 nodes"
            try:
                rates[label] = _cluster_case(ctx, redis, n, label)
            except BenchError as exc:
                _fail(figs, case, exc)
                continue
            figs[f"cluster/{label}"] = Fig(
                case, "end-to-end no-op rate", rates[label], "jobs/s", note=f"N={n:,}"
            )
    finally:
        servers.stop()
    if len(rates) == 2:
        ratio = rates["3-master Redis Cluster"] / rates["one redis-server"]
        figs["cluster/ratio"] = Fig(
            "cluster vs one server", "end-to-end rate, ratio", ratio, "×",
            note="nodes write their own slots; the gain comes with more nodes than one server "
            "can serve",
        )  # fmt: skip
    return figs


def _cluster_case(ctx: Context, redis: Any, n: int, label: str) -> float:
    workdir = ctx.workdir / f"cluster-{label.split()[0]}"
    workdir.mkdir(parents=True, exist_ok=True)
    db = 0 if isinstance(redis, RedisClusterServers) else 15  # 15: no other workload's db
    with Cluster(workdir, "redis", ctx.params.concurrency, redis, label="clu", redis_db=db) as c:
        c.start(2)
        _warm_up(c, NOOP, 200 if ctx.params.quick else 1_000)
        _, wall = _drain(c, n, f"no-ops on {label}")
        return n / wall


SCALE_WORKLOADS = {"fanout": fanout, "cluster": cluster_vs_single}
SCALE_DEADLINES = {
    "fanout": lambda c: 600.0 if not c.params.quick else 300.0,
    "cluster": lambda c: 300.0,
}
