"""JR.release_lock and JR.retry from an app that holds no Redis of its own (issue 12).

The app's reactor runs a memory distributor, as a web app does; the node is a separate process
with Redis storage, where the lock and the failed job live. The app reaches them through the
node (a `Command` on the existing link).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from jobreactor import JobCancelled, JobFailed, Reactor
from jobreactor.storage.redis import RedisStorage
from tests.conftest import wait_until
from tests.redis_server import RedisServer, unique_prefix

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def redis_node(reactor: Reactor, address, cli_node, redis_server: RedisServer):
    prefix = unique_prefix()
    node = cli_node("r1", address, storage="redis", redis_url=redis_server.url, redis_prefix=prefix)
    reactor.wait_for_node("r1", timeout=20)
    return node, prefix


def whats(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [json.loads(line)["what"] for line in path.read_text().splitlines() if line]


def test_release_lock_from_the_app_frees_a_lock_held_in_the_nodes_redis(
    reactor: Reactor, redis_node, redis_server: RedisServer, tmp_path: Path
) -> None:
    _, prefix = redis_node
    # A lock left behind in the nodes' Redis (say by a run on a node that died): the case
    # Resque Lock's "release it by hand" is for.
    storage = RedisStorage(redis_server.url, prefix=prefix)

    async def take() -> bool:
        try:
            return await storage.lock("lock:nightly", "crashed-run:1", 3600)
        finally:
            await storage.aclose()

    assert asyncio.run(take())
    out = tmp_path / "out.jsonl"
    blocked = reactor.enqueue("simple", {"out": str(out)}, {"lock": "lock:nightly"})
    assert blocked is not None
    with pytest.raises(JobCancelled):  # lock_failed: dropped, as resque-lock-timeout does
        blocked.result(20)
    assert whats(out) == []

    assert reactor.release_lock("lock:nightly") is True
    assert reactor.release_lock("lock:nightly") is False  # gone now

    runs = reactor.enqueue("simple", {"out": str(out)}, {"lock": "lock:nightly"})
    assert runs is not None
    assert runs.result(20)["result"] == "ok"
    assert whats(out) == ["simple"]


def test_retry_from_the_app_runs_a_failed_job_kept_on_a_remote_redis_node(
    reactor: Reactor, redis_node, tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    handle = reactor.enqueue("fail", {"out": str(out)})
    assert handle is not None
    with pytest.raises(JobFailed):
        handle.result(20)
    assert whats(out) == ["fail"] * 3  # max_attempt = 3 on the node

    assert reactor.retry(handle.id) is True
    wait_until(lambda: len(whats(out)) == 6, 20, "three more attempts")
    assert reactor.retry("no-such-job") is False


def test_commands_without_nodes_find_nothing(reactor: Reactor) -> None:
    assert reactor.release_lock("lock:none", timeout=1) is False
    assert reactor.retry("nothing", timeout=1) is False
