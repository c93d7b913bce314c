# FastAPI: the reactor starts in lifespan startup, in each worker, on the serving loop.
#   uvicorn fastapi_app:app --workers 2
#   gunicorn -k uvicorn_worker.UvicornWorker -w 2 fastapi_app:app   (without gunicorn_hooks.py)
# uvicorn spawns its workers (fresh interpreters), gunicorn forks them: lifespan runs after
# either, in the process that serves. The distributor binds an ephemeral port per worker.
import os
import time

from common import enqueue, job_args
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from jobreactor import JR
from jobreactor.contrib.asgi import lifespan
from jobreactor.errors import JobReactorError

app = FastAPI(lifespan=lifespan())  # settings: JOBREACTOR_* (see common.py)


@app.exception_handler(JobReactorError)
async def not_enqueued(request: Request, exc: JobReactorError) -> JSONResponse:
    # Told, not durable: the job was not stored and will never run (Redis down or paused).
    return JSONResponse({"error": str(exc)}, status_code=503)


@app.get("/hello")
async def hello() -> str:
    return "hello"


@app.get("/enqueue/{n}")
async def enqueue_async(n: int, s: float = 0.0) -> dict[str, object]:
    start = time.perf_counter_ns()
    handle = await JR.aenqueue("web.record", job_args(n, s), success="web.done")
    elapsed = (time.perf_counter_ns() - start) / 1000
    assert handle is not None
    return {"id": handle.id, "pid": os.getpid(), "enqueue_us": elapsed}


@app.get("/enqueue-sync/{n}")
def enqueue_sync(n: int, s: float = 0.0) -> dict[str, object]:
    return enqueue(n, s)  # a sync endpoint runs in a thread pool: plain JR.enqueue
