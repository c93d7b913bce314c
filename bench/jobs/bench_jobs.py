"""Bench job definitions, loaded by the bench's node processes as a jobs directory.

Self-contained on purpose: a node imports this file by path, not as part of the `bench` package.

* `bench_noop` -- a true no-op (throughput, memory).
* `bench_stamp` -- records its start time in `args["started"]` (wall clock, `time.time()`), so the
  success feedback carries it back to the app (latency, delayed).
* `bench_redis_body` -- the peers' job body (`shared/bench-peers/benchlib.py`): one pipelined
  Redis round trip, `SADD bench:ids <i>` + `INCR bench:done`, through redis.asyncio. The Redis
  port is `args["redis_port"]` if given, else the `BENCH_REDIS_PORT` environment variable.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from jobreactor import job

IDS_KEY = "bench:ids"
DONE_KEY = "bench:done"


@job("bench_noop")
def noop(args: dict[str, Any]) -> None:
    pass


@job("bench_stamp")
def stamp(args: dict[str, Any]) -> None:
    args["started"] = time.time()


_clients: dict[tuple[int, int], Any] = {}


def _client(port: int) -> Any:
    """One redis.asyncio client (with its connection pool) per loop and port."""
    import redis.asyncio as aredis

    key = (id(asyncio.get_running_loop()), port)
    client = _clients.get(key)
    if client is None:
        client = aredis.Redis(host="127.0.0.1", port=port, db=0)
        _clients[key] = client
    return client


@job("bench_redis_body")
async def redis_body(args: dict[str, Any]) -> None:
    port = int(args.get("redis_port") or os.environ.get("BENCH_REDIS_PORT", "6379"))
    async with _client(port).pipeline(transaction=False) as pipe:
        pipe.sadd(IDS_KEY, args["i"])
        pipe.incr(DONE_KEY)
        await pipe.execute()
