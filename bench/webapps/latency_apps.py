"""The apps `python -m bench.web --latency` serves: the time spent inside one enqueue in a
request, beside a plain Redis HSET from the same kind of view (the baseline of issue 16).

    gunicorn -c <hooks> -w 4 latency_apps:flask_app     # JR.enqueue in a sync view
    uvicorn --workers 4 latency_apps:asgi_app           # await JR.aenqueue in an async view

Each answer is `{"us": <microseconds inside the call>}`. Settings come from JOBREACTOR_*
(jobreactor.contrib); BENCH_REDIS_URL is the Redis the HSET views write to.
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis
import redis.asyncio as aredis
from fastapi import FastAPI
from flask import Flask

from jobreactor import JR
from jobreactor.contrib.asgi import lifespan

_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")
_sync: redis.Redis[bytes] | None = None  # one client per worker process, made after the fork
_async: aredis.Redis[bytes] | None = None


def _args(n: int) -> dict[str, Any]:
    return {"n": n, "pid": os.getpid(), "s": 0.0}


flask_app = Flask(__name__)


@flask_app.get("/enqueue/<int:n>")
def flask_enqueue(n: int) -> dict[str, float]:
    start = time.perf_counter_ns()
    JR.enqueue("web.record", _args(n))
    return {"us": (time.perf_counter_ns() - start) / 1000}


@flask_app.get("/hset/<int:n>")
def flask_hset(n: int) -> dict[str, float]:
    global _sync
    if _sync is None:
        _sync = redis.Redis.from_url(_URL)
    start = time.perf_counter_ns()
    _sync.hset(f"bench:hset:{n % 1000}", mapping={"n": n, "pid": os.getpid()})
    return {"us": (time.perf_counter_ns() - start) / 1000}


asgi_app = FastAPI(lifespan=lifespan())


@asgi_app.get("/enqueue/{n}")
async def asgi_enqueue(n: int) -> dict[str, float]:
    start = time.perf_counter_ns()
    await JR.aenqueue("web.record", _args(n))
    return {"us": (time.perf_counter_ns() - start) / 1000}


@asgi_app.get("/hset/{n}")
async def asgi_hset(n: int) -> dict[str, float]:
    global _async
    if _async is None:
        _async = aredis.Redis.from_url(_URL)
    start = time.perf_counter_ns()
    await _async.hset(f"bench:hset:{n % 1000}", mapping={"n": n, "pid": os.getpid()})
    return {"us": (time.perf_counter_ns() - start) / 1000}


@flask_app.get("/hello")
def flask_hello() -> str:
    return "hello"


@asgi_app.get("/hello")
async def asgi_hello() -> str:
    return "hello"
