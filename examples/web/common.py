"""What every web recipe here shares: one named feedback and the enqueue a request does.

The reactor's settings come from JOBREACTOR_* variables (jobreactor.contrib): at least
JOBREACTOR_DISCOVERY_URL (the Redis where workers register and nodes find them) and
JOBREACTOR_GROUP (this app's name); JOBREACTOR_STORAGE=redis (with JOBREACTOR_REDIS_URL) keeps
the jobs a worker accepted in Redis, so another worker adopts them if it dies.

The apps enqueue `web.record` (defined in jobs/web_jobs.py, run by nodes) with a *named*
success feedback: a name, unlike a closure, can be stored with the job in Redis, so the
feedback still fires if the worker that enqueued the job dies and another worker adopts it.
The feedback appends one line per job to `$WEB_EXAMPLE_OUT/feedback.jsonl` (when set), which
is what the tests in tests/web read.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from jobreactor import JR


def _append(name: str, record: dict[str, Any]) -> None:
    out = os.environ.get("WEB_EXAMPLE_OUT")
    if out:  # one write() per line with O_APPEND: lines from many processes never interleave
        fd = os.open(os.path.join(out, name), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(record) + "\n").encode())
        finally:
            os.close(fd)


def recorded(args: dict[str, Any]) -> None:
    """The `web.done` feedback: runs in this web worker when a node reports success."""
    _append("feedback.jsonl", {"n": args["n"], "enqueued_by": args["pid"], "pid": os.getpid()})


JR.register_feedback("web.done", recorded)


def job_args(n: int, seconds: float) -> dict[str, Any]:
    return {"n": n, "pid": os.getpid(), "s": seconds}


def enqueue(n: int, seconds: float = 0.0) -> dict[str, Any]:
    """What a request does: one enqueue, timed (bench/web.py reads `enqueue_us`)."""
    start = time.perf_counter_ns()
    handle = JR.enqueue("web.record", job_args(n, seconds), success="web.done")
    elapsed = (time.perf_counter_ns() - start) / 1000
    assert handle is not None  # only enqueue_id/loner jobs can be refused
    return {"id": handle.id, "pid": os.getpid(), "enqueue_us": elapsed}
