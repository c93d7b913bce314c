"""Storage backends behind one protocol."""

from __future__ import annotations

from typing import Any

from jobreactor.errors import ConfigError
from jobreactor.storage.base import Storage, UnlockResult
from jobreactor.storage.memory import Keyspace, MemoryStorage

__all__ = ["MemoryStorage", "Storage", "UnlockResult", "open_storage"]


def open_storage(
    kind: str, redis_url: str | None = None, *, keyspace: Keyspace | None = None, **options: Any
) -> Storage:
    """Build the storage a node or distributor asked for by name.

    Redis options: `prefix` (key namespace, default "jr") and any `redis.asyncio` client option
    (`socket_timeout`, `max_connections`, …). Memory storage takes `keyspace` (its unique keys
    and locks, shared by the storages of one reactor; default: its own).
    """
    if kind in {"memory", "memory_storage"}:
        return MemoryStorage(keyspace)
    if kind in {"redis", "redis_storage"}:
        try:
            # Imported here so memory-only users never pay for importing redis-py.
            from jobreactor.storage.redis import RedisStorage
        except ImportError as exc:
            raise ConfigError(f"redis storage is not available: {exc}") from exc
        if not redis_url:
            raise ConfigError(
                f'storage {kind!r} needs a Redis URL, e.g. redis_url="redis://host:6379/0"'
            )
        return RedisStorage(redis_url, **options)
    raise ConfigError(f"unknown storage {kind!r}; use 'memory' or 'redis'")
