"""The engine's two halves joined without a socket, for eager mode (eager.py).

`AppSide` is the distributor's feedback half (distributor/outcomes.py) with nothing to
dispatch; `EagerNode` is a node's attempt parts (node/attempts.py, settle.py, guards.py) on a
clock that only records due times, for the eager driver to run the next one at once;
`InlineLink` stands where a node's link would be and keeps the reports, their args through
msgpack as on the wire.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Coroutine
from typing import Any, cast

import msgpack

from jobreactor.config import ReactorConfig
from jobreactor.definitions import Registry
from jobreactor.distributor.outcomes import Feedback, Observer, Outcomes
from jobreactor.job import JobRecord
from jobreactor.node.attempts import Attempts
from jobreactor.node.batches import NodeBatches
from jobreactor.node.guards import Guards
from jobreactor.node.held import HeldJob
from jobreactor.node.holdings import Holdings
from jobreactor.node.release import Releaser
from jobreactor.node.reports import wire_safe
from jobreactor.node.settle import Settle
from jobreactor.node.tasks import Tasks
from jobreactor.protocol import ReportItem, pack_args
from jobreactor.storage import MemoryStorage

logger = logging.getLogger("jobreactor.testing")
ADDRESS = "eager"


def _as_on_the_wire(args: dict[str, Any]) -> dict[str, Any]:
    try:
        packed = pack_args(args)
    except TypeError:
        packed = pack_args({k: wire_safe(v) for k, v in args.items()})
    return cast(dict[str, Any], msgpack.unpackb(packed, raw=False, strict_map_key=False))


class AppSide(Outcomes):
    """The distributor's feedback half, with nothing to dispatch: its tasks are its own."""

    def __init__(
        self,
        settings: ReactorConfig,
        storage: MemoryStorage,
        named_feedbacks: dict[str, Feedback],
        observers: list[Observer],
    ) -> None:
        self.tasks: set[asyncio.Task[Any]] = set()
        super().__init__(
            storage,
            settings.unique_ttl,
            spawn=self._spawn_task,
            named_feedbacks=named_feedbacks,
            observers=observers,
        )

    def _spawn_task(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


class InlineLink:
    """Where a node's DistributorLink would be: reports go straight to the app side."""

    address = configured = ADDRESS
    instance = ""
    is_ready = True

    def __init__(self) -> None:
        self.reports: list[ReportItem] = []

    def report(
        self,
        job_id: str,
        lease: int,
        outcome: str,
        final: bool,
        args: dict[str, Any],
        completes_batch: str = "",
    ) -> None:
        args = _as_on_the_wire(args)
        self.reports.append(ReportItem(job_id, lease, outcome, final, args, completes_batch))

    def grant(self, credits: int = 1) -> None:
        return None  # nothing to grant credit to


class EagerClock:
    """The node's Clock (node/timetable.py) with time skipped: due times are only recorded,
    for the eager driver to run the next due job at once; run slots are not counted."""

    def __init__(self, holdings: Holdings) -> None:
        self._timers = holdings.timers

    def at_epoch(self, held: HeldJob, due_epoch: float) -> None:
        self._timers.schedule(held.record.id, due_epoch)

    def claim(self, held: HeldJob) -> None:
        held.running = True

    def release(self) -> None:
        return None  # the driver starts the next due job itself


class EagerStore:
    """The node's Persister (node/persistence.py) over memory storage: the records are the
    storage's own objects, so only a destroy is written (a task the driver waits for)."""

    def __init__(self, name: str, storage: MemoryStorage, tasks: Tasks) -> None:
        self._name = name
        self._storage = storage
        self._tasks = tasks

    def persist(self, record: JobRecord) -> None:
        return None  # memory storage holds this very record object

    def destroy(self, job_id: str) -> None:
        self._tasks.spawn(self._storage.destroy_many(self._name, [job_id]))


class EagerNode:
    """A node's attempt parts (attempts, settle, guards) on an EagerClock and an EagerStore."""

    def __init__(self, settings: ReactorConfig, registry: Registry, storage: MemoryStorage) -> None:
        self.name = "eager_node"
        self.registry = registry
        self.storage = storage
        loop = asyncio.get_running_loop()
        self.pool = concurrent.futures.ThreadPoolExecutor(
            settings.thread_pool_size, thread_name_prefix="jobreactor-eager"
        )
        log_jobs = settings.log_job_processing and logger.isEnabledFor(logging.INFO)
        self.tasks = tasks = Tasks(loop, self.name)
        self.holdings = holdings = Holdings(self.name, storage)
        self.clock = clock = EagerClock(holdings)
        store = EagerStore(self.name, storage, tasks)
        releaser = Releaser(settings, registry, storage, None)
        batches = NodeBatches(loop, self.pool, None)
        self.settle = settle = Settle(
            settings,
            holdings=holdings,
            clock=clock,
            store=store,
            tasks=tasks,
            releaser=releaser,
            batches=batches,
            limits=None,
            metrics=None,
            log_jobs=log_jobs,
        )
        self.attempts = Attempts(
            self.name, settings, registry, settle=settle, store=store, tasks=tasks,
            pool=self.pool, metrics=None, log_jobs=log_jobs,
        )  # fmt: skip
        self.guards = Guards(
            self.name, settings, registry, storage, start=self.attempts.start, settle=settle,
            releaser=releaser, batches=batches, limits=None, tasks=tasks,
        )  # fmt: skip
