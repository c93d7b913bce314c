"""Enqueuing: the app's way in, from any thread (docs/semantics.md §2).

`enqueue` validates and copies the job in the caller's thread, appends it to a queue and wakes
the loop at most once per batch (one `call_soon_threadsafe` for many jobs). `enqueue_id` and
`loner` take a round trip to the loop (their keys live in storage); a redis-backed distributor
makes `enqueue` wait for the durable write.

`Enqueuer` is a part of `Reactor` (reactor.py): `JR.enqueue` is `Enqueuer.enqueue`. It owns
the inbox and the job ids of one process; it reaches the loop through the LoopHost and the
distributor that takes enqueues through Members (`distributors`, read only).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import msgpack

from jobreactor import otel
from jobreactor.config import Config
from jobreactor.definitions import Registry, call_hook
from jobreactor.distributor import Distributor
from jobreactor.distributor.handoff import label
from jobreactor.distributor.outcomes import Feedback
from jobreactor.errors import (
    EnqueueTimeout,
    InvalidArgs,
    InvalidOptions,
    QueueFull,
    ReactorClosed,
    StorageError,
    WaitTimeout,
    WrongThread,
)
from jobreactor.handle import JobHandle
from jobreactor.ids import JobIds
from jobreactor.job import JobRecord, build_record
from jobreactor.loophost import LoopHost
from jobreactor.protocol import pack_args
from jobreactor.starting import Members

logger = logging.getLogger("jobreactor")

T = TypeVar("T")
# Room for the record around the args in a Jobs frame.
_FRAME_OVERHEAD = 4096
Inbox = collections.deque[tuple[JobRecord, Feedback | str | None, Feedback | str | None, JobHandle]]
ON_LOOP_ADMISSION = (
    "enqueue with enqueue_id/loner waits for the storage; on the reactor's loop use "
    "`await JR.aenqueue(...)`"
)


def store_here(
    loop: asyncio.AbstractEventLoop,
    distributor: Distributor,
    records: list[JobRecord],
    success: Feedback | str | None,
    error: Feedback | str | None,
) -> None:
    """Write `records` to the distributor's journal from this (app) thread: one round trip.

    On any failure the write may still land (a paused Redis runs it later): the journal is
    told to withdraw the ids, so it refuses or deletes them, and the error goes to the caller.
    """
    assert distributor.sync_writer is not None
    assert distributor.journal is not None
    for record in records:
        label(record, distributor.address, success, error)
    try:
        distributor.sync_writer.save(distributor.journal.queue, records)
    except StorageError:
        loop.call_soon_threadsafe(distributor.withdraw, [record.id for record in records])
        raise


async def store_on_loop(
    distributor: Distributor,
    record: JobRecord,
    success: Feedback | str | None,
    error: Feedback | str | None,
    timeout_s: float,
) -> None:
    """`aenqueue` on the reactor's loop: write the job to the journal here, one round trip (no
    task, no hand-off). A failed or timed-out write is withdrawn, and the error raised."""
    assert distributor.journal is not None
    label(record, distributor.address, success, error)
    try:
        async with asyncio.timeout(timeout_s):
            await distributor.storage.queue_save(distributor.journal.queue, [record])
    except TimeoutError:
        distributor.withdraw([record.id])
        raise EnqueueTimeout(record.id, timeout_s) from None
    except StorageError:
        distributor.withdraw([record.id])
        raise


def needs_admission(record: JobRecord) -> bool:
    """`enqueue_id` and `loner` are checked against storage before the job is taken."""
    return record.enqueue_id is not None or record.loner


def check_batchable(records: Iterable[JobRecord]) -> None:
    if any(needs_admission(record) for record in records):
        raise InvalidOptions("enqueue_many takes no enqueue_id/loner jobs; use enqueue")


async def refused(registry: Registry, record: JobRecord) -> None:
    """`enqueue_id`/`loner` refused the job: a loner's `loner_enqueue_failed` hook runs."""
    definition = registry.get(record.name)
    if record.loner and definition is not None:
        await call_hook(definition.loner_enqueue_failed, record.args, "loner_enqueue_failed")


class Enqueuer:
    """enqueue, aenqueue, enqueue_many, named feedbacks, wait_idle: the app's way in."""

    def __init__(
        self,
        config: Config,
        registry: Registry,
        named_feedbacks: dict[str, Feedback],
        host: LoopHost,
        members: Members,
        check_fork: Callable[[], None],
    ) -> None:
        self.config = config
        self.registry = registry  # the app's definitions: options, limits, loner hooks
        self._named_feedbacks = named_feedbacks
        self._host = host
        self._members = members
        self._check_fork = check_fork
        self.forget()

    def forget(self) -> Inbox | None:
        """New job ids and an empty inbox (a forked child); return the old inbox."""
        old: Inbox | None = getattr(self, "_inbox", None)
        self._inbox: Inbox = collections.deque()
        self._wake_pending = False
        # Job ids (ids.py): drawn again in a forked child, so pre-fork workers never repeat ids.
        self._ids = JobIds()
        return old

    # --- the app's calls --------------------------------------------------------------------------

    def enqueue(
        self,
        name: str,
        args: dict[str, Any] | None = None,
        opts: dict[str, Any] | None = None,
        success: Feedback | str | None = None,
        error: Feedback | str | None = None,
        *,
        durable: bool | None = None,
    ) -> JobHandle | None:
        """Queue job `name` from any thread; return its handle (docs/semantics.md §6).

        Durable or told: with redis storage on the distributor it returns once the job is
        stored (one Redis round trip, from this thread), else it raises and the job never
        runs: StorageUnavailable (Redis down), EnqueueTimeout (not stored within
        `enqueue_timeout`: withdrawn). Also InvalidArgs (a TypeError) for args msgpack can't
        carry,
        InvalidOptions (a ValueError) for bad options, QueueFull past `max_pending_jobs`,
        ReactorClosed if no distributor runs. Returns None when `enqueue_id`/`loner` refuse
        the job. `durable=False` (or the `durable` setting) returns before the job is stored.
        """
        loop, distributor, record = self._prepare(name, args, opts)
        success, error = self.feedback(success), self.feedback(error)
        if needs_admission(record):
            if self._host.in_loop_thread():
                raise WrongThread(ON_LOOP_ADMISSION)
            handle = self._host.call(self._admit_and_submit(distributor, record, success, error))
            if handle is not None and self._wants_durable(distributor, durable):
                handle.accepted(self.config.current.enqueue_timeout)
            return handle
        return self._queue(loop, distributor, [record], success, error, durable)[0]

    def enqueue_many(
        self,
        jobs: Iterable[tuple[str, dict[str, Any] | None, dict[str, Any] | None]],
        success: Feedback | str | None = None,
        error: Feedback | str | None = None,
        *,
        durable: bool | None = None,
    ) -> list[JobHandle]:
        """Enqueue `(name, args, opts)` jobs in one go, with shared feedbacks; their handles.

        Each job is validated like `enqueue` (nothing is queued if one is invalid). A redis-backed
        distributor stores them all in one write and this waits for it once, instead of once per
        job. `enqueue_id` and `loner` need a check each: use `enqueue` for those.
        """
        loop, distributor, records = None, None, []
        for name, args, opts in jobs:
            loop, distributor, record = self._prepare(name, args, opts)
            check_batchable([record])
            records.append(record)
        if loop is None or distributor is None:
            return []
        return self._queue(
            loop, distributor, records, self.feedback(success), self.feedback(error), durable
        )

    def _wants_durable(self, distributor: Distributor, durable: bool | None) -> bool:
        """Wait for the store: a redis-backed distributor, unless the call or config opts out."""
        if distributor.journal is None:
            return False
        return self.config.current.durable if durable is None else durable

    def _queue(
        self,
        loop: asyncio.AbstractEventLoop,
        distributor: Distributor,
        records: list[JobRecord],
        success: Feedback | str | None,
        error: Feedback | str | None,
        durable: bool | None,
    ) -> list[JobHandle]:
        """Hand validated records to the loop: one wake-up; durable: stored first, or raise."""
        wait = self._wants_durable(distributor, durable) and not self._host.in_loop_thread()
        if wait and distributor.sync_writer is not None:
            store_here(loop, distributor, records, success, error)
        handles = []
        for record in records:
            handle = JobHandle(record.id)
            if distributor.journal is None or (wait and distributor.sync_writer is not None):
                handle._durable = True  # stored above (or memory: held once queued, best effort)
            self._inbox.append((record, success, error, handle))
            handles.append(handle)
        if not self._wake_pending:
            self._wake_pending = True
            loop.call_soon_threadsafe(self.drain_inbox)
        if wait and distributor.sync_writer is None:
            # A durable storage without a blocking writer: wait for the loop's write.
            deadline = time.monotonic() + self.config.current.enqueue_timeout
            for handle in handles:
                handle.accepted(max(0.0, deadline - time.monotonic()))
        return handles

    def register_feedback(self, name: str, feedback: Feedback) -> None:
        """Register a feedback under `name`, to pass as `success=name` / `error=name`.

        Named feedbacks survive a distributor restart (redis storage): closures can't be
        stored. Register them at start-up, before `start_distributor`.
        """
        if not callable(feedback):
            raise InvalidArgs(f"a feedback must be callable, got {type(feedback).__name__}")
        self._named_feedbacks[name] = feedback

    def feedback(self, feedback: Feedback | str | None) -> Feedback | str | None:
        """A feedback as given to enqueue: a registered name (else InvalidOptions), a callable,
        or None (non-callables are ignored, as in the Ruby gem)."""
        if isinstance(feedback, str):
            if feedback not in self._named_feedbacks:
                raise InvalidOptions(
                    f"no feedback registered as {feedback!r}; call JR.register_feedback first"
                )
            return feedback
        return feedback if callable(feedback) else None  # non-callables ignored, as in the Ruby gem

    async def aenqueue(
        self,
        name: str,
        args: dict[str, Any] | None = None,
        opts: dict[str, Any] | None = None,
        success: Feedback | str | None = None,
        error: Feedback | str | None = None,
        *,
        durable: bool | None = None,
    ) -> JobHandle | None:
        """`enqueue` for coroutines: on the reactor's loop, or on another loop (it hops over).

        Durable or told, as `enqueue`: with redis storage on the distributor it returns once
        the job is stored, else raises (StorageUnavailable, EnqueueTimeout) and the job never
        runs. `durable=False` returns before the store (the `durable` setting for every call).
        """
        loop, distributor, record = self._prepare(name, args, opts)
        success, error = self.feedback(success), self.feedback(error)
        on_loop, wait = self._host.in_loop_thread(), self._wants_durable(distributor, durable)
        if on_loop and wait and not needs_admission(record):
            timeout = self.config.current.enqueue_timeout
            await store_on_loop(distributor, record, success, error, timeout)
            self.drain_inbox()  # keep FIFO with jobs enqueued just before
            stored = JobHandle(record.id)
            stored._durable = True  # stored above: dispatched without another write
            distributor.submit(record, success, error, stored)
            return stored
        submit = self._admit_and_submit(distributor, record, success, error)
        if on_loop:
            handle = await submit
        else:
            handle = await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(submit, loop))
        if handle is not None and wait:
            await handle.aaccepted(self.config.current.enqueue_timeout)
        return handle

    def _prepare(
        self, name: str, args: dict[str, Any] | None, opts: dict[str, Any] | None
    ) -> tuple[asyncio.AbstractEventLoop, Distributor, JobRecord]:
        """Validate and copy in the caller's thread; build the record."""
        self._check_fork()
        loop = self._host.loop
        distributors = self._members.distributors
        if loop is None or not loop.is_running() or not distributors:
            raise ReactorClosed(
                "no running distributor: call JR.run() and JR.start_distributor() first"
            )
        distributor = distributors[0]
        record = self.new_record(name, args, opts, distributor.address)
        settings = self.config.current
        if distributor.pending_count + len(self._inbox) >= settings.max_pending_jobs:
            raise QueueFull(
                f"{settings.max_pending_jobs} jobs already wait for a node; "
                "start more nodes or raise max_pending_jobs"
            )
        return loop, distributor, record

    def new_record(
        self,
        name: str,
        args: dict[str, Any] | None,
        opts: dict[str, Any] | None,
        distributor_address: str,
    ) -> JobRecord:
        """The job record `enqueue` sends: args checked and copied, options validated."""
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise InvalidArgs(f"job args must be a dict, got {type(args).__name__}")
        settings = self.config.current
        packed = pack_args(args)
        if len(packed) > settings.max_frame_bytes - _FRAME_OVERHEAD:
            raise InvalidOptions(
                f"job args are {len(packed)} bytes, over max_frame_bytes; pass a reference "
                "(a key, a URL) instead of the data"
            )
        opts = dict(opts or {})
        definition = self.registry.get(name)
        if definition is not None and definition.options:
            opts = {**definition.options, **opts}
        if definition is not None and definition.limits:
            for limit in definition.limits:
                limit.key_for(args)  # LimitKeyError now, when this process knows the job

        record = build_record(
            self._ids.next_id(),
            name,
            msgpack.unpackb(packed, raw=False, strict_map_key=False),  # the app keeps its dict
            opts,
            now_epoch_s=time.time(),
            distributor=distributor_address,
            default_priority=settings.default_priority,
            strict_node=settings.always_use_specified_node,
        )
        if otel.ENABLED:  # the caller's span travels with the job (otel.py)
            record.trace = otel.traceparent()
        return record

    async def _admit_and_submit(
        self,
        distributor: Distributor,
        record: JobRecord,
        success: Feedback | str | None,
        error: Feedback | str | None,
    ) -> JobHandle | None:
        self.drain_inbox()  # keep FIFO with jobs enqueued just before
        if not await distributor.admit(record):
            await refused(self.registry, record)
            return None
        handle = JobHandle(record.id)
        distributor.submit(record, success, error, handle)
        return handle

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Block until no one-shot job is queued, pending or running, and every feedback ran.

        For tests and scripts (Dramatiq's `broker.join`): periodic jobs don't count. Raises
        WaitTimeout (a TimeoutError) after `timeout` (a job waiting for a node that never
        comes, say).
        """
        self._host.call(self._settled(timeout), timeout=None)

    async def await_idle(self, timeout: float = 30.0) -> None:
        """`wait_idle` for coroutines, on any loop; WaitTimeout after `timeout`."""
        await self._host.hop(self._settled(timeout))

    async def _settled(self, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                while True:
                    self.drain_inbox()
                    for distributor in self._members.distributors:
                        await distributor.wait_idle()
                    if not self._inbox:
                        return
        except TimeoutError:
            raise WaitTimeout(
                f"jobs were still queued, pending or running after {timeout}s (is a node up "
                "that runs them?)"
            ) from None

    def drain_inbox(self) -> None:
        """Hand what app threads queued to the distributor (on the loop)."""
        self._wake_pending = False
        distributors = self._members.distributors
        if not distributors:
            return
        inbox = self._inbox
        batch: list[
            tuple[JobRecord, Feedback | str | None, Feedback | str | None, JobHandle | None]
        ] = []
        while inbox:
            batch.append(inbox.popleft())
        if batch:
            distributors[0].submit_many(batch)
