"""Attempts: what a node does with a job once it is due (docs/semantics.md §3–§5).

One attempt of a held job: its state change, the callback chain (inline, as a task, or in the
thread pool: runner.py), then success, retry, final failure or cancel, each reported to the
distributor it came from; and around it the gems' guards (guards.py). Node (node.py) mixes
this in; the receiving, timers, links and storage live there.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jobreactor import otel
from jobreactor.batch import Batch, open_batch
from jobreactor.config import ReactorConfig
from jobreactor.definitions import JobDefinition, Registry
from jobreactor.errors import CancelJob, NoSuchJob, StorageError
from jobreactor.job import JobRecord, JobStatus, error_text, next_due, retry_delay
from jobreactor.limits import LimitKeyError, SlotRef
from jobreactor.logs import log_job, log_job_failed, log_job_retry
from jobreactor.metrics import JobMetrics
from jobreactor.node import guards
from jobreactor.node.link import DistributorLink
from jobreactor.node.process_pool import ProcessPool
from jobreactor.node.runner import errbacks_of, plain_args, run_steps, run_sync, steps_of
from jobreactor.node.scheduler import ReadyQueue, TimerHeap
from jobreactor.node.supervisor import Recycler
from jobreactor.storage.base import Storage

if TYPE_CHECKING:
    from jobreactor.node.limits import NodeLimits

logger = logging.getLogger("jobreactor.node")


@dataclass(slots=True)
class Held:
    record: JobRecord  # record.lease: the distributor's lease, stored so a restart keeps it
    link: DistributorLink | None
    running: bool = False
    cancel_requested: bool = False
    holds_credit: bool = False  # an instant job's credit, returned when its first attempt ends
    dropped: bool = False  # the distributor gave it to someone else: finish silently
    perform_held: bool = False  # holds its perform_id (dj_one) key
    lock_token: str | None = None  # owns its `lock` for the running attempt
    releasing: asyncio.Task[None] | None = None  # releasing its lock / perform id
    origin: str = ""  # instance id of the distributor that sent it (discovery re-routes by it)
    limit_slots: list[SlotRef] | None = None  # concurrency slots it holds (node/limits.py)
    span: Any = None  # the running attempt's OpenTelemetry span (a traced job: otel.py)


class Attempts:
    """The attempt half of Node. The attributes below are Node's (node.py sets them)."""

    _metrics: JobMetrics | None = None  # a Node sets METRICS; others (EagerNode) count nothing
    limits: NodeLimits | None = None  # a Node's gates for its definitions' `limits`
    recycler: Recycler | None = None  # a supervised child's job/memory budget (supervisor.py)
    _processes: ProcessPool | None = None  # defer="process" (process_pool.py), made when used

    if TYPE_CHECKING:
        name: str
        settings: ReactorConfig
        registry: Registry
        storage: Storage
        loop: asyncio.AbstractEventLoop
        links: list[DistributorLink]
        _jobs: dict[str, Held]
        _timers: TimerHeap
        _ready: ReadyQueue
        _running: int
        _idle: asyncio.Event
        _pool: concurrent.futures.ThreadPoolExecutor
        _log_jobs: bool
        _redis_url: str | None
        _dirty: dict[str, JobRecord]
        _doomed: set[str]
        _tasks: set[asyncio.Task[Any]]

        def _persist(self, record: JobRecord) -> None: ...
        def _flush_soon(self) -> None: ...
        def _kick(self) -> None: ...
        def _schedule_at_epoch(self, held: Held, due_epoch: float) -> None: ...

    def _spawn(self, coro: Any) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("node %s: internal task failed", self.name, exc_info=task.exception())

    # --- attempts -------------------------------------------------------------------------------

    def _claim_slot(self, held: Held) -> None:
        held.running = True
        self._running += 1
        self._idle.clear()

    def start_attempt(self, held: Held) -> None:
        """Run one attempt of `held`, whose run slot is taken (docs/semantics.md §3)."""
        record = held.record
        record.status = JobStatus.IN_PROGRESS
        record.attempt += 1
        record.run_at = time.time()
        metrics = self._metrics
        if metrics is not None:
            name = record.name if record.name in metrics.known else metrics.label(record.name)
            metrics.started[name] += 1
            metrics.wait.observe(name, record.run_at - record.run_at_ts)
        self._persist(record)
        if self.recycler is not None:
            self.recycler.attempt_started(time.monotonic())
        if record.attempt != 1:
            # A retry: the distributor counts it (metrics: one source per figure). Wire-wise
            # a plain "started" report, which distributors before this ignore.
            self._report(held, "started", False, {"attempt": record.attempt})
        elif (record.enqueue_id is not None or record.loner) and record.cron is None:
            # (a cron schedule holds its enqueue_id while it lives: no "started" for it)
            self._report(held, "started", False, {})  # frees its enqueue-time keys (dj_one)
        if record.trace is not None:
            held.span = otel.run_span(
                record.trace, record.id, record.name, record.attempt, self.name
            )
            with otel.use_span(held.span):
                self._run_body(held)
            return
        self._run_body(held)

    def _run_body(self, held: Held) -> None:
        record = held.record
        definition = self.registry.get(record.name)
        if definition is None:
            self._on_failure(held, None, NoSuchJob(record.name))
            return
        if self._log_jobs:
            log_job(logger, "start", record)
        args = dict(record.args)
        if self.settings.merge_job_itself_to_args:
            args["job_itself"] = self._job_itself(record)
        timeout = record.max_run_time or self.settings.max_run_time
        is_async = definition.is_async
        if not is_async and not record.defer and timeout is None:
            self._after_callbacks(held, definition, args, run_sync(steps_of(definition), args))
            return
        self._spawn(self._attempt(held, definition, args, timeout))

    def _process_pool(self) -> ProcessPool:
        if self._processes is None:
            self._processes = ProcessPool(
                self.settings.process_pool_size, self.settings.job_directory
            )
        return self._processes

    def _pool_for(
        self, record: JobRecord, definition: JobDefinition, timeout: float | None
    ) -> concurrent.futures.ThreadPoolExecutor | None:
        # A plain job under max_run_time runs in the pool too: only there can it be timed out.
        if definition.is_async:
            return None
        return self._pool if (record.defer or timeout is not None) else None

    async def _attempt(
        self, held: Held, definition: JobDefinition, args: dict[str, Any], timeout: float | None
    ) -> None:
        record = held.record
        if record.defer_process:
            raised = await self._process_pool().run(definition, args, timeout)
        else:
            raised = await run_steps(
                steps_of(definition),
                args,
                is_async=definition.is_async,
                pool=self._pool_for(record, definition, timeout),
                timeout_s=timeout,
                job_name=record.name,
            )
        if raised is None or isinstance(raised, CancelJob):
            self._after_callbacks(held, definition, args, raised)
            return
        errback_args = self._prepare_errbacks(held, raised)
        raised2 = await run_steps(
            errbacks_of(definition),
            errback_args,
            is_async=definition.is_async,
            pool=self._pool if record.defer else None,
            timeout_s=None,
            job_name=record.name,
        )
        self._after_errbacks(held, raised, errback_args, raised2)

    def _after_callbacks(
        self,
        held: Held,
        definition: JobDefinition,
        args: dict[str, Any],
        raised: BaseException | None,
    ) -> None:
        if raised is None:
            self._on_success(held, args)
        elif isinstance(raised, CancelJob):
            self._on_cancel(held, error=False)
        else:
            self._on_failure(held, definition, raised)

    def _on_failure(self, held: Held, definition: JobDefinition | None, exc: BaseException) -> None:
        errback_args = self._prepare_errbacks(held, exc)
        errbacks = [] if definition is None else errbacks_of(definition)
        raised2 = run_sync(errbacks, errback_args) if errbacks else None
        self._after_errbacks(held, exc, errback_args, raised2)

    def _prepare_errbacks(self, held: Held, exc: BaseException) -> dict[str, Any]:
        record = held.record
        record.failed_at = time.time()
        record.last_error = error_text(exc)
        record.status = JobStatus.ERROR
        record.args["error"] = exc  # merged into the pre-attempt args, in place
        errback_args = dict(record.args)
        if self.settings.merge_job_itself_to_args:
            errback_args["job_itself"] = self._job_itself(record)
        return errback_args

    def _after_errbacks(
        self,
        held: Held,
        exc: BaseException,
        errback_args: dict[str, Any],
        raised2: BaseException | None,
    ) -> None:
        record = held.record
        if raised2 is None:
            record.args = errback_args
        elif isinstance(raised2, CancelJob):
            record.args = plain_args(record.args)
            self._on_cancel(held, error=True)
            return
        else:
            record.args["errback_error"] = raised2
        record.args = plain_args(record.args)
        self._on_rescue(held, exc)

    def _on_success(self, held: Held, args: dict[str, Any]) -> None:
        record = held.record
        args = plain_args(args)
        if self._log_jobs:
            log_job(logger, "complete", record)
        if record.batch is not None and record.part is not None and not record.is_periodic:
            self._spawn(self._finish_part(held, args))
            return
        self._complete_success(held, args)

    async def _finish_part(self, held: Held, args: dict[str, Any]) -> None:
        """DistributedJob: mark the part done; the one caller that closes the batch says so."""
        record = held.record
        assert record.batch is not None
        assert record.part is not None
        completes = ""  # the report's `completes_batch`: the app runs the batch's on_complete
        try:
            if await self.batch_done(record.batch, record.part):
                completes = record.batch
        except StorageError as exc:
            logger.warning("job %s: could not mark batch part done: %s", record.id, exc)
        self._complete_success(held, args, completes)

    def _complete_success(self, held: Held, args: dict[str, Any], completes: str = "") -> None:
        record = held.record
        periodic = record.is_periodic and not held.cancel_requested
        if held.span is not None:
            otel.end_run(held, "success")
        if not record.is_periodic:
            self._end_attempt(held)  # first: its lock/perform id go before the app hears of it
        self._report(held, "success", not record.is_periodic, args, completes)
        if periodic and not held.dropped:
            args.pop("job_itself", None)
            record.args = args
            record.attempt = 0  # a successful periodic run resets the count
            record.status = JobStatus.QUEUED
            now = time.time()
            record.run_at_ts = next_due(record, now)  # its period grid or its cron schedule
            # the Ruby record's "wait before the next run"
            record.make_after = record.period or record.run_at_ts - now
            self._persist(record)
            self._end_attempt(held)
            self._schedule_at_epoch(held, record.run_at_ts)
            return
        record.args = args
        if record.is_periodic:  # cancelled while it ran
            self._end_attempt(held)
            self._cancel_now(held)
            return
        record.status = JobStatus.COMPLETE
        self._end_attempt(held)
        self._forget(held, destroy=self.settings.remove_done_jobs)

    def _on_rescue(self, held: Held, exc: BaseException) -> None:
        """Retry while attempts remain, else fail for good (docs/semantics.md §4)."""
        record = held.record
        limit = record.max_attempt or self.settings.max_attempt
        retry = (
            record.attempt < limit
            and not isinstance(exc, NoSuchJob | LimitKeyError)
            and not held.dropped
            and not held.cancel_requested
        )
        self._end_attempt(held, retrying=retry)
        if held.span is not None:
            outcome = "cancelled" if held.cancel_requested else "retry" if retry else "failed"
            otel.end_run(held, outcome, exc)
        if held.cancel_requested:
            self._cancel_now(held)
            return
        if retry:
            strategy = record.retry_strategy or self.settings.retry_strategy
            if record.is_periodic:  # a failed run is retried at the next one
                delay = record.period or next_due(record, time.time()) - time.time()
            else:
                delay = retry_delay(record.attempt, strategy, self.settings.retry_multiplier)
            record.args.pop("job_itself", None)
            record.make_after = delay
            record.run_at_ts = time.time() + delay
            if self._log_jobs:
                log_job_retry(logger, record, limit, delay)
            self._persist(record)
            self._schedule_at_epoch(held, record.run_at_ts)
            return
        record.status = JobStatus.FAILED
        # A final failure is news even with per-job lines off (log_job_processing = false).
        log_job_failed(logger, record, exc)
        self._report(held, "error", True, record.args)
        self._forget(held, destroy=self.settings.remove_failed_jobs)

    def _on_cancel(self, held: Held, *, error: bool) -> None:
        """CancelJob from a callback (success feedback) or errback (error): docs/semantics.md §3."""
        record = held.record
        args = plain_args(record.args)
        record.args = args
        if held.span is not None:
            otel.end_run(held, "cancelled")
        self._end_attempt(held)
        self._report(held, "error" if error else "success", True, args)
        record.status = JobStatus.CANCELLED
        self._forget(held, destroy=self.settings.remove_cancelled_jobs)

    def _cancel_now(self, held: Held) -> None:
        if held.span is not None:
            otel.end_run(held, "cancelled")
        held.record.status = JobStatus.CANCELLED
        self._report(held, "cancelled", True, held.record.args)
        self._forget(held, destroy=self.settings.remove_cancelled_jobs)

    def _held(self, job_id: str) -> Held | None:
        return self._jobs.get(job_id)  # Node's (packing.py) also finds a packed job

    def cancel_job(self, job_id: str) -> None:
        """The distributor cancels this job (JR.cancel)."""
        held = self._held(job_id)
        if held is None:
            return
        if held.running:
            held.cancel_requested = True
            return
        self._cancel_now(held)

    def _end_attempt(self, held: Held, *, retrying: bool = False) -> None:
        if not held.running:
            return
        if held.limit_slots and self.limits is not None and self.limits.local:
            self.limits.release_now(held)  # memory: no task, no deferred report
        if held.lock_token is not None or (held.perform_held and not retrying) or held.limit_slots:
            held.releasing = self.loop.create_task(
                guards.release(self, held, release_perform=not retrying)
            )
            self._tasks.add(held.releasing)
            held.releasing.add_done_callback(self._task_done)
        held.running = False
        self._running -= 1
        metrics, record = self._metrics, held.record
        if metrics is not None and record.run_at is not None:
            name = record.name if record.name in metrics.known else metrics.label(record.name)
            metrics.run.observe(name, time.time() - record.run_at)
        if held.holds_credit:
            held.holds_credit = False
            if held.link is not None:
                held.link.grant(1)
        if self._running == 0:
            self._idle.set()
        self._kick()

    def postpone(self, held: Held, delay: float) -> None:
        """Not now (perform_id busy, storage away): run later, no attempt used (dj_one)."""
        record = held.record
        record.status = JobStatus.QUEUED
        record.make_after = delay
        record.run_at_ts = time.time() + delay
        self._persist(record)
        self._end_attempt(held, retrying=True)
        self._schedule_at_epoch(held, record.run_at_ts)

    def skip(self, held: Held, reason: str) -> None:
        """Drop the job without running it (lock held, batch stopped): final 'cancelled'."""
        logger.info("job %s (%r) skipped: %s", held.record.id, held.record.name, reason)
        self._end_attempt(held, retrying=True)
        self._cancel_now(held)

    async def batch_stopped(self, token: str) -> bool:
        batch = self._batch(token)
        return await self.loop.run_in_executor(self._pool, batch.stopped)

    async def batch_done(self, token: str, part: str) -> bool:
        batch = self._batch(token)
        return await self.loop.run_in_executor(self._pool, batch.done, part)

    def _batch(self, token: str) -> Batch:
        redis_url = self._redis_url if self.storage.durable else None
        try:
            return open_batch(token, redis_url=redis_url)
        except Exception as exc:
            raise StorageError(f"cannot open batch {token}: {exc}") from exc

    def _forget(self, held: Held, *, destroy: bool) -> None:
        """The job is done here: drop it from memory, and from storage if `destroy`."""
        job_id = held.record.id
        self._timers.cancel(job_id)
        self._ready.remove(job_id)
        if self.limits is not None:
            self.limits.forget(job_id)
        if held.holds_credit and not held.running:
            held.holds_credit = False
            if held.link is not None and not held.dropped:
                held.link.grant(1)
        self._jobs.pop(job_id, None)
        if destroy:
            self._dirty.pop(job_id, None)
            self._doomed.add(job_id)
            self._flush_soon()
        else:
            self._persist(held.record)

    def _report(
        self, held: Held, outcome: str, final: bool, args: dict[str, Any], completes: str = ""
    ) -> None:
        if held.dropped:
            return
        link = held.link
        if link is None:
            # No link to that distributor: log and drop, never crash.
            logger.warning(
                "job %s: no link to distributor %r; %s report dropped",
                held.record.id,
                held.record.distributor,
                outcome,
            )
            return
        releasing = held.releasing
        if final and releasing is not None and not releasing.done():
            # Its lock / perform id are being released: the app hears "done" after that, so
            # it can take the same lock or perform id again at once.
            record = held.record
            releasing.add_done_callback(
                lambda _: link.report(record.id, record.lease, outcome, final, args, completes)
            )
            return
        link.report(held.record.id, held.record.lease, outcome, final, args, completes)

    def _job_itself(self, record: JobRecord) -> dict[str, Any]:
        itself = record.to_dict()
        itself["args"] = plain_args(dict(record.args))
        itself.setdefault("attempt", record.attempt)
        itself.setdefault("status", str(record.status))
        itself.setdefault("node", record.node)
        itself.setdefault("make_after", record.make_after)  # the Ruby job_itself always had it
        return itself
