"""Discovery tests: one group per test (a unique redis prefix), short registry timings."""

from __future__ import annotations

from typing import Any

import pytest

from tests.redis_server import RedisServer, unique_prefix

# Fast enough for tests, still ttl > beat and grace > ttl (as config requires).
FAST = {"registry_beat": 0.2, "registry_ttl": 0.8, "adopt_grace": 1.5}


@pytest.fixture
def group(redis_server: RedisServer) -> dict[str, Any]:
    """Config for a fresh group: discovery on the test Redis, its own prefix, fast beats."""
    return {"discovery_url": redis_server.url, "redis_prefix": unique_prefix(), **FAST}
