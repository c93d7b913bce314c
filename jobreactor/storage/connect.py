"""Redis clients: one `redis_url`, a single server or any node of a Redis Cluster.

`INFO cluster` says which (`cluster_enabled:1`): a cluster is served through redis-py's
`RedisCluster` (async for storage, sync for the monitor and batches), which follows the slot
map and MOVED/ASK replies, so the url may name any of its nodes. Errors are translated into
ours here, once (errors.py).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio as aredis
import redis.exceptions
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from jobreactor.errors import ConfigError, StorageError, StorageUnavailable
from jobreactor.storage.codec import redact_url as _redact

DEFAULT_REDIS_URL: Final = "redis://localhost:6379"

# Options of a plain client that RedisCluster does not take.
_PLAIN_ONLY: Final = ("health_check_interval", "single_connection_client")
# redis-py's own cap on a pool (it raises "Too many connections" past it; ours waits instead).
DEFAULT_MAX_CONNECTIONS: Final = 100


@contextlib.contextmanager
def redis_errors(operation: str, where: str) -> Iterator[None]:
    """Translate redis-py errors into ours at the boundary."""
    try:
        yield
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
        raise StorageUnavailable(
            f"redis unreachable during {operation}: {exc}; "
            f"check redis_url ({where}) and that redis-server runs"
        ) from exc
    except redis.exceptions.RedisError as exc:
        raise StorageError(f"redis refused {operation} ({where}): {exc}") from exc


def _cluster_options(options: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in options.items() if key not in _PLAIN_ONLY}


def _enabled(info: dict[str, Any]) -> bool:
    return str(info.get("cluster_enabled", "0")) == "1"


def _blocking_client(url: str, options: dict[str, Any]) -> aredis.Redis[str]:
    """A plain async client whose pool waits for a free connection when all are busy.

    redis-py's default pool raises `MaxConnectionsError` ("Too many connections") at its cap,
    so a burst of storage calls (many jobs re-checking a `perform_id` at once) failed calls that
    only had to wait. The wait is bounded by `socket_timeout`; past it the call fails with
    `StorageUnavailable`, like any other unreachable-redis error.
    """
    pool_options = dict(options)
    single = bool(pool_options.pop("single_connection_client", False))
    pool_options.setdefault("max_connections", DEFAULT_MAX_CONNECTIONS)
    pool_options.setdefault("timeout", pool_options.get("socket_timeout"))
    pool = aredis.BlockingConnectionPool.from_url(url, **pool_options)
    client: aredis.Redis[str] = aredis.Redis(connection_pool=pool, single_connection_client=single)
    client.auto_close_connection_pool = True  # the client owns its pool (as `from_pool` does)
    return client


async def open_async(url: str, where: str, options: dict[str, Any]) -> Any:
    """A connected `redis.asyncio.Redis`, or `RedisCluster` when `url` names a cluster node."""
    try:
        plain = _blocking_client(url, options)
    except ValueError as exc:
        raise ConfigError(f"invalid redis_url {where!r}: {exc}") from exc
    try:
        with redis_errors("connect", where):
            info = await plain.info("cluster")
    except BaseException:
        await plain.aclose()
        raise
    if not _enabled(info):
        return plain
    await plain.aclose()
    cluster: AsyncRedisCluster = AsyncRedisCluster.from_url(url, **_cluster_options(options))
    try:
        with redis_errors("connect", where):
            await cluster.initialize()
    except BaseException:
        await cluster.aclose()
        raise
    return cluster


def open_sync(url: str, where: str, options: dict[str, Any]) -> Any:
    """A `redis.Redis`, or `redis.cluster.RedisCluster` when `url` names a cluster node."""
    try:
        plain: redis.Redis[str] = redis.Redis.from_url(url, **options)
    except ValueError as exc:
        raise ConfigError(f"invalid redis_url {where!r}: {exc}") from exc
    with redis_errors("connect", where):
        info = plain.info("cluster")
    if not _enabled(info):
        return plain
    plain.close()
    with redis_errors("connect", where):
        return RedisCluster.from_url(url, **_cluster_options(options))


def is_cluster(client: Any) -> bool:
    return isinstance(client, AsyncRedisCluster | RedisCluster)


def with_address(url: str, host: str, port: int | str) -> str:
    """`url` with its host and port replaced (credentials, db and query kept)."""
    parts = urlsplit(url)
    credentials = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit(parts._replace(netloc=f"{credentials}{host}:{port}"))


class LazySync:
    """A sync client opened at first use (thread-safe), so building one never blocks on I/O
    and a down server surfaces as `StorageUnavailable` from the call that needed it."""

    def __init__(self, url: str, **options: Any) -> None:
        self.where = _redact(url)
        self._url = url
        self._options = options
        self._client: Any = None
        self._lock = threading.Lock()
        try:
            redis.Redis.from_url(url, **options)
        except ValueError as exc:
            raise ConfigError(f"invalid redis_url {self.where!r}: {exc}") from exc

    def get(self) -> Any:
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    self._client = open_sync(self._url, self.where, dict(self._options))
                client = self._client
        return client

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()
