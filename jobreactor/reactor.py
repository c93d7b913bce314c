"""Reactor: owns the event loop and its thread; the only module that crosses threads.

`JR` is the default instance; tests build their own. App threads call `enqueue`, which
validates and copies the job in the caller's thread, appends it to a queue and wakes the loop
at most once per batch (one `call_soon_threadsafe` for many jobs, not one per job). Every
other cross-thread call hops onto the loop with `run_coroutine_threadsafe` and waits.
Everything that belongs to one process (loop, thread, parts, id prefix) is made when the
reactor is made and again in a forked child (forksafe.py): a reactor that was running at a
fork raises `ReactorForkedError` in the child.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import inspect
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from jobreactor import forksafe
from jobreactor.calls import AppCalls
from jobreactor.config import Config
from jobreactor.definitions import Registry, default_registry
from jobreactor.distributor import Distributor
from jobreactor.distributor.outcomes import Feedback
from jobreactor.enqueue import Enqueuing
from jobreactor.errors import ReactorClosed, ReactorForkedError, ReactorTimeout
from jobreactor.handle import JobHandle
from jobreactor.housekeeping import Housekeeping
from jobreactor.ids import JobIds
from jobreactor.job import JobRecord
from jobreactor.logs import apply_log_format
from jobreactor.node import Node
from jobreactor.starting import Starting

logger = logging.getLogger("jobreactor")

# Of a stop's `timeout`, what closing takes after the drains (journal writes, sockets).
_CLOSING_MARGIN_S = 2.0

T = TypeVar("T")
Setup = Callable[[], Any]


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover (uvloop is a dependency except on Windows)
        return asyncio.new_event_loop()
    forksafe.made_uvloop()
    return uvloop.new_event_loop()


class Reactor(Enqueuing, AppCalls, Housekeeping, Starting):
    """An event loop in a thread, with the distributors and nodes that live on it."""

    def __init__(self, **config: Any) -> None:
        self.config = Config(**config)
        self.registry: Registry = default_registry
        self._named_feedbacks: dict[str, Feedback] = {}
        self._started_at = ""  # where run()/attach() was called: named by the fork error
        self._forked_from: str | None = None  # the fork error, in a child of a running reactor
        self._new_process_state()
        forksafe.track(self)

    def _new_process_state(self) -> None:
        """Everything that belongs to one process: made here, and again in a forked child."""
        self._pid = os.getpid()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopped = threading.Event()
        self._start_lock = threading.Lock()
        self._distributors: list[Distributor] = []
        self._nodes: list[Node] = []
        self._inbox: collections.deque[
            tuple[JobRecord, Feedback | str | None, Feedback | str | None, JobHandle]
        ] = collections.deque()
        self._signal_tasks: set[asyncio.Future[Any]] = set()
        # How the next stop goes: (its time budget or None for shutdown_timeout, hand over?).
        self._stop_how: tuple[float | None, bool] = (None, False)
        self._attached = False
        self._wake_pending = False
        self._stop_event: asyncio.Event | None = None
        # Job ids (ids.py): drawn again in a forked child, so pre-fork workers never repeat ids.
        self._ids = JobIds()

    def _after_fork(self) -> None:
        """In a forked child: forget the parent's parts (forksafe). Assignments only."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            forksafe.pin((loop, self._thread, self._distributors, self._nodes, self._inbox))
            self._forked_from = forksafe.fork_message(self._pid, self._started_at)
        self._new_process_state()

    def _check_fork(self) -> None:
        """Raise ReactorForkedError if this process is a fork of the one that started us."""
        if os.getpid() != self._pid:
            self._after_fork()  # a fork the at-fork hook did not see (uWSGI, C-level forks)
        if self._forked_from is not None:
            raise ReactorForkedError(self._forked_from)

    def __repr__(self) -> str:
        state = "ready" if self.ready() else "stopped"
        return f"<Reactor {state} distributors={len(self._distributors)} nodes={len(self._nodes)}>"

    # --- the loop and its thread ----------------------------------------------------------------

    def ready(self) -> bool:
        """True once `run()` finished its setup and the loop is still running (Ruby `JR.ready?`)."""
        if os.getpid() != self._pid:
            self._after_fork()
        return self._ready.is_set() and self._loop is not None and self._loop.is_running()

    def run(self, setup: Setup | None = None, *, timeout: float = 10.0, loop_nice: int = 0) -> None:
        """Start the loop in a daemon thread; run `setup` (from this thread); return when ready.

        `loop_nice` (Linux) raises the loop thread's nice value, so the app's own threads win
        the CPU when both want it: waking the loop from `enqueue` then no longer preempts the
        request that enqueues (the web recipes use 10; README "Running inside a web app").
        In a process forked from one where this reactor ran, this starts a new one for this
        process (the parent's stays in the parent).
        """
        self._leave_parent()
        if self._thread is not None and self._thread.is_alive():
            if setup is not None:
                setup()
            return
        self._started_at = forksafe.call_site()
        self._apply_logging()
        self._ready.clear()
        self._stopped.clear()
        started = threading.Event()
        self._thread = threading.Thread(
            target=self._thread_main,
            args=(started, loop_nice),
            name="jobreactor-loop",
            daemon=True,
        )
        self._thread.start()
        if not started.wait(timeout):
            raise ReactorClosed("the reactor loop did not start in time")
        if setup is not None:
            setup()
        self._ready.set()

    def _starting(self) -> None:
        """Before run_forever/attach: leave a parent's reactor behind; note where we start."""
        self._leave_parent()
        self._started_at = forksafe.call_site()

    def _leave_parent(self) -> None:
        """In a fork of a process where this reactor ran: start afresh here, and say so."""
        if os.getpid() != self._pid:
            self._after_fork()
        if self._forked_from is not None:
            logger.warning(
                "this process (%d) is a fork of one where the reactor was started (%s); "
                "starting a new reactor here. Start it only after fork, in each worker "
                "(README: 'Running inside a web app')",
                os.getpid(),
                self._started_at,
            )
            self._forked_from = None

    def _thread_main(self, started: threading.Event, nice: int) -> None:
        if nice and sys.platform == "linux":  # Linux nice values are per thread
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, 0, os.getpriority(os.PRIO_PROCESS, 0) + nice)
        loop = _new_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)

        async def main() -> None:
            self._stop_event = asyncio.Event()
            started.set()
            await self._stop_event.wait()
            await self._shutdown()

        try:
            loop.run_until_complete(main())
        finally:
            loop.close()
            self._stopped.set()

    def run_forever(self, setup: Setup | None = None) -> None:
        """Run the loop in this thread until `stop()` or SIGINT/SIGTERM (Ruby: `JR.run!`).

        `setup` runs in a helper thread once the loop is up, so it may call the blocking API.
        A first signal stops gracefully; a second one stops at once.
        """
        self._starting()
        self._apply_logging()
        loop = _new_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        signals = 0

        def on_signal() -> None:
            nonlocal signals
            signals += 1
            if signals == 1:
                logger.info("signal received: stopping gracefully (again to stop at once)")
                self._request_stop()
            else:
                for node in self._nodes:
                    task = loop.create_task(node.stop(grace=0))
                    self._signal_tasks.add(task)
                    task.add_done_callback(self._signal_tasks.discard)

        async def main() -> None:
            self._stop_event = asyncio.Event()
            for signum in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(signum, on_signal)
            if setup is not None:
                try:
                    await loop.run_in_executor(None, setup)
                except BaseException:
                    self._stop_event.set()
                    await self._shutdown()
                    raise
            self._ready.set()
            await self._stop_event.wait()
            await self._shutdown()

        try:
            loop.run_until_complete(main())
        finally:
            loop.close()
            self._ready.clear()
            self._stopped.set()

    def _request_stop(self) -> None:
        if self._stop_event is not None:
            self._stop_event.set()

    def attach(self, loop: asyncio.AbstractEventLoop, setup: Setup | None = None) -> None:
        """Live on a loop the app already runs (Ruby: `JR.wait_em_and_run`), e.g. an ASGI app's.

        Call it from any thread; `setup` (plain or async) runs on that loop. On the loop itself
        use the `a`-prefixed coroutines (`await JR.astart_distributor(...)`) and `await
        JR.astop()`; `enqueue` works from anywhere, as always.
        """
        self._starting()
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError(
                "the reactor already runs on its own thread (JR.run()); attach() is instead of "
                "run(): start it in one place only (not in both a gunicorn hook and a lifespan)"
            )
        self._apply_logging()
        self._loop = loop
        self._attached = True

        def start() -> None:
            self._stop_event = asyncio.Event()
            if setup is not None:
                result = setup()
                if inspect.isawaitable(result):
                    task = asyncio.ensure_future(result)
                    self._signal_tasks.add(task)
                    task.add_done_callback(self._signal_tasks.discard)
            self._ready.set()

        if self._in_loop_thread():
            start()
        else:
            loop.call_soon_threadsafe(start)

    def ensure_started(
        self,
        host: str | None = None,
        port: int | None = None,
        *,
        setup: Setup | None = None,
        **distributor_options: Any,
    ) -> None:
        """Run the reactor and one distributor in this process unless they run already.

        Idempotent and thread-safe, per process: a forked child starts its own. For frameworks
        without a per-worker start hook: call it before `enqueue` (e.g. in a request hook).
        Settings come from the `JOBREACTOR_*` environment exactly as the gunicorn hooks and the
        ASGI lifespan read it (jobreactor/environment.py); `host`, `port` (default
        127.0.0.1:0) and `distributor_options` (`start_distributor`'s keywords) win over it.
        """
        from jobreactor.contrib import configure  # the recipes' one reading of the environment

        if os.getpid() != self._pid:
            self._after_fork()
        with self._start_lock:
            if self.ready() and self._distributors:
                return
            bind_host, bind_port, options = configure(
                self, {"host": host, "port": port, **distributor_options}
            )
            self.run(setup)
            self.start_distributor(bind_host, bind_port, **options)

    async def astop(self, timeout: float | None = None, *, handover: bool = False) -> None:
        """`stop()` for code on the reactor's loop (an attached reactor, a feedback)."""
        self._ready.clear()
        self._stop_how = (timeout, handover)
        await self._shutdown()
        if self._stop_event is not None:
            self._stop_event.set()

    def stop(self, timeout: float | None = None, *, handover: bool = False) -> None:
        """Graceful: nodes drain, distributors wait for their jobs (bounded), then the loop ends.

        `timeout` bounds the whole stop (default: twice `shutdown_timeout` plus 10 s); the
        drains get it less a margin for closing, so one timeout rules. `handover` (the web
        recipes' worker exit): a distributor in a discovery group hands its jobs to the group
        instead of waiting for them (docs/semantics.md, "Recycling a web worker").
        In a forked child of a running reactor it does nothing: the loop is the parent's.
        """
        if os.getpid() != self._pid:
            self._after_fork()
        loop = self._loop
        if loop is None or not loop.is_running():
            return
        self._ready.clear()
        self._stop_how = (timeout, handover)
        if self._attached:
            # The app owns the loop: shut our parts down on it and leave it running.
            if self._in_loop_thread():
                raise RuntimeError("on an attached reactor's loop, use `await JR.astop()`")
            limit = self.config["shutdown_timeout"] * 2 + 10 if timeout is None else timeout
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(limit)
            return
        if self._in_loop_thread():
            self._request_stop()
            return
        loop.call_soon_threadsafe(self._request_stop)
        limit = self.config["shutdown_timeout"] * 2 + 10 if timeout is None else timeout
        self._stopped.wait(limit)
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    async def _shutdown(self) -> None:
        self._drain_inbox()
        (timeout, handover), self._stop_how = self._stop_how, (None, False)
        budget = None if timeout is None else max(0.0, timeout - _CLOSING_MARGIN_S)
        for node in list(self._nodes):
            await node.stop(budget)
        for distributor in list(self._distributors):
            await distributor.stop(budget, handover=handover)
        self._nodes.clear()
        self._distributors.clear()

    def _apply_logging(self) -> None:
        apply_log_format(logger, self.config["log_format"])
        level = self.config["logger_method"]
        if level is None:
            logger.disabled = True
        else:
            logger.disabled = False
            logger.setLevel(level.upper())

    def _in_loop_thread(self) -> bool:
        loop = self._loop
        if loop is None:
            return False
        try:
            return asyncio.get_running_loop() is loop
        except RuntimeError:
            return False

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None = 30.0) -> T:
        """Run `coro` on the loop and wait for it from this (non-loop) thread."""
        try:
            self._check_fork()
        except ReactorForkedError:
            coro.close()
            raise
        loop = self._loop
        if loop is None or not loop.is_running():
            coro.close()
            raise ReactorClosed("the reactor is not running: call JR.run() first")
        if self._in_loop_thread():
            coro.close()
            raise RuntimeError(
                "this blocking call was made on the reactor's own loop; "
                "use the `a`-prefixed coroutine (e.g. `await JR.astart_node(...)`) there"
            )
        if self._thread is not None and not self._thread.is_alive():
            coro.close()
            raise ReactorClosed("the reactor's loop thread has ended: call JR.run() again")
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        done, _ = concurrent.futures.wait([future], timeout)
        if not done:
            future.cancel()
            raise ReactorTimeout(
                f"the reactor's loop did not answer within {timeout}s: something blocks it "
                "(sync code in an async job or a feedback?); the call was cancelled"
            )
        return future.result()


JR = Reactor()
