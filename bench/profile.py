"""`python -m bench.profile`: where the no-op drain spends its time, app side and node side.

Runs the throughput workload's no-op drain (one node, `--n` jobs, success feedbacks) once
under `cProfile` in this process (the app: enqueue thread and the reactor's loop thread; the
profile covers both, as `threading.setprofile` does) and, with `--node`, in the node process
too (`BENCH_NODE_PROFILE`: the node runs under `python -m cProfile`, written when it stops).
Prints the top functions by own time; `--out DIR` keeps the `.prof` files for snakeviz/pstats.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.harness import Cluster, RedisServer
from bench.workloads import NOOP, _Collector, _warm_up


def drain(cluster: Cluster, n: int) -> float:
    col = _Collector(n)
    enqueue = cluster.reactor.enqueue
    t0 = time.perf_counter()
    for i in range(n):
        enqueue(NOOP, {"i": i}, success=col.success, error=col.error)
    col.wait(60 + n * 0.01, "profiled drain", stall_s=30)
    return n / (time.perf_counter() - t0)


def top(path: Path, lines: int) -> str:
    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    stats.sort_stats("tottime").print_stats(lines)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--n", type=int, default=30_000)
    parser.add_argument("--storage", choices=["memory", "redis"], default="memory")
    parser.add_argument("--node", action="store_true", help="profile the node process too")
    parser.add_argument("--lines", type=int, default=30)
    parser.add_argument("--out", type=Path, default=None, help="keep the .prof files here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="jobreactor-profile-") as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        if args.node:
            os.environ["BENCH_NODE_PROFILE"] = str(out)
        redis = RedisServer(Path(tmp)) if args.storage == "redis" else None
        try:
            with Cluster(Path(tmp), args.storage, 100, redis) as cluster:
                cluster.start(1)
                _warm_up(cluster, NOOP, 2_000)
                rate = _profiled(cluster, out, lambda: drain(cluster, args.n))
        finally:
            if redis is not None:
                redis.stop()
        print(f"no-op drain, {args.storage} storage, N={args.n:,}: {rate:,.0f} jobs/s under the "
              "profiler\n")  # fmt: skip
        for node in sorted(out.glob("*.prof")):
            print(f"== {node.stem}\n{top(node, args.lines)}")
    return 0


def _profiled(cluster: Cluster, out: Path, fn: Any) -> float:
    """Run `fn` (here, the enqueue thread) with a profiler on in this thread and another on the
    reactor's loop thread; `app-enqueue.prof` and `app-loop.prof`."""
    loop = cluster.reactor.loop_host.loop
    mine, theirs = cProfile.Profile(), cProfile.Profile()
    switched = threading.Event()

    def switch(on: bool) -> None:
        (theirs.enable if on else theirs.disable)()
        switched.set()

    loop.call_soon_threadsafe(switch, True)
    switched.wait(10)
    mine.enable()
    try:
        return float(fn())
    finally:
        mine.disable()
        switched.clear()
        loop.call_soon_threadsafe(switch, False)
        switched.wait(10)
        mine.dump_stats(out / "app-enqueue.prof")
        theirs.dump_stats(out / "app-loop.prof")


if __name__ == "__main__":
    sys.exit(main())
