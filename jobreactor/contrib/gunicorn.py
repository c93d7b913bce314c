"""gunicorn hooks: one reactor and one distributor per worker, started after the fork.

In `gunicorn.conf.py` (sync, gthread, `uvicorn_worker.UvicornWorker`; with or without
`--preload`)::

    from jobreactor.contrib.gunicorn import hooks

    post_worker_init, worker_exit = hooks()  # settings from JOBREACTOR_* or keywords

`post_worker_init` runs in each worker after the fork and after the app is imported (so the
job definitions and named feedbacks it registers are there); it starts the reactor and a
distributor on an ephemeral port (each worker needs its own; nodes find it by discovery).
`worker_exit` runs in the worker when it stops (not after SIGKILL) and stops the reactor
within gunicorn's `graceful_timeout`. Never start the reactor in `on_starting`/`when_ready`
or at import under `--preload`: that runs in the master, before the fork.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from jobreactor.contrib import NOT_STARTED, configure, retry_delays
from jobreactor.errors import ReactorClosed, StorageError
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
    **distributor_options: Any,
) -> tuple[WorkerInit, WorkerExit]:
    """gunicorn's `post_worker_init` and `worker_exit` for `reactor` (default `JR`).

    `distributor_options` go to `start_distributor` (storage, redis_url, secret, advertise,
    discovery_url, group, ...) over the JOBREACTOR_* environment (jobreactor.contrib).
    `setup` runs once the loop is up, before the distributor. `loop_nice` lowers the loop
    thread's priority below the request threads' (`JR.run`): a request that enqueues is then
    not preempted by the loop it wakes (p99 inside `JR.enqueue` under load: bench/web.py).
    """
    target = JR if reactor is None else reactor

    def post_worker_init(worker: Any) -> None:
        bind_host, bind_port, options = configure(
            target, {"host": host, "port": port, **distributor_options}
        )
        target.run(setup, loop_nice=loop_nice)
        try:
            bound = target.start_distributor(bind_host, bind_port, **options)
        except StorageError as exc:
            # Raising here would make gunicorn's master exit ("Worker failed to boot"): the
            # whole site down for a Redis outage. Serve, and start once Redis answers.
            worker.log.error(NOT_STARTED, exc)
            threading.Thread(
                target=_start_later,
                args=(target, worker, bind_host, bind_port, options),
                name="jobreactor-start",
                daemon=True,
            ).start()
            return
        worker.log.info("jobreactor distributor listening on %s:%d", *bound)

    def worker_exit(server: Any, worker: Any) -> None:
        # Leave a second of gunicorn's graceful_timeout for the worker's own exit.
        start = time.monotonic()
        target.stop(timeout=max(1.0, float(worker.cfg.graceful_timeout) - 1.0))
        worker.log.info("jobreactor stopped in %.1fs", time.monotonic() - start)

    return post_worker_init, worker_exit


def _start_later(
    reactor: Reactor, worker: Any, host: str, port: int, options: dict[str, Any]
) -> None:
    """Retry `start_distributor` with backoff until it works or the reactor stops."""
    for delay in retry_delays():
        time.sleep(delay)
        try:
            bound = reactor.start_distributor(host, port, **options)
        except StorageError:
            continue
        except ReactorClosed:
            return  # the worker is stopping
        worker.log.info("jobreactor distributor listening on %s:%d", *bound)
        return
