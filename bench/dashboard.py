"""Dashboard page costs at 100k stored jobs and 50k pending (issue 19).

    python -m bench.dashboard [--stored 100000] [--pending 50000] [--runs 5]

A private redis-server holds `--stored` job records on two nodes (1 in 97 failed, 1 in 211
retrying, the rest complete); this process runs a memory distributor with `--pending` jobs
waiting (no node), and the dashboard mounted on it with `redis_url`, served by uvicorn on a
loopback port. Each page and API answer is fetched `--runs` times after one warm-up: median
and max milliseconds, and the HTTP status (a page the tree doesn't have answers 404). Run it
with PYTHONPATH=/work/wt/base for the figures before, then with this tree, back to back.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from bench.harness import RedisServer

FAILED_EVERY, RETRYING_EVERY = 97, 211


async def _fill(url: str, prefix: str, count: int) -> str:
    from jobreactor.job import JobRecord, JobStatus
    from jobreactor.storage.redis import RedisStorage

    store = RedisStorage(url, prefix=prefix)
    failed_id = ""
    try:
        for node in ("n1", "n2"):
            batch = []
            for i in range(count // 2):
                job = JobRecord(id=f"{node}-{i:07d}", name="import", args={"row": i})
                if i % FAILED_EVERY == 0:
                    job.status, job.failed_at = JobStatus.FAILED, 1.7e9 + i
                    job.last_error = f"ValueError: row {i}"
                    failed_id = job.id
                elif i % RETRYING_EVERY == 0:
                    job.status, job.run_at_ts = JobStatus.ERROR, time.time() + 3600 + i
                else:
                    job.status = JobStatus.COMPLETE
                batch.append(job)
            for start in range(0, len(batch), 10_000):
                await store.save_many(node, batch[start : start + 10_000])
    finally:
        await store.aclose()
    return failed_id


async def _save_cost(url: str, jobs: int) -> tuple[float, float]:
    """µs per job of save_many then destroy_many of `jobs` new jobs (the indexes' hot-path
    cost: compare with the tree before them)."""
    from jobreactor.job import JobRecord
    from jobreactor.storage.redis import RedisStorage

    store = RedisStorage(url, prefix="savecost")
    try:
        records = [JobRecord(id=f"s{i:07d}", name="work", args={"i": i}) for i in range(jobs)]
        await store.save_many("warm", records[:1000])
        best_save = best_destroy = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            for start in range(0, jobs, 500):  # a node's write-behind batches
                await store.save_many("w", records[start : start + 500])
            saved = time.perf_counter()
            ids = [r.id for r in records]
            for start in range(0, jobs, 500):
                await store.destroy_many("w", ids[start : start + 500])
            done = time.perf_counter()
            best_save = min(best_save, (saved - started) / jobs * 1e6)
            best_destroy = min(best_destroy, (done - saved) / jobs * 1e6)
        return best_save, best_destroy
    finally:
        await store.aclose()


def _serve(app: Any) -> tuple[uvicorn.Server, str]:
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


def _measure(client: httpx.Client, path: str, runs: int) -> tuple[int, float, float]:
    client.get(path)  # warm-up
    times, status = [], 0
    for _ in range(runs):
        started = time.perf_counter()
        answer = client.get(path)
        times.append((time.perf_counter() - started) * 1000)
        status = answer.status_code
    return status, statistics.median(times), max(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stored", type=int, default=100_000)
    parser.add_argument("--pending", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    from jobreactor import Reactor
    from jobreactor.dashboard import create_app

    with tempfile.TemporaryDirectory() as tmp:
        redis = RedisServer(Path(tmp))
        prefix = "bench"
        save_us, destroy_us = asyncio.run(_save_cost(redis.url(), 20_000))
        print(f"save_many {save_us:.1f} µs/job, destroy_many {destroy_us:.1f} µs/job (best of 3)")
        started = time.perf_counter()
        failed_id = asyncio.run(_fill(redis.url(), prefix, args.stored))
        print(f"stored {args.stored} records in {time.perf_counter() - started:.1f}s")
        reactor = Reactor(logger_method="WARNING", log_job_processing=False)
        reactor.run()
        try:
            reactor.start_distributor("127.0.0.1", 0)
            handles = []
            for start in range(0, args.pending, 10_000):
                size = min(10_000, args.pending - start)
                batch = [("work", {"i": start + i}, None) for i in range(size)]
                handles += reactor.enqueue_many(batch)  # type: ignore[arg-type]
            app = create_app(reactor, redis_url=redis.url(), redis_prefix=prefix)
            server, base = _serve(app)
            paths = [
                "/",
                "/queues",
                "/queues?page=500",
                "/retrying",
                "/scheduled",
                "/failed",
                "/failed?page=10",
                f"/jobs/{failed_id}",
                f"/jobs/{handles[-1].id}",
                "/api/stats",
                "/api/jobs?status=failed&page=1",
                "/api/jobs?status=failed&page=10",
                "/api/jobs?status=failed&node=n2&page=5",
                "/api/jobs?status=retrying&page=1",
                "/api/jobs?status=pending&page=1",
                "/api/jobs?status=pending&page=1000",
                "/api/jobs?status=failed&q=row%2099",
            ]
            print(f"PYTHONPATH={os.environ.get('PYTHONPATH', '')}  load {os.getloadavg()}")
            print(f"{'path':45} {'status':>6} {'median ms':>10} {'max ms':>8}")
            with httpx.Client(base_url=base, timeout=120) as client:
                for path in paths:
                    status, median, worst = _measure(client, path, args.runs)
                    print(f"{path:45} {status:>6} {median:>10.1f} {worst:>8.1f}")
            print(f"load after {os.getloadavg()}")
            server.should_exit = True
        finally:
            reactor.stop(timeout=10)
            redis.stop()


if __name__ == "__main__":
    main()
