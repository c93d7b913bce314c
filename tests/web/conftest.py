"""Fixtures for tests/web: one discovery group per test on the session's redis-server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.discovery.conftest import FAST
from tests.redis_server import RedisServer, unique_prefix
from tests.web.servers import Process, WebNode, WebServer


@pytest.fixture
def group(redis_server: RedisServer) -> dict[str, Any]:
    """Settings shared by the web workers (as JOBREACTOR_* variables) and the nodes."""
    return {
        "discovery_url": redis_server.url,
        "hiredis_url": redis_server.url,
        "redis_prefix": unique_prefix(),
        "group": "web",
        **FAST,
    }


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for process in reversed(started):
        process.stop()


@pytest.fixture
def web(
    tmp_path: Path, group: dict[str, Any], processes: list[Process]
) -> Callable[..., WebServer]:
    """Start `python -m <argv>` in examples/web with the group's JOBREACTOR_* settings."""

    def start(*argv: str, **settings: Any) -> WebServer:
        env = {f"JOBREACTOR_{k.upper()}": str(v) for k, v in {**group, **settings}.items()}
        server = WebServer(tmp_path, list(argv), env)
        processes.append(server)
        return server

    return start


@pytest.fixture
def nodes(
    tmp_path: Path, group: dict[str, Any], processes: list[Process]
) -> Callable[..., list[WebNode]]:
    """Start `count` nodes that find the workers by discovery; they write to `out`."""

    def start(count: int, out: Path, **settings: Any) -> list[WebNode]:
        made = [WebNode(tmp_path, f"node{i}", out, **{**group, **settings}) for i in range(count)]
        processes.extend(made)
        return made

    return start
