"""LoopHost: the reactor's event loop and the thread it runs on; the one place threads meet.

A part of `Reactor` (reactor.py). It owns, per process, the loop, its thread (or the app's
loop, attached), the ready/stopped events and the stop request. Other parts reach the loop
only through it: `call` (wait for a coroutine from another thread), `hop` (await it from any
loop), `in_loop_thread`, and the read-only `loop`. What runs at the end of the loop's life is
the coordinator's `shutdown` callback; what checks for a fork first is its `check_fork`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import logging
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from jobreactor import forksafe
from jobreactor.errors import ReactorClosed, ReactorForkedError, ReactorTimeout, WrongThread

logger = logging.getLogger("jobreactor")

T = TypeVar("T")
Setup = Callable[[], Any]
BLOCKING_ON_LOOP = (
    "this blocking call was made on the reactor's own loop; "
    "use the `a`-prefixed coroutine (e.g. `await JR.astart_node(...)`) there"
)


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover (uvloop is a dependency except on Windows)
        return asyncio.new_event_loop()
    forksafe.made_uvloop()
    return uvloop.new_event_loop()


class LoopHost:
    """The loop and its thread. `loop` is read-only to other parts (None until started)."""

    def __init__(
        self, shutdown: Callable[[], Coroutine[Any, Any, None]], check_fork: Callable[[], None]
    ) -> None:
        self._shutdown = shutdown
        self._check_fork = check_fork
        self.forget()

    def forget(self) -> tuple[Any, ...]:
        """Start afresh (made again in a forked child); return what the old state held."""
        old = tuple(getattr(self, name, None) for name in ("loop", "thread", "_background"))
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self.ready = threading.Event()  # set once run()/attach() finished their setup
        self.stopped = threading.Event()  # set when an own-thread loop has ended
        self.attached = False  # the loop is the app's (attach): we never stop it
        self.start_lock = threading.Lock()  # ensure_started's, per process
        self._stop_event: asyncio.Event | None = None
        self._background: set[asyncio.Future[Any]] = set()
        return old

    def is_running(self) -> bool:
        return self.loop is not None and self.loop.is_running()

    def in_loop_thread(self) -> bool:
        loop = self.loop
        if loop is None:
            return False
        try:
            return asyncio.get_running_loop() is loop
        except RuntimeError:
            return False

    def background(self, awaitable: Awaitable[Any]) -> None:
        """Run `awaitable` on the loop as a task this host keeps alive until it ends."""
        task = asyncio.ensure_future(awaitable)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- the loop's life ----------------------------------------------------------------------

    def start_thread(self, nice: int, timeout: float) -> None:
        """Start the loop in a daemon thread; return once it runs."""
        self.ready.clear()
        self.stopped.clear()
        started = threading.Event()
        self.thread = threading.Thread(
            target=self._thread_main, args=(started, nice), name="jobreactor-loop", daemon=True
        )
        self.thread.start()
        if not started.wait(timeout):
            raise ReactorClosed("the reactor loop did not start in time")

    def _thread_main(self, started: threading.Event, nice: int) -> None:
        if nice and sys.platform == "linux":  # Linux nice values are per thread
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, 0, os.getpriority(os.PRIO_PROCESS, 0) + nice)

        async def main(loop: asyncio.AbstractEventLoop) -> None:
            self._stop_event = asyncio.Event()
            started.set()
            await self._stop_event.wait()
            await self._shutdown()

        self._run_loop(main)

    def _run_loop(
        self, main: Callable[[asyncio.AbstractEventLoop], Coroutine[Any, Any, None]]
    ) -> None:
        """A new loop, ours, in this thread: `main` runs on it; then it closes."""
        loop = new_loop()
        self.loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(main(loop))
        finally:
            loop.close()
            self.ready.clear()
            self.stopped.set()

    def run_here(self, setup: Setup | None, on_second_signal: Callable[[], None]) -> None:
        """Run the loop in this thread until `request_stop` or SIGINT/SIGTERM (a second
        signal calls `on_second_signal`). `setup` runs in a helper thread once the loop is up."""
        signals = 0

        def on_signal() -> None:
            nonlocal signals
            signals += 1
            if signals == 1:
                logger.info("signal received: stopping gracefully (again to stop at once)")
                self.request_stop()
            else:
                on_second_signal()

        async def main(loop: asyncio.AbstractEventLoop) -> None:
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
            self.ready.set()
            await self._stop_event.wait()
            await self._shutdown()

        self._run_loop(main)

    def attach(self, loop: asyncio.AbstractEventLoop, setup: Setup | None) -> None:
        """Live on the app's `loop`; `setup` (plain or async) runs there, then ready."""
        self.loop = loop
        self.attached = True

        def start() -> None:
            self._stop_event = asyncio.Event()
            if setup is not None:
                result = setup()
                if inspect.isawaitable(result):
                    self.background(result)
            self.ready.set()

        if self.in_loop_thread():
            start()
        else:
            loop.call_soon_threadsafe(start)

    def request_stop(self) -> None:
        """End the loop's life (the shutdown runs on it). On the loop's thread only."""
        if self._stop_event is not None:
            self._stop_event.set()

    def stop_from_outside(self, limit: float) -> None:
        """From another thread: stop an own-thread loop, or shut down on an attached one."""
        loop = self.loop
        assert loop is not None
        if self.attached:  # the app owns the loop: shut our parts down on it, leave it running
            if self.in_loop_thread():
                raise WrongThread("on an attached reactor's loop, use `await JR.astop()`")
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(limit)
            return
        if self.in_loop_thread():
            self.request_stop()
            return
        loop.call_soon_threadsafe(self.request_stop)
        self.stopped.wait(limit)
        if self.thread is not None:
            self.thread.join(timeout=5)
            self.thread = None

    # --- other threads and loops ----------------------------------------------------------------

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = 30.0) -> T:
        """Run `coro` on the loop and wait for it from this (non-loop) thread."""
        try:
            self._check_fork()
        except ReactorForkedError:
            coro.close()
            raise
        loop = self.loop
        if loop is None or not loop.is_running():
            coro.close()
            raise ReactorClosed("the reactor is not running: call JR.run() first")
        if self.in_loop_thread():
            coro.close()
            raise WrongThread(BLOCKING_ON_LOOP)
        if self.thread is not None and not self.thread.is_alive():
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

    async def hop(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await `coro` on the reactor's loop from any loop (run it here if this is that loop)."""
        loop = self.loop
        if loop is None or not loop.is_running():
            coro.close()
            raise ReactorClosed("the reactor is not running: call JR.run() first")
        if self.in_loop_thread():
            return await coro
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))
