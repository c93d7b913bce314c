"""gunicorn hooks: one reactor and one distributor per worker, started after the fork.

In `gunicorn.conf.py` (sync, gthread, `uvicorn_worker.UvicornWorker`; with or without
`--preload`)::

    from jobreactor.contrib.gunicorn import hooks

    post_worker_init, worker_exit = hooks()  # settings from JOBREACTOR_* or keywords

`post_worker_init` runs in each worker after the fork and after the app is imported (so the
job definitions and named feedbacks it registers are there); it starts the reactor and a
distributor on an ephemeral port (each worker needs its own; nodes find it by discovery).
`worker_exit` runs in the worker when it stops (not after SIGKILL) and stops the reactor
within gunicorn's `graceful_timeout`; with discovery it hands the worker's jobs to a live
distributor of its group (Redis storage) instead of waiting for them (docs/semantics.md).
Never start the reactor in `on_starting`/`when_ready` or at import under `--preload`: that
runs in the master, before the fork.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from jobreactor.contrib import configure
from jobreactor.reactor import JR, Reactor, Setup

WorkerInit = Callable[[Any], None]
WorkerExit = Callable[[Any, Any], None]


def hooks(
    host: str | None = None,
    port: int | None = None,
    *,
    reactor: Reactor | None = None,
    setup: Setup | None = None,
    loop_nice: int = 10,
    fast_exit: bool = False,
    **distributor_options: Any,
) -> tuple[WorkerInit, WorkerExit]:
    """gunicorn's `post_worker_init` and `worker_exit` for `reactor` (default `JR`).

    `distributor_options` go to `start_distributor` (storage, redis_url, secret, advertise,
    discovery_url, group, ...) over the JOBREACTOR_* environment (jobreactor.contrib).
    `setup` runs once the loop is up, before the distributor. `loop_nice` lowers the loop
    thread's priority below the request threads' (`JR.run`): a request that enqueues is then
    not preempted by the loop it wakes (p99 inside `JR.enqueue` under load: bench/web.py).
    `fast_exit=True` ends the worker process right after the stop (`exit_now`): gunicorn
    forks the replacement only once the old worker is gone, and the interpreter's teardown
    took 0.4 s of CPU per worker, seconds under load (bench/recycle.py).
    """
    target = JR if reactor is None else reactor

    def post_worker_init(worker: Any) -> None:
        bind_host, bind_port, options = configure(
            target, {"host": host, "port": port, **distributor_options}
        )
        target.run(setup, loop_nice=loop_nice)
        bound = target.start_distributor(bind_host, bind_port, **options)
        worker.log.info("jobreactor distributor listening on %s:%d", *bound)

    def worker_exit(server: Any, worker: Any) -> None:
        # One timeout rules the stop: gunicorn's graceful_timeout, less a second for the
        # worker's own exit (the reactor's drains get it less their closing margin). In a
        # discovery group the distributor hands its jobs over instead of waiting for them,
        # so a recycling worker exits at once and its replacement starts serving.
        start = time.monotonic()
        target.stop(timeout=max(1.0, float(worker.cfg.graceful_timeout) - 1.0), handover=True)
        worker.log.info("jobreactor stopped in %.1fs", time.monotonic() - start)
        if fast_exit:
            exit_now()

    return post_worker_init, worker_exit


def exit_now() -> None:
    """End this process at once, as an exit would but without the interpreter's teardown:
    the atexit handlers run (logging's flush, an app's or a tracer's own) and buffered output
    is flushed; non-daemon threads are not waited for and the finalizers of objects still
    alive do not run (close files you write before that, or leave `fast_exit` off)."""
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            stream.flush()  # closed or replaced: nothing to flush
    os._exit(0)
