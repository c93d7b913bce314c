"""What every workload gets: parameters, progress bars, a work directory, Redis, clusters."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from bench.harness import (
    BenchError,
    Cluster,
    RedisServer,
    RedisServerMissing,
    bounded,
    stop_processes,
)


@dataclass(slots=True)
class Params:
    n: int  # throughput jobs per case
    quick: bool
    concurrency: int
    warmup: int  # warm-up jobs before a timed phase
    latency_samples: int  # back-to-back enqueue→start samples
    latency_idle_samples: int  # samples after the node sat idle a random gap
    idle_gap_s: tuple[float, float]
    burst: int  # delayed: jobs due `delay_s` after their enqueue
    sparse: int  # delayed: jobs spread over `spread_s`
    delay_s: float
    spread_s: float
    memory_jobs: int  # pending delayed jobs for the RSS figure
    idle_s: float  # idle CPU window
    distributor_storage: str = "memory"  # redis: the distributor journals every job

    @classmethod
    def build(cls, quick: bool, n: int | None, concurrency: int) -> Params:
        if quick:
            return cls(
                n=n or 5_000, quick=True, concurrency=concurrency, warmup=200,
                latency_samples=200, latency_idle_samples=5, idle_gap_s=(0.05, 0.2),
                burst=1_000, sparse=50, delay_s=2.0, spread_s=2.0,
                memory_jobs=100_000, idle_s=3.0,
            )  # fmt: skip
        return cls(
            n=n or 100_000, quick=False, concurrency=concurrency, warmup=1_000,
            latency_samples=1_000, latency_idle_samples=20, idle_gap_s=(0.1, 0.9),
            burst=1_000, sparse=50, delay_s=2.0, spread_s=2.0,
            memory_jobs=1_000_000, idle_s=10.0,
        )  # fmt: skip


class Bar:
    """One progress bar; safe to update from any thread."""

    def __init__(self, progress: Progress, task: TaskID) -> None:
        self._progress = progress
        self._task = task

    def update(self, completed: float, total: float | None = None) -> None:
        self._progress.update(self._task, completed=completed, total=total)

    def describe(self, text: str) -> None:
        self._progress.update(self._task, description=text)

    def done(self) -> None:
        task = self._progress.tasks[self._task] if self._task < len(self._progress.tasks) else None
        total = task.total if task is not None and task.total else 1
        self._progress.update(self._task, completed=total, total=total)


class Context:
    def __init__(self, params: Params, workdir: Path, console: Console) -> None:
        self.params = params
        self.workdir = workdir
        self.console = console
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            refresh_per_second=4,
        )
        self._redis: RedisServer | None = None
        self._redis_error: str | None = None
        self.redis_version: str | None = None
        self._redis_lock = threading.Lock()
        self.redis_storage_unavailable: str | None = None
        self._shared: dict[str, Cluster] = {}
        self._open: set[Cluster] = set()
        self._open_lock = threading.Lock()
        self._clusters_made = 0

    # progress --------------------------------------------------------------------------------

    def bar(self, description: str, total: float | None = None) -> Bar:
        return Bar(self.progress, self.progress.add_task(description, total=total))

    @contextlib.contextmanager
    def quiet(self) -> Iterator[None]:
        """Pause the live display (its refresh thread would be counted as CPU of this process)."""
        self.progress.stop()
        try:
            yield
        finally:
            self.progress.start()

    # redis -------------------------------------------------------------------------------------

    def redis(self) -> RedisServer:
        """The bench's own redis-server, started on first use; RedisServerMissing if none."""
        with self._redis_lock:
            if self._redis is None:
                if self._redis_error is not None:
                    raise RedisServerMissing(self._redis_error)
                try:
                    self._redis = RedisServer(self.workdir)
                    self.redis_version = self._redis.version
                except BenchError as exc:
                    self._redis_error = str(exc)
                    raise RedisServerMissing(str(exc)) from exc
            return self._redis

    def redis_or_reason(self) -> tuple[RedisServer | None, str]:
        try:
            return self.redis(), ""
        except RedisServerMissing as exc:
            return None, str(exc)

    # clusters ----------------------------------------------------------------------------------

    def cluster(self, storage: str, label: str, nodes: int = 1) -> Cluster:
        """A started cluster for one workload; close it (it is a context manager)."""
        durable = storage == "redis" or self.params.distributor_storage == "redis"
        redis = self.redis() if durable else self.redis_or_reason()[0]
        with self._open_lock:
            self._clusters_made += 1
            serial = self._clusters_made
            workdir = self.workdir / f"{serial:02d}-{label}-{storage}"
            workdir.mkdir(parents=True, exist_ok=True)
            # a db of its own per cluster (1..15): a redis node never sees another run's keys
            cluster = _TrackedCluster(self, workdir, storage, redis, label, 1 + (serial - 1) % 15)
            self._open.add(cluster)
        try:
            cluster.start(nodes)
        except BaseException:
            cluster.close()
            raise
        return cluster

    def shared_cluster(self, storage: str) -> Cluster:
        """One idle single-node cluster per storage, reused by latency, delayed and idle."""
        cluster = self._shared.get(storage)
        if cluster is None or cluster.reactor is None:
            cluster = self.cluster(storage, "shared")
            self._shared[storage] = cluster
        cluster.check_nodes()
        return cluster

    def drop_shared(self, storage: str) -> None:
        cluster = self._shared.pop(storage, None)
        if cluster is not None:
            cluster.close()

    def forget(self, cluster: Cluster) -> None:
        with self._open_lock:
            self._open.discard(cluster)

    def abandon_all(self) -> None:
        """After a workload overran its hard deadline: stop every cluster still open."""
        self._shared.clear()
        with self._open_lock:
            clusters = list(self._open)
        for cluster in clusters:
            stop_processes([n.proc for n in cluster.nodes], grace=5)
            reactor, cluster.reactor = cluster.reactor, None
            if reactor is not None:
                with contextlib.suppress(Exception):
                    bounded(reactor.stop, 10, "Reactor.stop()")
            self.forget(cluster)

    def close(self) -> None:
        for storage in list(self._shared):
            self.drop_shared(storage)
        self.abandon_all()
        if self._redis is not None:
            self._redis.stop()
            self._redis = None


class _TrackedCluster(Cluster):
    def __init__(
        self,
        ctx: Context,
        workdir: Path,
        storage: str,
        redis: RedisServer | None,
        label: str,
        redis_db: int,
    ) -> None:
        super().__init__(workdir, storage, ctx.params.concurrency, redis, label, redis_db)
        self.distributor_storage = ctx.params.distributor_storage
        self._ctx = ctx

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._ctx.forget(self)

    def __hash__(self) -> int:
        return id(self)

    def __eq__(self, other: Any) -> bool:
        return self is other
