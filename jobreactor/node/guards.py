"""The gems' per-attempt checks, before an attempt (docs/semantics.md §7).

Before an attempt: a stopped batch skips the job; its definition's `limits` make it wait
(without a run slot) until a slot is free (node/limits.py); `perform_id` (dj_one) postpones it by
`duplicate_delay` while another job with that id runs, without using an attempt; `lock`
(resque-lock-timeout) drops it, calling its `lock_failed` hook, while the lock is held. What
they took is given back after the attempt (release.py). All of it goes through the node's
storage, so with Redis it holds across nodes, with memory within one node process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from jobreactor.config import ReactorConfig
from jobreactor.definitions import JobDefinition, Registry, call_hook
from jobreactor.errors import StorageError
from jobreactor.job import JobRecord, JobStatus
from jobreactor.limits import LimitKeyError
from jobreactor.node.batches import NodeBatches
from jobreactor.node.held import HeldJob
from jobreactor.node.limits import NodeLimits, run_now
from jobreactor.node.release import Releaser, perform_key
from jobreactor.node.settle import Settle
from jobreactor.node.tasks import Tasks
from jobreactor.storage.base import Storage

__all__ = ["Guards", "perform_key"]

logger = logging.getLogger("jobreactor.node")


def _record_guarded(record: JobRecord) -> bool:
    """Guards the record itself asks for (limits come from its definition)."""
    return (
        record.perform_id is not None
        or record.lock is not None
        or record.batch is not None
        or record.is_periodic
    )


class Guards:
    """Decides, for a due job whose run slot is taken: start it, postpone it, or skip it."""

    def __init__(  # noqa: PLR0913 (the parts it works with, by name)
        self,
        node_name: str,
        settings: ReactorConfig,
        registry: Registry,
        storage: Storage,
        *,
        start: Callable[[HeldJob], None],
        settle: Settle,
        releaser: Releaser,
        batches: NodeBatches,
        limits: NodeLimits | None,
        tasks: Tasks,
    ) -> None:
        self._name = node_name
        self._settings = settings
        self._registry = registry
        self._storage = storage
        self._start = start
        self._settle = settle
        self._releaser = releaser
        self._batches = batches
        self._limits = limits  # None in eager mode: one job at a time, time skipped
        self._spawn = tasks.spawn

    def needed(self, held: HeldJob) -> bool:
        record = held.record
        if _record_guarded(record):
            return True
        definition = self._registry.get(record.name)
        return definition is not None and bool(definition.limits)

    def begin(self, held: HeldJob) -> None:
        """Check `held` (a job that `needed` them), then start it: now if a local limit store
        alone decides, else in a task."""
        if not self._enter_now(held):
            self._spawn(self.enter(held))

    def _enter_now(self, held: HeldJob) -> bool:
        """Limits alone, on a node-local store: decided here, no task. False: not this case."""
        record, limits = held.record, self._limits
        if _record_guarded(record) or limits is None or not limits.local:
            return False
        definition = self._registry.get(record.name)
        if definition is None or not definition.limits:
            return False
        if run_now(self._take_limits(held, definition)):
            self._start(held)
        return True

    async def enter(self, held: HeldJob) -> None:
        """Run the checks for `held` (its run slot is taken); then start, postpone or skip."""
        record, settings, settle = held.record, self._settings, self._settle
        definition = self._registry.get(record.name)
        if held.releasing is not None:
            await held.releasing  # the previous attempt's lock must be gone before we ask again
        try:
            if await self._record_gone(held):
                return
            if record.batch is not None and await self._batches.stopped(record.batch):
                settle.skip(held, "its batch was stopped")
                return
            if (
                definition is not None
                and definition.limits
                and self._limits is not None
                and not await self._take_limits(held, definition)
            ):
                return
            if record.perform_id is not None and not held.perform_held:
                ttl = record.max_run_time or settings.max_run_time or settings.unique_ttl
                if not await self._storage.acquire(perform_key(record.perform_id), record.id, ttl):
                    delay = record.duplicate_delay
                    settle.postpone(held, settings.duplicate_delay if delay is None else delay)
                    return
                held.perform_held = True
            if record.lock is not None and not await self._lock(held, definition):
                return
        except StorageError as exc:
            logger.warning(
                "job %s: storage unavailable for its lock/unique checks (%s); trying again in "
                "%.1fs",
                record.id,
                exc,
                settings.reconnect_interval,
            )
            settle.postpone(held, settings.reconnect_interval)
            return
        self._start(held)

    async def _lock(self, held: HeldJob, definition: JobDefinition | None) -> bool:
        """Take the job's `lock`; False: it is held, the job was skipped."""
        record = held.record
        assert record.lock is not None
        token = f"{record.id}:{record.attempt + 1}"
        timeout = (
            self._settings.lock_timeout if record.lock_timeout is None else record.lock_timeout
        )
        if not await self._storage.lock(record.lock, token, timeout):
            await call_hook(
                definition.lock_failed if definition else None, record.args, "lock_failed"
            )
            await self._releaser.release(held, release_perform=True)
            self._settle.skip(held, f"lock {record.lock!r} is held")
            return False
        held.lock_token = token
        return True

    async def _record_gone(self, held: HeldJob) -> bool:
        """A periodic run on a durable node whose stored record was deleted (RedisMonitor.destroy,
        `jobreactor jobs destroy`, a plain DEL) is skipped and the job ends: deleting the record
        is the Ruby gem's external way to cancel it (README "Inspecting jobs"). One read per run."""
        record = held.record
        if not (record.is_periodic and self._storage.durable):
            return False
        if await self._storage.load(self._name, record.id) is not None:
            return False
        logger.warning(
            "periodic job %s (%r): its stored record is gone (deleted); run skipped, job ended",
            record.id,
            record.name,
        )
        settle = self._settle
        settle.end_attempt(held, retrying=True)
        record.status = JobStatus.CANCELLED
        settle.report(held, "cancelled", True, record.args)
        settle.forget(held, destroy=True)
        return True

    async def _take_limits(self, held: HeldJob, definition: JobDefinition) -> bool:
        """True: its limits' slots are taken. False: it waits (or failed: a key arg is missing)."""
        assert self._limits is not None
        try:
            slots = self._limits.slots(held, definition)
        except LimitKeyError as exc:
            logger.error("job %s (%r) cannot run: %s", held.record.id, held.record.name, exc)
            held.record.attempt += 1
            self._settle.on_failure(held, None, exc)  # no retry: the args will not grow the field
            return False
        if not await self._limits.acquire(held, slots):
            return False
        if held.cancel_requested:  # JR.cancel while it asked: it ends here, its slots go back
            self._settle.end_attempt(held, retrying=True)
            self._settle.cancel_now(held)
            return False
        return True
