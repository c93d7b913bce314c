"""The gems' per-attempt checks, around an attempt (docs/semantics.md §7).

Before an attempt: a stopped batch skips the job; its definition's `limits` make it wait
(without a run slot) until a slot is free (node/limits.py); `perform_id` (dj_one) postpones it by
`duplicate_delay` while another job with that id runs, without using an attempt; `lock`
(resque-lock-timeout) drops it, calling its `lock_failed` hook, while the lock is held.
After: the lock is released only by its owner token, and if it expired first the
`lock_expired` hook runs instead (someone else may hold it now); the perform id is released
unless the job waits for a retry (dj_one keeps it then). All of it goes through the node's
storage, so with Redis it holds across nodes, with memory within one node process. After
an attempt its concurrency slots are released first.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from jobreactor.definitions import call_hook
from jobreactor.errors import StorageError
from jobreactor.job import JobRecord, JobStatus
from jobreactor.limits import LimitKeyError
from jobreactor.node.limits import run_now

if TYPE_CHECKING:
    from jobreactor.definitions import JobDefinition, Registry
    from jobreactor.node.attempts import Attempts, Held

logger = logging.getLogger("jobreactor.node")


def perform_key(perform_id: str) -> str:
    return f"perform:{perform_id}"


def _record_guarded(record: JobRecord) -> bool:
    """Guards the record itself asks for (limits come from its definition)."""
    return (
        record.perform_id is not None
        or record.lock is not None
        or record.batch is not None
        or record.is_periodic
    )


def needs_guard(held: Held, registry: Registry) -> bool:
    record = held.record
    if _record_guarded(record):
        return True
    definition = registry.get(record.name)
    return definition is not None and bool(definition.limits)


async def record_gone(node: Attempts, held: Held) -> bool:
    """A periodic run on a durable node whose stored record was deleted (RedisMonitor.destroy,
    `jobreactor jobs destroy`, a plain DEL) is skipped and the job ends: deleting the record
    is the Ruby gem's external way to cancel it (README "Inspecting jobs"). One read per run."""
    record = held.record
    if not (record.is_periodic and node.storage.durable):
        return False
    if await node.storage.load(node.name, record.id) is not None:
        return False
    logger.warning(
        "periodic job %s (%r): its stored record is gone (deleted); run skipped, job ended",
        record.id,
        record.name,
    )
    node._end_attempt(held, retrying=True)
    record.status = JobStatus.CANCELLED
    node._report(held, "cancelled", True, record.args)
    node._forget(held, destroy=True)
    return True


def enter_now(node: Attempts, held: Held) -> bool:
    """Limits alone, on a node-local store: decided here without a task. False: not this case."""
    record = held.record
    limits = node.limits
    if _record_guarded(record):
        return False
    if limits is None or not limits.local:
        return False
    definition = node.registry.get(record.name)
    if definition is None or not definition.limits:
        return False
    if run_now(_take_limits(node, held, definition)):
        node.start_attempt(held)
    return True


async def enter(node: Attempts, held: Held) -> None:
    """Run the checks for `held` (its run slot is already taken); then start, postpone or skip."""
    record = held.record
    settings = node.settings
    definition = node.registry.get(record.name)
    if held.releasing is not None:
        await held.releasing  # the previous attempt's lock must be gone before we ask again
    try:
        if await record_gone(node, held):
            return
        if record.batch is not None and await node.batch_stopped(record.batch):
            node.skip(held, "its batch was stopped")
            return
        if (
            definition is not None
            and definition.limits
            and node.limits is not None  # eager mode has none: one job at a time, time skipped
            and not await _take_limits(node, held, definition)
        ):
            return
        if record.perform_id is not None and not held.perform_held:
            ttl = record.max_run_time or settings.max_run_time or settings.unique_ttl
            if not await node.storage.acquire(perform_key(record.perform_id), record.id, ttl):
                delay = record.duplicate_delay
                node.postpone(held, settings.duplicate_delay if delay is None else delay)
                return
            held.perform_held = True
        if record.lock is not None:
            token = f"{record.id}:{record.attempt + 1}"
            timeout = settings.lock_timeout if record.lock_timeout is None else record.lock_timeout
            if not await node.storage.lock(record.lock, token, timeout):
                await call_hook(
                    definition.lock_failed if definition else None, record.args, "lock_failed"
                )
                await release(node, held, release_perform=True)
                node.skip(held, f"lock {record.lock!r} is held")
                return
            held.lock_token = token
    except StorageError as exc:
        logger.warning(
            "job %s: storage unavailable for its lock/unique checks (%s); trying again in %.1fs",
            record.id,
            exc,
            settings.reconnect_interval,
        )
        node.postpone(held, settings.reconnect_interval)
        return
    node.start_attempt(held)


async def _take_limits(node: Attempts, held: Held, definition: JobDefinition) -> bool:
    """True: its limits' slots are taken. False: it waits (or failed: a key's arg is missing)."""
    assert node.limits is not None
    try:
        slots = node.limits.slots(held, definition)
    except LimitKeyError as exc:
        logger.error("job %s (%r) cannot run: %s", held.record.id, held.record.name, exc)
        held.record.attempt += 1
        node._on_failure(held, None, exc)  # no retry: the args will not grow the field
        return False
    if not await node.limits.acquire(held, slots):
        return False
    if held.cancel_requested:  # JR.cancel while it asked: it ends here, its slots go back
        node._end_attempt(held, retrying=True)
        node._cancel_now(held)
        return False
    return True


async def release(node: Attempts, held: Held, *, release_perform: bool) -> None:
    """After an attempt: free its limit slots, unlock (owner only), and free the perform id
    unless retrying."""
    record = held.record
    if held.limit_slots and node.limits is not None:
        await node.limits.release(held)  # never raises StorageError: a slot is a lease
    try:
        token, held.lock_token = held.lock_token, None
        if token is not None and record.lock is not None:
            outcome = await node.storage.unlock(record.lock, token)
            timeout = (
                node.settings.lock_timeout if record.lock_timeout is None else record.lock_timeout
            )
            ran_s = time.time() - (record.run_at or time.time())
            # "not_held" after our timeout ran out: it expired and someone else took it.
            if outcome == "expired" or (outcome == "not_held" and 0 < timeout <= ran_s):
                definition = node.registry.get(record.name)
                await call_hook(
                    definition.lock_expired if definition else None,
                    record.args,
                    "lock_expired",
                )
        if release_perform and held.perform_held and record.perform_id is not None:
            held.perform_held = False
            await node.storage.release(perform_key(record.perform_id), record.id)
    except StorageError as exc:
        # The keys carry a TTL (lock_timeout, unique_ttl), so they cannot block forever.
        logger.warning("job %s: could not release its lock/perform id: %s", record.id, exc)
