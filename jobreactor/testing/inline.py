"""The engine's two halves joined without a socket, for eager mode (eager.py).

`AppSide` is the distributor's feedback half (distributor/outcomes.py) with nothing to
dispatch; `EagerNode` is a node's attempt half (node/attempts.py) whose timers only record due
times, for the eager driver to run the next one at once; `InlineLink` stands where a node's
link would be and keeps the reports, their args through msgpack as on the wire.
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
from jobreactor.node.attempts import Attempts, Held
from jobreactor.node.reports import wire_safe
from jobreactor.node.scheduler import ReadyQueue, TimerHeap
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
    is_ready = True

    def __init__(self) -> None:
        self.reports: list[ReportItem] = []

    def report(
        self, job_id: str, lease: int, outcome: str, final: bool, args: dict[str, Any]
    ) -> None:
        self.reports.append(ReportItem(job_id, lease, outcome, final, _as_on_the_wire(args)))

    def grant(self, credits: int = 1) -> None:
        return None  # nothing to grant credit to


class EagerNode(Attempts):
    """A node's attempt half, its timers replaced by "the next due job, now"."""

    def __init__(self, settings: ReactorConfig, registry: Registry, storage: MemoryStorage) -> None:
        self.name = "eager_node"
        self.settings = settings
        self.registry = registry
        self.storage = storage
        self.loop = asyncio.get_running_loop()
        self.links = []
        self._jobs: dict[str, Held] = {}
        self._timers = TimerHeap()
        self._ready = ReadyQueue()
        self._running = 0
        self._idle = asyncio.Event()
        self._pool = concurrent.futures.ThreadPoolExecutor(
            settings.thread_pool_size, thread_name_prefix="jobreactor-eager"
        )
        self._log_jobs = settings.log_job_processing and logger.isEnabledFor(logging.INFO)
        self._redis_url = None
        self._dirty: dict[str, JobRecord] = {}
        self._doomed: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    def _persist(self, record: JobRecord) -> None:
        return None  # memory storage holds this very record object

    def _flush_soon(self) -> None:
        doomed, self._doomed = list(self._doomed), set()
        if doomed:
            self._spawn(self.storage.destroy_many(self.name, doomed))

    def _kick(self) -> None:
        return None  # the driver starts the next due job itself

    def _schedule_at_epoch(self, held: Held, due_epoch: float) -> None:
        self._timers.schedule(held.record.id, due_epoch)
