"""Members: the distributors and nodes a reactor started, and how they start and stop.

A part of `Reactor` (reactor.py): `start_distributor` and `start_node` (thread-safe, they hop
onto the loop through the LoopHost's `call`) and their coroutine twins for code on the loop.
`distributors` and `nodes` are read-only to everyone else (enqueue, calls, housekeeping,
dashboard, health); `start_node` returns a `NodeHandle` (nodehandle.py), not the engine.
"""

from __future__ import annotations

import ssl as ssl_module
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from jobreactor.config import Config, ReactorConfig
from jobreactor.definitions import Registry
from jobreactor.distributor import Distributor
from jobreactor.distributor.outcomes import Feedback
from jobreactor.environment import redis_url_for
from jobreactor.errors import InvalidOptions, ReactorClosed, WaitTimeout
from jobreactor.loophost import LoopHost
from jobreactor.metrics import JobMetrics
from jobreactor.node import Node, warn_if_alone
from jobreactor.nodehandle import NodeHandle
from jobreactor.storage import Storage, open_storage
from jobreactor.storage.memory import Keyspace

T = TypeVar("T")


def _redis_url(storage: str, redis_url: str | None, settings: ReactorConfig) -> str | None:
    """The URL said for this part, or None where memory storage needs none."""
    if redis_url or not storage.startswith("redis"):
        return redis_url or None
    return redis_url_for(storage, redis_url, settings, "storage")


def _open(
    storage: str,
    redis_url: str | None,
    settings: ReactorConfig,
    who: str,
    keyspace: Keyspace,
    **options: Any,
) -> Storage:
    """The storage `who` asked for; "redis" without a URL said anywhere is a ConfigError.
    `keyspace`: a memory storage's locks and unique keys (the reactor's); `options`: redis
    client options (a distributor's timeouts)."""
    if storage.startswith("redis"):
        redis_url = redis_url_for(storage, redis_url, settings, who)
        return open_storage(storage, redis_url, prefix=settings.redis_prefix, **options)
    return open_storage(storage, redis_url, keyspace=keyspace)


class Members:
    """The distributors and nodes of one reactor in one process (made again after a fork)."""

    def __init__(
        self,
        config: Config,
        named_feedbacks: dict[str, Feedback],
        host: LoopHost,
        check_fork: Callable[[], None],
        metrics: JobMetrics,
    ) -> None:
        self.config = config
        self._named_feedbacks = named_feedbacks
        self._metrics = metrics  # the reactor's: its distributors and nodes count here
        self._host = host
        self._check_fork = check_fork
        self.forget()

    def forget(self) -> tuple[list[Distributor], list[Node]]:
        """Start with none (a forked child); return the old ones (the child never touches them)."""
        old = (getattr(self, "distributors", []), getattr(self, "nodes", []))
        self.distributors: list[Distributor] = []  # the first one takes enqueues
        self.nodes: list[Node] = []
        # The memory storages' locks and unique keys, shared by this reactor's distributors
        # and nodes (storage/memory.py); a forked child starts with none.
        self.keyspace = Keyspace()
        return old

    def first(self) -> Distributor:
        """The distributor that takes enqueues; ReactorClosed if none runs."""
        self._check_fork()
        if not self.distributors:
            raise ReactorClosed("no distributor: call JR.start_distributor(host, port) first")
        return self.distributors[0]

    def storages(self) -> list[Storage]:
        """Each storage of the distributors and nodes here, once."""
        seen: list[Storage] = []
        owners: list[Distributor | Node] = [*self.distributors, *self.nodes]
        for owner in owners:
            if not any(owner.storage is s for s in seen):
                seen.append(owner.storage)
        return seen

    async def stop(self, budget: float | None, handover: bool) -> None:
        """Nodes drain, then distributors wait for their jobs (each within `budget`)."""
        for node in list(self.nodes):
            await node.stop(budget)
        for distributor in list(self.distributors):
            await distributor.stop(budget, handover=handover)
        self.nodes.clear()
        self.distributors.clear()

    def stop_nodes_now(self) -> list[Coroutine[Any, Any, None]]:
        """Stops without grace for every node (a second SIGINT)."""
        return [node.stop(grace=0) for node in self.nodes]

    # --- distributors ---------------------------------------------------------------------------

    def start_distributor(  # noqa: PLR0913 (public API: names kept)
        self,
        host: str = "127.0.0.1",
        port: int = 5000,
        *,
        secret: str | None = None,
        ssl: ssl_module.SSLContext | None = None,
        storage: str = "memory",
        redis_url: str | None = None,
        advertise: str | None = None,
        discovery_url: str | None = None,
        group: str | None = None,
        insecure: bool | None = None,
    ) -> tuple[str, int]:
        """Start a distributor on this reactor; return the bound (host, port). Thread-safe.

        A non-loopback `host` needs a secret (or TLS client certificates), or `insecure=True`
        (else `InsecureBind`). `insecure=None` takes the `insecure` setting.
        """
        return self._host.call(
            self.astart_distributor(
                host,
                port,
                secret=secret,
                ssl=ssl,
                storage=storage,
                redis_url=redis_url,
                advertise=advertise,
                discovery_url=discovery_url,
                group=group,
                insecure=insecure,
            )
        )

    async def astart_distributor(  # noqa: PLR0913 (mirrors start_distributor)
        self,
        host: str = "127.0.0.1",
        port: int = 5000,
        *,
        secret: str | None = None,
        ssl: ssl_module.SSLContext | None = None,
        storage: str = "memory",
        redis_url: str | None = None,
        advertise: str | None = None,
        discovery_url: str | None = None,
        group: str | None = None,
        insecure: bool | None = None,
    ) -> tuple[str, int]:
        settings = self.config.snapshot(**({} if insecure is None else {"insecure": insecure}))
        # With Redis down, enqueue fails within redis_timeout (issue 16).
        timeouts = {
            "socket_timeout": settings.redis_timeout,
            "socket_connect_timeout": settings.redis_timeout,
        }
        distributor = Distributor(
            settings,
            metrics=self._metrics,
            secret=secret,
            advertise=advertise,
            storage=_open(
                storage, redis_url, settings, "start_distributor", self.keyspace, **timeouts
            ),
            discovery_url=discovery_url,
            group=group,
        )
        distributor.named_feedbacks = self._named_feedbacks
        try:
            bound = await distributor.start(host, port, ssl)
        except BaseException:
            await distributor.storage.aclose()
            raise
        self.distributors.append(distributor)
        return bound

    # --- nodes ----------------------------------------------------------------------------------

    def start_node(  # noqa: PLR0913 (public API: names kept)
        self,
        name: str,
        storage: str = "memory",
        distributors: list[tuple[str, int]] | None = None,
        *,
        job_directory: str | Path | None = None,
        redis_url: str | None = None,
        concurrency: int | None = None,
        secret: str | None = None,
        ssl: ssl_module.SSLContext | None = None,
        registry: Registry | None = None,
        wait: bool = True,
        discovery_url: str | None = None,
        group: str | None = None,
    ) -> NodeHandle:
        """Start a node on this reactor; its handle. Thread-safe; waits for its links."""
        return self._host.call(
            self.astart_node(
                name,
                storage,
                distributors,
                job_directory=job_directory,
                redis_url=redis_url,
                concurrency=concurrency,
                secret=secret,
                ssl=ssl,
                registry=registry,
                wait=wait,
                discovery_url=discovery_url,
                group=group,
            )
        )

    async def astart_node(  # noqa: PLR0913 (mirrors start_node)
        self,
        name: str,
        storage: str = "memory",
        distributors: list[tuple[str, int]] | None = None,
        *,
        job_directory: str | Path | None = None,
        redis_url: str | None = None,
        concurrency: int | None = None,
        secret: str | None = None,
        ssl: ssl_module.SSLContext | None = None,
        registry: Registry | None = None,
        wait: bool = True,
        discovery_url: str | None = None,
        group: str | None = None,
    ) -> NodeHandle:
        """`start_node` for code on the reactor's loop."""
        overrides: dict[str, Any] = {}
        if concurrency is not None:
            overrides["concurrency"] = concurrency
        settings = self.config.snapshot(**overrides)
        if registry is None:
            registry = Registry()
            directory = job_directory if job_directory is not None else settings.job_directory
            registry.load_directory(directory)
        discovery_url = discovery_url or settings.discovery_url
        # This reactor's own distributors, unless discovery finds them (one link each).
        local = [d for d in self.distributors if not (discovery_url and d.presence)]
        targets = list(distributors or [("127.0.0.1", d.address_port()) for d in local])
        if not targets and not discovery_url:
            raise InvalidOptions(
                "start_node needs distributors=[(host, port), ...] or discovery_url"
            )
        node_storage = _open(storage, redis_url, settings, f"start_node({name!r})", self.keyspace)
        node = Node(
            name,
            settings,
            registry,
            node_storage,
            [(str(h), int(p)) for h, p in targets],
            secret=secret,
            ssl_context=ssl,
            redis_url=_redis_url(storage, redis_url, settings),
            discovery_url=discovery_url,
            group=group,
            metrics=self._metrics,
        )
        await node.start()
        if settings.warn_no_node_after > 0:
            warn_if_alone(node, settings.warn_no_node_after, discovery_url)
        self.nodes.append(node)
        if wait:
            timeout = max(5.0, settings.handshake_timeout * 3)
            try:
                await node.wait_ready(timeout=timeout)
            except TimeoutError:
                self.nodes.remove(node)
                await node.stop(grace=0)
                raise WaitTimeout(
                    f"node {node.name} was not welcomed by its distributors within {timeout:g}s "
                    "(address, secret, TLS?): it was stopped"
                ) from None
        return NodeHandle(node, self._host)
