"""What a limit check costs per job (issue 21): `python -m bench.limits [--n 5000] [--rounds 3]`.

N no-op jobs through one in-process distributor and node (memory, then Redis storage), with
no limit, with a concurrency limit and with a rate limit that never refuses (keys spread over
16 values), alternated and the best of `rounds` each, all in the same run. The cost per job is
1/rate(limited) - 1/rate(none). Prints a table and the load average (a shared 2-core box: the
figures move with it).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.harness import RedisServer
from jobreactor import Limit, Reactor, Registry
from jobreactor.limits import slots_for
from jobreactor.node.limits import run_now
from jobreactor.storage.limits import MemoryLimits
from jobreactor.storage.redis import RedisStorage
from jobreactor.storage.redis_limits import RedisLimits

CASES: dict[str, list[Limit]] = {
    "no limit": [],
    "concurrency": [Limit(concurrency=1_000_000, key="{k}")],
    "rate": [Limit(rate="1000000/s", key="{k}")],
}


def run_once(
    n: int, storage: str, limits: list[Limit], redis_url: str | None
) -> tuple[float, float]:
    """(jobs per second, CPU seconds of this process per job) for `n` no-op jobs (one case).

    CPU time moves less with the machine's load than wall time does: it is the figure to read
    for the cost of a check on a busy box.
    """
    registry = Registry()
    registry.job("noop", limits=limits)(lambda args: None)
    reactor = Reactor(logger_method="WARNING", log_job_processing=False, metrics=False)
    reactor.run()
    try:
        reactor.start_distributor("127.0.0.1", 0)
        address = ("127.0.0.1", reactor.distributor.address_port())
        extra: dict[str, Any] = {"redis_url": redis_url} if storage == "redis" else {}
        reactor.start_node("bench", storage, [address], registry=registry, **extra)
        done, count, lock = threading.Event(), [0], threading.Lock()

        def success(args: dict[str, Any]) -> None:
            with lock:
                count[0] += 1
                if count[0] == n:
                    done.set()

        jobs = [("noop", {"k": i % 16}, None) for i in range(n)]
        t0, cpu0 = time.perf_counter(), time.process_time()
        reactor.enqueue_many(jobs, success=success)
        if not done.wait(max(120.0, n * 0.01)):
            raise RuntimeError(f"only {count[0]} of {n} jobs finished")
        return n / (time.perf_counter() - t0), (time.process_time() - cpu0) / n
    finally:
        reactor.stop(timeout=15)


def check_alone_memory(loops: int) -> float:
    """Seconds per job for the limit check alone: key, take, give back (memory store)."""
    store, limits = MemoryLimits(), CASES["concurrency"]
    t0 = time.perf_counter()
    for i in range(loops):
        (slot,) = slots_for("noop", limits, {"k": i % 16})
        run_now(store.acquire(slot, str(i), "bench", 30.0))
        run_now(store.release(slot, str(i)))
    return (time.perf_counter() - t0) / loops


def check_alone_redis(n: int, url: str) -> float:
    """Seconds per job for take + give back of n jobs at once on Redis (pipelined per turn)."""

    async def run() -> float:
        storage = RedisStorage(url, prefix="benchlimits")
        store, limits = RedisLimits(storage), CASES["concurrency"]
        slots = [slots_for("noop", limits, {"k": i % 16})[0] for i in range(n)]
        try:
            await store.acquire(slots[0], "warm", "bench", 30.0)
            t0 = time.perf_counter()
            await asyncio.gather(
                *(store.acquire(s, str(i), "b", 30.0) for i, s in enumerate(slots))
            )
            await asyncio.gather(*(store.release(s, str(i)) for i, s in enumerate(slots)))
            return (time.perf_counter() - t0) / n
        finally:
            await storage.aclose()

    return asyncio.run(run())


def report(storage: str, n: int, rounds: int, server: RedisServer) -> None:
    """Each case `rounds` times, alternated; the best wall rate and the least CPU per job."""
    best: dict[str, float] = {}
    cpu: dict[str, float] = {}
    for _ in range(rounds):
        for case, limits in CASES.items():
            if storage == "redis":
                server.flushdb(0)
            rate, cpu_s = run_once(n, storage, limits, server.url())
            best[case] = max(best.get(case, 0.0), rate)
            cpu[case] = min(cpu.get(case, math.inf), cpu_s)
    for case, rate in best.items():
        wall_cost = (1 / rate - 1 / best["no limit"]) * 1e6
        cpu_cost = (cpu[case] - cpu["no limit"]) * 1e6
        print(
            f"{storage:7} {case:12} {rate:8,.0f} jobs/s (cost {wall_cost:+7.1f} µs/job)   "
            f"CPU {cpu[case] * 1e6:6.1f} µs/job (cost {cpu_cost:+6.1f})   "
            f"best of {rounds}, n={n}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        server = RedisServer(Path(workdir))
        try:
            memory_s = min(check_alone_memory(100_000) for _ in range(options.rounds))
            redis_s = min(check_alone_redis(options.n, server.url()) for _ in range(options.rounds))
            print(f"check alone, memory: {memory_s * 1e6:8.2f} µs/job (key, take, give back)")
            print(f"check alone, redis:  {redis_s * 1e6:8.2f} µs/job ({options.n} at once)")
            for storage in ("memory", "redis"):
                report(storage, options.n, options.rounds, server)
        finally:
            server.stop()
    print("load average:", " ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
