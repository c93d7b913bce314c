"""Eager mode: `JR.enqueue` runs the job at once and calls its feedbacks before it returns.

For unit tests of the code that enqueues and of the jobs themselves: no sockets, no waiting.
It is the node's own attempt code (node/attempts.py: callbacks, errbacks, retries, CancelJob,
periodic runs, job_itself, the gems' guards) and the distributor's own feedback code
(distributor/outcomes.py: feedbacks, handles, enqueue_id/loner keys, batch completion), wired
together in one process without the link between them. Args cross a msgpack round trip as on
the wire, so a feedback sees what it would see in production.

Time is skipped, not waited: a delayed job (`after`, `run_at`), a retry and the next run of a
periodic job run at once, in the order of their due times; the records keep the real
`run_at_ts` and `make_after`, so a test can check the delay a node would have waited. A
periodic job runs `periodic_runs` times (attempts, retries included) and then rests, scheduled;
`run_scheduled()` gives it more runs, `JR.cancel` ends it.

Everything runs on one private event loop in a helper thread (so async tests can use it too);
the caller blocks until every job it caused has settled. A job or feedback that enqueues more
work extends that same run.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import Coroutine, Iterable
from pathlib import Path
from typing import Any, TypeVar

from jobreactor.definitions import Registry
from jobreactor.distributor.outcomes import Feedback, Observer, Waiting
from jobreactor.enqueue import ON_LOOP_ADMISSION, check_batchable, needs_admission, refused
from jobreactor.errors import InvalidOptions, ReactorRunning, WrongThread
from jobreactor.handle import JobHandle
from jobreactor.job import JobRecord
from jobreactor.node.held import HeldJob
from jobreactor.reactor import Reactor
from jobreactor.storage import MemoryStorage
from jobreactor.storage.memory import Keyspace
from jobreactor.testing.inline import ADDRESS, AppSide, EagerNode, InlineLink
from jobreactor.testing.recording import OutcomeLog

T = TypeVar("T")
# A run that starts this many attempts without settling is a loop (a job that re-enqueues
# itself forever, say); eager mode stops it with an error instead of hanging the test.
MAX_ATTEMPTS_PER_RUN = 10_000
# The reactor calls eager mode answers while installed (the reactor's own come back after).
_ROUTED = ("enqueue", "aenqueue", "enqueue_many", "cancel", "wait_idle")


class EagerMode:
    """Runs `reactor`'s enqueues inline while installed (see the module docstring)."""

    def __init__(
        self,
        reactor: Reactor,
        *,
        jobs: str | Path | None = None,
        periodic_runs: int = 1,
        config: dict[str, Any] | None = None,
        timeout: float = 60.0,
    ) -> None:
        if periodic_runs < 1:
            raise InvalidOptions("periodic_runs must be >= 1")
        self.reactor = reactor
        self.outcomes = OutcomeLog()
        self.periodic_runs = periodic_runs
        self.timeout = timeout
        self._config = dict(config or {})
        self.registry = reactor.registry
        if jobs is not None:
            self.registry = Registry()
            self.registry.load_directory(jobs)
        self._inbox: collections.deque[tuple[JobRecord, Waiting]] = collections.deque()
        self._names: dict[str, str] = {}
        self._runs: collections.Counter[str] = collections.Counter()
        self._budget: dict[str, int] = {}
        self._resting: dict[str, float] = {}
        self._due: collections.deque[str] = collections.deque()
        self._installed = False
        self._replaced: dict[str, Any] = {}  # the reactor's own calls, while installed

    # --- install / uninstall ------------------------------------------------------------------

    def __enter__(self) -> EagerMode:
        self.install()
        return self

    def __exit__(self, *exc: object) -> None:
        self.uninstall()

    def install(self) -> None:
        """Start the private loop and route the reactor's enqueue, cancel and wait_idle here."""
        if self.reactor.ready():
            raise ReactorRunning(
                "eager mode needs a reactor that is not running (JR.run() was called)"
            )
        self._saved = self.reactor.config.current
        self.reactor.config.update(self._config)
        self.settings = self.reactor.config.current
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="jobreactor-eager", daemon=True
        )
        self._thread.start()
        self._run(self._setup())
        self._replaced = {name: getattr(self.reactor, name) for name in _ROUTED}
        for name in _ROUTED:
            setattr(self.reactor, name, getattr(self, name))
        self._installed = True

    def uninstall(self) -> None:
        if not self._installed:
            return
        self._installed = False
        for name, call in self._replaced.items():
            setattr(self.reactor, name, call)
        self.reactor.config.restore(self._saved)
        self._node.pool.shutdown(wait=False, cancel_futures=True)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _setup(self) -> None:
        storage = MemoryStorage(Keyspace())  # fresh keys: nothing leaks between tests
        self._node = EagerNode(self.settings, self.registry, storage)
        observers: list[Observer] = [self.outcomes]
        self._app = AppSide(self.settings, storage, self.reactor._named_feedbacks, observers)
        self._link = InlineLink()
        self._lock = asyncio.Lock()

    # --- the app's calls, eagerly -------------------------------------------------------------

    def enqueue(
        self,
        name: str,
        args: dict[str, Any] | None = None,
        opts: dict[str, Any] | None = None,
        success: Feedback | str | None = None,
        error: Feedback | str | None = None,
    ) -> JobHandle | None:
        """Run job `name` now, with its retries; feedbacks are called before this returns."""
        record, waiting = self._prepare(name, args, opts, success, error)
        if self._on_loop():
            if needs_admission(record):
                raise WrongThread(ON_LOOP_ADMISSION)
            return self._queue(record, waiting)  # the run under way takes it
        return self._run(self._enqueue_and_run(record, waiting))

    async def aenqueue(
        self,
        name: str,
        args: dict[str, Any] | None = None,
        opts: dict[str, Any] | None = None,
        success: Feedback | str | None = None,
        error: Feedback | str | None = None,
    ) -> JobHandle | None:
        record, waiting = self._prepare(name, args, opts, success, error)
        if self._on_loop():
            return await self._admit_and_queue(record, waiting)
        future = asyncio.run_coroutine_threadsafe(
            self._enqueue_and_run(record, waiting), self._loop
        )
        return await asyncio.wrap_future(future)

    def enqueue_many(
        self,
        jobs: Iterable[tuple[str, dict[str, Any] | None, dict[str, Any] | None]],
        success: Feedback | str | None = None,
        error: Feedback | str | None = None,
    ) -> list[JobHandle]:
        prepared = [self._prepare(name, args, opts, success, error) for name, args, opts in jobs]
        check_batchable(record for record, _ in prepared)
        handles = [self._queue(record, waiting) for record, waiting in prepared]
        if not self._on_loop():
            self._run(self._drive())
        return handles

    def cancel(self, job_id: str) -> bool:
        """End a job that rests between periodic runs (or is still queued); True if found."""

        def now() -> bool:
            self._resting.pop(job_id, None)
            return self._node.settle.cancel_job(job_id)

        async def cancel_and_settle() -> bool:
            found = now()
            await self._drive()  # its "cancelled" reaches the handle
            return found

        return now() if self._on_loop() else self._run(cancel_and_settle())

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Nothing to wait for: every enqueue settled before it returned."""
        return None

    def run_scheduled(self, runs: int = 1) -> None:
        """Give every resting periodic job `runs` more runs, now."""

        async def again() -> None:
            for job_id, due in list(self._resting.items()):
                del self._resting[job_id]
                self._budget[job_id] = self._runs[job_id] + runs
                self._node.holdings.timers.schedule(job_id, due)
            await self._drive()

        self._run(again())

    def scheduled(self) -> list[str]:
        """Ids of the periodic jobs resting after their runs (still scheduled, not running)."""
        return list(self._resting)

    def record(self, job_id: str) -> JobRecord | None:
        """A copy of the job's stored record (gone once done, if remove_done_jobs)."""

        async def load() -> JobRecord | None:
            found = await self._node.storage.load(self._node.name, job_id)
            return None if found is None else found.copy()

        return self._run(load())

    # --- running ------------------------------------------------------------------------------

    def _prepare(
        self,
        name: str,
        args: dict[str, Any] | None,
        opts: dict[str, Any] | None,
        success: Feedback | str | None,
        error: Feedback | str | None,
    ) -> tuple[JobRecord, Waiting]:
        enqueuer = self.reactor.enqueuer
        record = enqueuer.new_record(name, args, opts, ADDRESS)
        success, error = enqueuer.feedback(success), enqueuer.feedback(error)
        if success is not None:
            record.on_success = success if isinstance(success, str) else record.id
        if error is not None:
            record.on_error = error if isinstance(error, str) else record.id
        return record, Waiting(success, error, JobHandle(record.id))

    def _queue(self, record: JobRecord, waiting: Waiting) -> JobHandle:
        assert waiting.handle is not None
        waiting.handle._durable = True
        self._inbox.append((record, waiting))
        return waiting.handle

    async def _admit_and_queue(self, record: JobRecord, waiting: Waiting) -> JobHandle | None:
        if not await self._app.admit(record):
            await refused(self.registry, record)
            return None
        return self._queue(record, waiting)

    async def _enqueue_and_run(self, record: JobRecord, waiting: Waiting) -> JobHandle | None:
        handle = await self._admit_and_queue(record, waiting)
        await self._drive()
        return handle

    async def _drive(self) -> None:
        """Run until nothing is due: new jobs, attempts, reports, the tasks they started."""
        async with self._lock:
            attempts = 0
            while await self._step():
                attempts += 1
                if attempts > MAX_ATTEMPTS_PER_RUN:
                    raise RuntimeError(
                        f"eager mode took {MAX_ATTEMPTS_PER_RUN} steps without settling: a job "
                        "that enqueues itself forever?"
                    )

    async def _step(self) -> bool:
        await self._intake()
        if self._link.reports:
            reports, self._link.reports = self._link.reports, []
            for item in reports:
                self._app.settle_report(item, self._names.get(item.job_id, "?"))
            return True
        busy = self._node.tasks.running | self._app.tasks
        if busy:
            await asyncio.wait(busy)
            return True
        held = self._next_due()
        if held is None:
            return False
        self._runs[held.record.id] += 1
        node = self._node
        node.clock.claim(held)
        if node.guards.needed(held):
            await node.guards.enter(held)
        else:
            node.attempts.start(held)
        return True

    async def _intake(self) -> None:
        while self._inbox:
            record, waiting = self._inbox.popleft()
            record.node = self._node.name
            self._app.waiting[record.id] = waiting
            self._names[record.id] = record.name
            held = HeldJob(record, self._link)
            self._node.holdings.jobs[record.id] = held
            await self._node.storage.save_many(self._node.name, [record])
            self._node.clock.at_epoch(held, record.run_at_ts)

    def _next_due(self) -> HeldJob | None:
        """The next job by due time (time skipped); periodic jobs past their runs rest."""
        while True:
            if not self._due:
                timers = self._node.holdings.timers
                deadline = timers.next_deadline()
                if deadline is None:
                    return None
                self._due.extend(timers.pop_due(deadline))
            job_id = self._due.popleft()
            held = self._node.holdings.jobs.get(job_id)
            if held is None or held.running:
                continue
            budget = self._budget.get(job_id, self.periodic_runs)
            if held.record.is_periodic and self._runs[job_id] >= budget:
                self._resting[job_id] = held.record.run_at_ts
                continue
            return held

    # --- threads ------------------------------------------------------------------------------

    def _on_loop(self) -> bool:
        return threading.get_ident() == self._thread.ident

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(self.timeout)
