"""What follows an attempt (docs/semantics.md §3–§5): success, retry, final failure or cancel,
each reported to the distributor the job came from; the run slot and credit given back; the
job forgotten, or scheduled again (a retry, a periodic job's next run, a postponed one).

It runs errbacks for a failure found before any step ran (no such job, a limit key missing),
and for plain jobs (attempts.py runs the async and pooled ones, then hands the result here).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from jobreactor import otel
from jobreactor.config import ReactorConfig
from jobreactor.definitions import JobDefinition
from jobreactor.errors import CancelJob, NoSuchJob, StorageError
from jobreactor.job import JobRecord, JobStatus, error_text, next_due, retry_delay
from jobreactor.limits import LimitKeyError
from jobreactor.logs import log_job, log_job_failed, log_job_retry
from jobreactor.metrics import JobMetrics
from jobreactor.node.batches import NodeBatches
from jobreactor.node.held import HeldJob
from jobreactor.node.holdings import Holdings
from jobreactor.node.limits import NodeLimits
from jobreactor.node.persistence import Persister
from jobreactor.node.release import Releaser
from jobreactor.node.runner import errbacks_of, job_itself, plain_args, run_sync
from jobreactor.node.tasks import Tasks
from jobreactor.node.timetable import Clock

logger = logging.getLogger("jobreactor.node")


class Settle:
    """The outcome half of attempts; its parts are given at construction (node.py, eager.py)."""

    def __init__(  # noqa: PLR0913 (the parts it works with, by name)
        self,
        settings: ReactorConfig,
        *,
        holdings: Holdings,
        clock: Clock,
        store: Persister,
        tasks: Tasks,
        releaser: Releaser,
        batches: NodeBatches,
        limits: NodeLimits | None,
        metrics: JobMetrics | None,
        log_jobs: bool,
    ) -> None:
        self._settings = settings
        self._holdings = holdings
        self._jobs = holdings.jobs
        self._find = holdings.find
        self._at_epoch = clock.at_epoch
        self._release_slot = clock.release
        self._persist = store.persist
        self._destroy = store.destroy
        self._tasks = tasks
        self._releaser = releaser
        self._batches = batches
        self._limits = limits
        self._limits_forget = None if limits is None else limits.gates.forget
        self._timers, self._ready = holdings.timers, holdings.ready
        self._metrics = metrics
        self._log_jobs = log_jobs

    # --- the attempt ends -----------------------------------------------------------------------

    def end_attempt(self, held: HeldJob, *, retrying: bool = False) -> None:
        """Its run slot (and an instant job's credit) back; what its guards took, released."""
        if not held.running:
            return
        limits = self._limits
        if held.limit_slots and limits is not None and limits.local:
            limits.release_now(held)  # memory: no task, no deferred report
        if held.lock_token is not None or (held.perform_held and not retrying) or held.limit_slots:
            held.releasing = self._tasks.spawn(
                self._releaser.release(held, release_perform=not retrying)
            )
        held.running = False
        metrics, record = self._metrics, held.record
        if metrics is not None and record.run_at is not None:
            name = record.name if record.name in metrics.known else metrics.label(record.name)
            metrics.run.observe(name, time.time() - record.run_at)
        self._release_slot()  # first: an idle node's credit (and report) then leave at once
        if held.holds_credit:
            held.holds_credit = False
            if held.link is not None:
                held.link.grant(1)

    def park(self, held: HeldJob) -> None:
        """It waits for a limit's slot: its run slot back; a job cancelled meanwhile ends."""
        self.end_attempt(held, retrying=True)
        if held.cancel_requested:
            held.cancel_requested = False
            self.cancel_now(held)

    def after_callbacks(
        self,
        held: HeldJob,
        definition: JobDefinition,
        args: dict[str, Any],
        raised: BaseException | None,
    ) -> None:
        if raised is None:
            self._on_success(held, args)
        elif isinstance(raised, CancelJob):
            self._on_cancel(held, error=False)
        else:
            self.on_failure(held, definition, raised)

    def on_failure(
        self, held: HeldJob, definition: JobDefinition | None, exc: BaseException
    ) -> None:
        """Failed: its errbacks (plain ones, here), then a retry or the final failure."""
        errback_args = self.prepare_errbacks(held, exc)
        errbacks = [] if definition is None else errbacks_of(definition)
        raised2 = run_sync(errbacks, errback_args) if errbacks else None
        self.after_errbacks(held, exc, errback_args, raised2)

    def prepare_errbacks(self, held: HeldJob, exc: BaseException) -> dict[str, Any]:
        record = held.record
        record.failed_at = time.time()
        record.last_error = error_text(exc)
        record.status = JobStatus.ERROR
        record.args["error"] = exc  # merged into the pre-attempt args, in place
        errback_args = dict(record.args)
        if self._settings.merge_job_itself_to_args:
            errback_args["job_itself"] = job_itself(record)
        return errback_args

    def after_errbacks(
        self,
        held: HeldJob,
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

    # --- outcomes -------------------------------------------------------------------------------

    def _on_success(self, held: HeldJob, args: dict[str, Any]) -> None:
        record = held.record
        args = plain_args(args)
        if self._log_jobs:
            log_job(logger, "complete", record)
        if record.batch is not None and record.part is not None and not record.is_periodic:
            self._tasks.spawn(self._finish_part(held, args))
            return
        self._complete_success(held, args)

    async def _finish_part(self, held: HeldJob, args: dict[str, Any]) -> None:
        """DistributedJob: mark the part done; the one caller that closes the batch says so."""
        record = held.record
        assert record.batch is not None
        assert record.part is not None
        completes = ""  # the report's `completes_batch`: the app runs the batch's on_complete
        try:
            if await self._batches.done(record.batch, record.part):
                completes = record.batch
        except StorageError as exc:
            logger.warning("job %s: could not mark batch part done: %s", record.id, exc)
        self._complete_success(held, args, completes)

    def _complete_success(self, held: HeldJob, args: dict[str, Any], completes: str = "") -> None:
        record = held.record
        periodic = record.is_periodic
        if held.span is not None:
            otel.end_run(held, "success")
        if not periodic:
            self.end_attempt(held)  # first: its lock/perform id go before the app hears of it
        self.report(held, "success", not periodic, args, completes)
        if periodic and not held.cancel_requested and not held.dropped:
            args.pop("job_itself", None)
            record.args = args
            record.attempt = 0  # a successful periodic run resets the count
            record.status = JobStatus.QUEUED
            now = time.time()
            record.run_at_ts = next_due(record, now)  # its period grid or its cron schedule
            # the Ruby record's "wait before the next run"
            record.make_after = record.period or record.run_at_ts - now
            self._persist(record)
            self.end_attempt(held)
            self._at_epoch(held, record.run_at_ts)
            return
        record.args = args
        if periodic:  # cancelled while it ran
            self.end_attempt(held)
            self.cancel_now(held)
            return
        record.status = JobStatus.COMPLETE
        self.forget(held, destroy=self._settings.remove_done_jobs)

    def _on_rescue(self, held: HeldJob, exc: BaseException) -> None:
        """Retry while attempts remain, else fail for good (docs/semantics.md §4)."""
        record, settings = held.record, self._settings
        limit = record.max_attempt or settings.max_attempt
        retry = (
            record.attempt < limit
            and not isinstance(exc, NoSuchJob | LimitKeyError)
            and not held.dropped
            and not held.cancel_requested
        )
        self.end_attempt(held, retrying=retry)
        if held.span is not None:
            outcome = "cancelled" if held.cancel_requested else "retry" if retry else "failed"
            otel.end_run(held, outcome, exc)
        if held.cancel_requested:
            self.cancel_now(held)
            return
        if retry:
            strategy = record.retry_strategy or settings.retry_strategy
            if record.is_periodic:  # a failed run is retried at the next one
                delay = record.period or next_due(record, time.time()) - time.time()
            else:
                delay = retry_delay(record.attempt, strategy, settings.retry_multiplier)
            record.args.pop("job_itself", None)
            record.make_after = delay
            record.run_at_ts = time.time() + delay
            if self._log_jobs:
                log_job_retry(logger, record, limit, delay)
            self._persist(record)
            self._at_epoch(held, record.run_at_ts)
            return
        record.status = JobStatus.FAILED
        # A final failure is news even with per-job lines off (log_job_processing = false).
        log_job_failed(logger, record, exc)
        self.report(held, "error", True, record.args)
        self.forget(held, destroy=settings.remove_failed_jobs)

    def _on_cancel(self, held: HeldJob, *, error: bool) -> None:
        """CancelJob from a callback (success feedback) or errback (error): docs/semantics.md §3."""
        record = held.record
        args = plain_args(record.args)
        record.args = args
        if held.span is not None:
            otel.end_run(held, "cancelled")
        self.end_attempt(held)
        self.report(held, "error" if error else "success", True, args)
        record.status = JobStatus.CANCELLED
        self.forget(held, destroy=self._settings.remove_cancelled_jobs)

    def cancel_now(self, held: HeldJob) -> None:
        if held.span is not None:
            otel.end_run(held, "cancelled")
        held.record.status = JobStatus.CANCELLED
        self.report(held, "cancelled", True, held.record.args)
        self.forget(held, destroy=self._settings.remove_cancelled_jobs)

    def cancel_job(self, job_id: str) -> bool:
        """The distributor cancels this job (JR.cancel); False if it is not held here."""
        held = self._find(job_id)
        if held is None:
            return False
        if held.running:
            held.cancel_requested = True
        else:
            self.cancel_now(held)
        return True

    def postpone(self, held: HeldJob, delay: float) -> None:
        """Not now (perform_id busy, storage away): run later, no attempt used (dj_one)."""
        record = held.record
        record.status = JobStatus.QUEUED
        record.make_after = delay
        record.run_at_ts = time.time() + delay
        self._persist(record)
        self.end_attempt(held, retrying=True)
        self._at_epoch(held, record.run_at_ts)

    def skip(self, held: HeldJob, reason: str) -> None:
        """Drop the job without running it (lock held, batch stopped): final 'cancelled'."""
        logger.info("job %s (%r) skipped: %s", held.record.id, held.record.name, reason)
        self.end_attempt(held, retrying=True)
        self.cancel_now(held)

    def retry_now(self, job_id: str) -> bool:
        """A job waiting for its next attempt (status `error`) runs now, keeping its attempt
        count (the dashboard's "retry now"); False if no such job is held here."""
        held = self._find(job_id)
        if held is None or held.running or held.record.status != JobStatus.ERROR:
            return False
        self._holdings.unschedule(job_id)
        held.record.run_at_ts = time.time()
        self._persist(held.record)
        self._at_epoch(held, held.record.run_at_ts)
        return True

    # --- leaving --------------------------------------------------------------------------------

    def forget(self, held: HeldJob, *, destroy: bool) -> None:
        """The job is done here: drop it from memory, and from storage if `destroy`."""
        job_id = held.record.id
        self._timers.cancel(job_id)  # holdings.remove, inline: once per job
        self._ready.remove(job_id)
        self._jobs.pop(job_id, None)
        if self._limits_forget is not None:
            self._limits_forget(job_id)
        if held.holds_credit and not held.running:
            held.holds_credit = False
            if held.link is not None and not held.dropped:
                held.link.grant(1)
        if destroy:
            self._destroy(job_id)
        else:
            self._persist(held.record)

    def report(
        self, held: HeldJob, outcome: str, final: bool, args: dict[str, Any], completes: str = ""
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
            releasing.add_done_callback(
                _report_later(link.report, held.record, outcome, args, completes)
            )
            return
        link.report(held.record.id, held.record.lease, outcome, final, args, completes)


def _report_later(
    report: Callable[[str, int, str, bool, dict[str, Any], str], None],
    record: JobRecord,
    outcome: str,
    args: dict[str, Any],
    completes: str,
) -> Callable[[asyncio.Task[None]], None]:
    return lambda _: report(record.id, record.lease, outcome, True, args, completes)
