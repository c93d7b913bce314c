"""Example job definitions: one of each style.

`reactor_jobs/` is the default `job_directory`, so a node started from the repository root
(`jobreactor node --config examples/node.toml`) loads every `*.py` file under it, recursively.
A job file only imports the decorators; each node loads it into its own registry.

Every step (the job body, its callbacks, its errbacks) takes the job's `args` dict. Steps share
that one dict and may add keys to it; return values are ignored. Whatever is in `args` at the
end of the chain is what the success feedback receives in the application.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

from jobreactor import CancelJob, job, job_callback, job_errback

# --- the Ruby quick start's job ------------------------------------------------------------------


@job("my_job")
def my_job(args: dict[str, Any]) -> None:
    """`JR.enqueue("my_job", {"arg1": "Hello"})` prints Hello on the node."""
    print(args["arg1"])


# --- a plain job with a callback chain and an errback chain ----------------------------------
# The job body is the first callback; `@job_callback`s run after it, in definition order. If any
# of them raises, the rest are skipped and the `@job_errback`s run instead. Errbacks see the args
# as they were *before* this attempt, plus `error` (the exception); keys added by the failed
# attempt are not there. The job is then retried (up to `max_attempt` runs in all), and the
# application's error feedback fires once, after the last attempt.


@job("greet")
def greet(args: dict[str, Any]) -> None:
    if not args.get("name"):
        raise ValueError("greet needs a 'name'")
    args["greeting"] = f"Hello, {args['name']}"


@job_callback("greet", "shout")
def shout(args: dict[str, Any]) -> None:
    args["greeting"] = args["greeting"].upper() + "!"


@job_callback("greet", "print")
def print_greeting(args: dict[str, Any]) -> None:
    print(args["greeting"])


@job_errback("greet", "report")
def greet_failed(args: dict[str, Any]) -> None:
    # args["error"] is the exception itself here; the application's error feedback gets it as
    # data: {"class": "ValueError", "message": "...", "traceback": "..."}.
    print(f"greet failed: {args['error']!r}")
    args["hint"] = "pass args={'name': ...}"  # visible to later errbacks and the error feedback


# --- an async job ---------------------------------------------------------------------------
# `async def` steps are awaited on the node's event loop, so I/O-bound jobs (HTTP calls, database
# queries with an async driver) run concurrently, up to the node's `concurrency`.


@job("wait_and_echo")
async def wait_and_echo(args: dict[str, Any]) -> None:
    started = time.monotonic()
    await asyncio.sleep(float(args.get("seconds", 0.1)))
    args["echo"] = args.get("text", "")
    args["waited"] = round(time.monotonic() - started, 3)


# --- a CPU-bound job, meant for {"defer": True} ------------------------------------------------
# A plain `def` job runs on the node's event loop and blocks it while it runs. Enqueue CPU work
# with `{"defer": True}` so the node runs it in its thread pool (`thread_pool_size` threads):
#     JR.enqueue("hash_chain", {"rounds": 200_000}, {"defer": True})
# Python's GIL still applies: use several nodes (processes) to use several cores.


@job("hash_chain")
def hash_chain(args: dict[str, Any]) -> None:
    digest = str(args.get("seed", "jobreactor")).encode()
    for _ in range(int(args.get("rounds", 1_000_000))):
        digest = hashlib.sha256(digest).digest()
    args["digest"] = digest.hex()


# --- a periodic-friendly job -------------------------------------------------------------------
# With `{"period": 10}` the node runs the job every 10 s on its own timer (no polling), until it
# is cancelled with `JR.cancel(handle.id)`. The args a run leaves behind are the next run's args,
# so a periodic job can keep state in them. The success feedback fires after every run.


@job("tick")
def tick(args: dict[str, Any]) -> None:
    args["ticks"] = args.get("ticks", 0) + 1
    args["last_tick"] = time.time()


# --- a job that stops itself with CancelJob ----------------------------------------------------
# Raising CancelJob from the job or a callback ends the job for good, periodic or not: no retry,
# no further runs. The success feedback fires (with the args as they were before this run).
# Raised from an errback, CancelJob fires the error feedback instead.
#     JR.enqueue("countdown", {"left": 3}, {"period": 1})
# counts down in three runs; the fourth run cancels it.


@job("countdown")
def countdown(args: dict[str, Any]) -> None:
    if args.get("left", 0) <= 0:
        raise CancelJob("countdown reached zero")
    args["left"] -= 1
    print(f"countdown: {args['left']} left")
