"""Reactor: the coordinator of the app side; `JR` is the default instance, tests build their own.

It owns five parts, each with one job, and wires them with narrow callbacks:

- `LoopHost` (loophost.py): the event loop and its thread (or the app's loop, attached);
  the one place threads meet (`call`, `hop`);
- `Members` (starting.py): the distributors and nodes it started (`start_distributor`,
  `start_node`, which returns a `NodeHandle`), and their orderly stop;
- `Enqueuer` (enqueue.py): `enqueue` validates and copies the job in the caller's thread,
  appends it to a queue and wakes the loop at most once per batch;
- `AppCalls` (calls.py): nodes, cancel, batch, wait_for_node, call;
- `Housekeeping` (housekeeping.py): release_lock, retry.

The app's calls are the parts' own methods, bound here at construction (`JR.enqueue` is
`Enqueuer.enqueue`): no hop through the coordinator on the hot path. What the Reactor itself
keeps: its config, its registry, its metrics, named feedbacks, the life cycle (run, attach,
stop) and fork safety. Everything that belongs to one process (loop, thread, parts' state, id
prefix) is made again in a forked child (forksafe.py): a reactor that was running at a fork
raises `ReactorForkedError` in the child.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from jobreactor import forksafe
from jobreactor.calls import AppCalls
from jobreactor.config import Config
from jobreactor.definitions import Registry, default_registry
from jobreactor.distributor import Distributor
from jobreactor.distributor.outcomes import Feedback
from jobreactor.enqueue import Enqueuer
from jobreactor.errors import ReactorForkedError, ReactorRunning
from jobreactor.housekeeping import Housekeeping
from jobreactor.logs import apply_log_format
from jobreactor.loophost import LoopHost, Setup
from jobreactor.metrics import JobMetrics
from jobreactor.starting import Members

__all__ = ["JR", "Reactor", "Setup"]

logger = logging.getLogger("jobreactor")

# Of a stop's `timeout`, what closing takes after the drains (journal writes, sockets).
_CLOSING_MARGIN_S = 2.0


class Reactor:
    """An event loop in a thread, with the distributors and nodes that live on it."""

    def __init__(self, **config: Any) -> None:
        self.config = Config(**config)
        self._named_feedbacks: dict[str, Feedback] = {}
        self._started_at = ""  # where run()/attach() was called: named by the fork error
        self._forked_from: str | None = None  # the fork error, in a child of a running reactor
        self._pid = os.getpid()
        # How the next stop goes: (its time budget or None for shutdown_timeout, hand over?).
        self._stop_how: tuple[float | None, bool] = (None, False)
        self.metrics = JobMetrics()  # this reactor's figures (metrics.py: owned, not global)
        self.loop_host = LoopHost(self._shutdown, self._check_fork)
        self.members = Members(
            self.config, self._named_feedbacks, self.loop_host, self._check_fork, self.metrics
        )
        self.enqueuer = Enqueuer(
            self.config,
            default_registry,
            self._named_feedbacks,
            self.loop_host,
            self.members,
            self._check_fork,
        )
        self._bind_calls()
        forksafe.track(self)

    def _bind_calls(self) -> None:
        """The app's calls, as the parts that do them."""
        enqueuer, members, host = self.enqueuer, self.members, self.loop_host
        self.enqueue = enqueuer.enqueue
        self.aenqueue = enqueuer.aenqueue
        self.enqueue_many = enqueuer.enqueue_many
        self.register_feedback = enqueuer.register_feedback
        self.wait_idle = enqueuer.wait_idle
        self.await_idle = enqueuer.await_idle
        self.start_distributor = members.start_distributor
        self.astart_distributor = members.astart_distributor
        self.start_node = members.start_node
        self.astart_node = members.astart_node
        calls = AppCalls(host, members, enqueuer.drain_inbox)
        self.nodes = calls.nodes
        self.cancel = calls.cancel
        self.batch = calls.batch
        self.wait_for_node = calls.wait_for_node
        self.await_for_node = calls.await_for_node
        self.call = calls.call
        housekeeping = Housekeeping(host, members)
        self.release_lock = housekeeping.release_lock
        self.arelease_lock = housekeeping.arelease_lock
        self.retry = housekeeping.retry
        self.aretry = housekeeping.aretry

    @property
    def registry(self) -> Registry:
        """The app's job definitions (default options, limits, loner hooks): the `@job`
        registry unless set."""
        return self.enqueuer.registry

    @registry.setter
    def registry(self, registry: Registry) -> None:
        self.enqueuer.registry = registry

    @property
    def distributor(self) -> Distributor:
        """The distributor that takes enqueues (the first started); ReactorClosed if none."""
        return self.members.first()

    def _after_fork(self) -> None:
        """In a forked child: forget the parent's parts (forksafe). Assignments only."""
        running = self.loop_host.loop is not None and not self.loop_host.loop.is_closed()
        old = (self.loop_host.forget(), self.members.forget(), self.enqueuer.forget())
        if running:
            forksafe.pin(old)
            self._forked_from = forksafe.fork_message(self._pid, self._started_at)
        self._pid = os.getpid()
        self._stop_how = (None, False)

    def _check_fork(self) -> None:
        """Raise ReactorForkedError if this process is a fork of the one that started us."""
        if os.getpid() != self._pid:
            self._after_fork()  # a fork the at-fork hook did not see (uWSGI, C-level forks)
        if self._forked_from is not None:
            raise ReactorForkedError(self._forked_from)

    def __repr__(self) -> str:
        state = "ready" if self.ready() else "stopped"
        members = self.members
        return (
            f"<Reactor {state} distributors={len(members.distributors)} nodes={len(members.nodes)}>"
        )

    # --- the loop's life --------------------------------------------------------------------------

    def ready(self) -> bool:
        """True once `run()` finished its setup and the loop is still running (Ruby `JR.ready?`)."""
        if os.getpid() != self._pid:
            self._after_fork()
        return self.loop_host.ready.is_set() and self.loop_host.is_running()

    def run(self, setup: Setup | None = None, *, timeout: float = 10.0, loop_nice: int = 0) -> None:
        """Start the loop in a daemon thread; run `setup` (from this thread); return when ready.

        `loop_nice` (Linux) raises the loop thread's nice value, so the app's own threads win
        the CPU when both want it: waking the loop from `enqueue` then no longer preempts the
        request that enqueues (the web recipes use 10; README "Running inside a web app").
        In a process forked from one where this reactor ran, this starts a new one for this
        process (the parent's stays in the parent).
        """
        self._leave_parent()
        host = self.loop_host
        if host.thread is not None and host.thread.is_alive():
            if setup is not None:
                setup()
            return
        self._starting()
        host.start_thread(loop_nice, timeout)
        if setup is not None:
            setup()
        host.ready.set()

    def run_forever(self, setup: Setup | None = None) -> None:
        """Run the loop in this thread until `stop()` or SIGINT/SIGTERM (Ruby: `JR.run!`).

        `setup` runs in a helper thread once the loop is up, so it may call the blocking API.
        A first signal stops gracefully; a second one stops at once.
        """
        self._leave_parent()
        self._starting()
        host = self.loop_host

        def stop_now() -> None:
            for stop in self.members.stop_nodes_now():
                host.background(stop)

        host.run_here(setup, stop_now)

    def attach(self, loop: asyncio.AbstractEventLoop, setup: Setup | None = None) -> None:
        """Live on a loop the app already runs (Ruby: `JR.wait_em_and_run`), e.g. an ASGI app's.

        Call it from any thread; `setup` (plain or async) runs on that loop. On the loop itself
        use the `a`-prefixed coroutines (`await JR.astart_distributor(...)`) and `await
        JR.astop()`; `enqueue` works from anywhere, as always.
        """
        self._leave_parent()
        thread = self.loop_host.thread
        if thread is not None and thread.is_alive():
            raise ReactorRunning(
                "the reactor already runs on its own thread (JR.run()); attach() is instead of "
                "run(): start it in one place only (not in both a gunicorn hook and a lifespan)"
            )
        self._starting()
        self.loop_host.attach(loop, setup)

    def _starting(self) -> None:
        """Where we start (named by the fork error), and the configured logging."""
        self._started_at = forksafe.call_site()
        apply_log_format(logger, self.config["log_format"])
        level = self.config["logger_method"]
        logger.disabled = level is None
        if level is not None:
            logger.setLevel(level.upper())

    def _leave_parent(self) -> None:
        """In a fork of a process where this reactor ran: start afresh here, and say so."""
        if os.getpid() != self._pid:
            self._after_fork()
        if self._forked_from is not None:
            logger.warning(
                "this process (%d) is a fork of one where the reactor was started (%s); "
                "starting a new reactor here. Start it only after fork, in each worker "
                "(docs/web.md: 'Running inside a web app')",
                os.getpid(),
                self._started_at,
            )
            self._forked_from = None

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
        with self.loop_host.start_lock:
            if self.ready() and self.members.distributors:
                return
            bind_host, bind_port, options = configure(
                self, {"host": host, "port": port, **distributor_options}
            )
            self.run(setup)
            self.start_distributor(bind_host, bind_port, **options)

    async def astop(self, timeout: float | None = None, *, handover: bool = False) -> None:
        """`stop()` for code on the reactor's loop (an attached reactor, a feedback)."""
        self.loop_host.ready.clear()
        self._stop_how = (timeout, handover)
        await self._shutdown()
        self.loop_host.request_stop()

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
        if not self.loop_host.is_running():
            return
        self.loop_host.ready.clear()
        self._stop_how = (timeout, handover)
        limit = self.config["shutdown_timeout"] * 2 + 10 if timeout is None else timeout
        self.loop_host.stop_from_outside(limit)

    def request_stop(self) -> None:
        """Stop soon, from the reactor's loop (a node's `drain` ending a CLI node's process)."""
        self.loop_host.request_stop()

    async def _shutdown(self) -> None:
        self.enqueuer.drain_inbox()
        (timeout, handover), self._stop_how = self._stop_how, (None, False)
        budget = None if timeout is None else max(0.0, timeout - _CLOSING_MARGIN_S)
        await self.members.stop(budget, handover)


JR = Reactor()
