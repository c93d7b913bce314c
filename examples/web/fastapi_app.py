# FastAPI: the reactor starts in lifespan startup, in each worker, on the serving loop.
#   uvicorn fastapi_app:app --workers 2
#   gunicorn -k uvicorn_worker.UvicornWorker -w 2 fastapi_app:app   (no gunicorn.conf.py hooks)
# uvicorn spawns its workers (fresh interpreters), gunicorn forks them: lifespan runs after
# either, in the process that serves. The distributor binds an ephemeral port per worker.
import os
import time

from common import DISTRIBUTOR, enqueue
from fastapi import FastAPI

from jobreactor import JR
from jobreactor.contrib.asgi import lifespan

app = FastAPI(lifespan=lifespan("127.0.0.1", 0, **DISTRIBUTOR))


@app.get("/hello")
async def hello() -> str:
    return "hello"


@app.get("/enqueue/{n}")
async def enqueue_async(n: int) -> dict[str, object]:
    start = time.perf_counter_ns()
    handle = await JR.aenqueue("web.record", {"n": n, "pid": os.getpid()}, success="web.done")
    elapsed = (time.perf_counter_ns() - start) / 1000
    assert handle is not None
    return {"id": handle.id, "pid": os.getpid(), "enqueue_us": elapsed}


@app.get("/enqueue-sync/{n}")
def enqueue_sync(n: int) -> dict[str, object]:
    return enqueue(n)  # a sync endpoint runs in a thread pool: plain JR.enqueue
