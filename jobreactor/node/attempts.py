"""One attempt of a held job (docs/semantics.md §3): its state change, then its callback chain:
inline for plain jobs, as a task for async ones, in the thread pool (`defer`) or the process
pool (`defer="process"`) (runner.py, process_pool.py). What follows is settle.py's.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from typing import Any

from jobreactor import otel
from jobreactor.config import ReactorConfig
from jobreactor.definitions import JobDefinition, Registry
from jobreactor.errors import CancelJob, NoSuchJob
from jobreactor.job import JobRecord, JobStatus
from jobreactor.logs import log_job
from jobreactor.metrics import JobMetrics
from jobreactor.node.held import HeldJob
from jobreactor.node.persistence import Persister
from jobreactor.node.process_pool import ProcessPool
from jobreactor.node.runner import errbacks_of, job_itself, run_steps, run_sync, steps_of
from jobreactor.node.settle import Settle
from jobreactor.node.supervisor import Recycler
from jobreactor.node.tasks import Tasks

logger = logging.getLogger("jobreactor.node")


class Attempts:
    """Starts attempts (their run slot is taken) and hands each result to `settle`."""

    recycler: Recycler | None = None  # a supervised child's job/memory budget (supervisor.py)

    def __init__(  # noqa: PLR0913 (the parts it works with, by name)
        self,
        node_name: str,
        settings: ReactorConfig,
        registry: Registry,
        *,
        settle: Settle,
        store: Persister,
        tasks: Tasks,
        pool: concurrent.futures.ThreadPoolExecutor,
        metrics: JobMetrics | None,
        log_jobs: bool,
    ) -> None:
        self._name = node_name
        self._settings = settings
        self._registry = registry
        self._settle = settle
        self._persist = store.persist
        self._report = settle.report
        self._spawn = tasks.spawn
        self.pool = pool
        self._processes: ProcessPool | None = None  # made on the first defer="process" attempt
        self._metrics = metrics
        self._log_jobs = log_jobs

    def start(self, held: HeldJob) -> None:
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
                record.trace, record.id, record.name, record.attempt, self._name
            )
            with otel.use_span(held.span):
                self._run_body(held)
            return
        self._run_body(held)

    def close(self) -> None:
        """Both pools down (the node stops)."""
        self.pool.shutdown(wait=False, cancel_futures=True)
        if self._processes is not None:
            self._processes.shutdown()

    def _run_body(self, held: HeldJob) -> None:
        record = held.record
        definition = self._registry.get(record.name)
        if definition is None:
            self._settle.on_failure(held, None, NoSuchJob(record.name))
            return
        if self._log_jobs:
            log_job(logger, "start", record)
        args = dict(record.args)
        if self._settings.merge_job_itself_to_args:
            args["job_itself"] = job_itself(record)
        timeout = record.max_run_time or self._settings.max_run_time
        if not definition.is_async and not record.defer and timeout is None:
            raised = run_sync(steps_of(definition), args)
            self._settle.after_callbacks(held, definition, args, raised)
            return
        self._spawn(self._attempt(held, definition, args, timeout))

    def _process_pool(self) -> ProcessPool:
        if self._processes is None:
            self._processes = ProcessPool(
                self._settings.process_pool_size, self._settings.job_directory
            )
        return self._processes

    def _pool_for(
        self, record: JobRecord, definition: JobDefinition, timeout: float | None
    ) -> concurrent.futures.ThreadPoolExecutor | None:
        # A plain job under max_run_time runs in the pool too: only there can it be timed out.
        if definition.is_async:
            return None
        return self.pool if (record.defer or timeout is not None) else None

    async def _attempt(
        self,
        held: HeldJob,
        definition: JobDefinition,
        args: dict[str, Any],
        timeout: float | None,
    ) -> None:
        record, settle = held.record, self._settle
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
            settle.after_callbacks(held, definition, args, raised)
            return
        errback_args = settle.prepare_errbacks(held, raised)
        raised2 = await run_steps(
            errbacks_of(definition),
            errback_args,
            is_async=definition.is_async,
            pool=self.pool if record.defer else None,
            timeout_s=None,
            job_name=record.name,
        )
        settle.after_errbacks(held, raised, errback_args, raised2)
