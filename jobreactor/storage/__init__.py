"""Storage backends behind one protocol."""

from __future__ import annotations

from jobreactor.errors import ConfigError
from jobreactor.storage.base import Storage
from jobreactor.storage.memory import MemoryStorage

__all__ = ["MemoryStorage", "Storage", "open_storage"]


def open_storage(kind: str, redis_url: str | None = None, **options: object) -> Storage:
    """Build the storage a node or distributor asked for by name."""
    if kind in {"memory", "memory_storage"}:
        return MemoryStorage()
    if kind in {"redis", "redis_storage"}:
        try:
            from jobreactor.storage.redis import RedisStorage  # type: ignore[import-not-found,unused-ignore]
        except ImportError as exc:
            raise ConfigError(f"redis storage is not available: {exc}") from exc
        return RedisStorage(redis_url or "redis://localhost:6379", **options)  # type: ignore[no-any-return,unused-ignore]
    raise ConfigError(f"unknown storage {kind!r}; use 'memory' or 'redis'")
