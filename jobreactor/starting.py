"""Starting the parts: `start_distributor` and `start_node` (thread-safe, they hop onto the
loop) and their coroutine twins for code on the loop. Reactor (reactor.py) mixes this in; the
attributes below are Reactor's.
"""

from __future__ import annotations

import ssl as ssl_module
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from jobreactor.config import Config, ReactorConfig
from jobreactor.definitions import Registry
from jobreactor.distributor import Distributor
from jobreactor.distributor.outcomes import Feedback
from jobreactor.environment import redis_url_for
from jobreactor.errors import InvalidOptions, ReactorClosed
from jobreactor.node import Node
from jobreactor.node.alone import warn_if_alone
from jobreactor.storage import Storage, open_storage

T = TypeVar("T")


def _redis_url(storage: str, redis_url: str | None, settings: ReactorConfig) -> str | None:
    """The URL said for this part, or None where memory storage needs none."""
    if redis_url or not storage.startswith("redis"):
        return redis_url or None
    return redis_url_for(storage, redis_url, settings, "storage")


def _open(storage: str, redis_url: str | None, settings: ReactorConfig, who: str) -> Storage:
    """The storage `who` asked for; "redis" without a URL said anywhere is a ConfigError."""
    if storage.startswith("redis"):
        redis_url = redis_url_for(storage, redis_url, settings, who)
    return open_storage(storage, redis_url, prefix=settings.redis_prefix)


class Starting:
    """start_distributor, start_node, their `a`-twins and the `distributor` property."""

    if TYPE_CHECKING:
        config: Config
        _distributors: list[Distributor]
        _nodes: list[Node]
        _named_feedbacks: dict[str, Feedback]

        def _check_fork(self) -> None: ...
        def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None = 30.0) -> T: ...

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
        return self._call(
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
        distributor = Distributor(
            settings,
            secret=secret,
            advertise=advertise,
            storage=_open(storage, redis_url, settings, "start_distributor"),
            discovery_url=discovery_url,
            group=group,
        )
        distributor.named_feedbacks = self._named_feedbacks
        try:
            bound = await distributor.start(host, port, ssl)
        except BaseException:
            await distributor.storage.aclose()
            raise
        self._distributors.append(distributor)
        return bound

    @property
    def distributor(self) -> Distributor:
        self._check_fork()
        if not self._distributors:
            raise ReactorClosed("no distributor: call JR.start_distributor(host, port) first")
        return self._distributors[0]

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
    ) -> Node:
        """Start a node on this reactor. Thread-safe; waits for its links."""
        return self._call(
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
    ) -> Node:
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
        local = [d for d in self._distributors if not (discovery_url and d.presence)]
        targets = list(distributors or [("127.0.0.1", d.address_port()) for d in local])
        if not targets and not discovery_url:
            raise InvalidOptions(
                "start_node needs distributors=[(host, port), ...] or discovery_url"
            )
        node_storage = _open(storage, redis_url, settings, f"start_node({name!r})")
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
        )
        await node.start()
        if settings.warn_no_node_after > 0:
            warn_if_alone(node, settings.warn_no_node_after, discovery_url)
        self._nodes.append(node)
        if wait:
            try:
                await node.wait_ready(timeout=max(5.0, settings.handshake_timeout * 3))
            except TimeoutError:
                self._nodes.remove(node)
                await node.stop(grace=0)
                raise
        return node
