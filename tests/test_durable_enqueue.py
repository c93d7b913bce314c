"""Durable or told (issue 16): every enqueue either returns a stored job or raises, and a job
whose enqueue raised never runs; deleting a periodic job's record ends it. Real redis-server,
real reactors on loopback sockets."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from jobreactor import Reactor, RedisMonitor, Registry
from jobreactor.errors import EnqueueTimeout, JobCancelled, JobReactorError, StorageUnavailable
from jobreactor.storage.keys import Keys
from tests.conftest import Recorder, wait_until
from tests.redis_server import RedisServer, unique_prefix

Reactors = Callable[..., Reactor]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    made = RedisServer(tmp_path / "redis").start()
    yield made
    made.stop()


def _setup(reactors: Reactors, url: str, **config: Any) -> tuple[Reactor, Recorder, str]:
    """A reactor with a redis-backed distributor and an in-process memory node recording ids."""
    prefix = unique_prefix()
    reactor = reactors(redis_prefix=prefix, **config)
    host, port = reactor.start_distributor("127.0.0.1", 0, storage="redis", redis_url=url)
    registry, ran = Registry(), Recorder()
    registry.job("simple")(lambda args: ran(args["i"]))
    reactor.start_node("m", "memory", [(host, port)], registry=registry)
    return reactor, ran, prefix


def test_with_redis_down_every_enqueue_raises_and_works_again_when_it_is_back(
    reactors: Reactors, server: RedisServer
) -> None:
    reactor, ran, _ = _setup(reactors, server.url, redis_timeout=1.0)
    reactor.enqueue("simple", {"i": 0}).result(10)  # type: ignore[union-attr]
    server.stop()
    with pytest.raises(StorageUnavailable, match="redis"):
        reactor.enqueue("simple", {"i": 1})
    with pytest.raises(StorageUnavailable):
        reactor.enqueue_many([("simple", {"i": 2}, None), ("simple", {"i": 3}, None)])

    async def aenqueue() -> None:
        await reactor.aenqueue("simple", {"i": 4})

    with pytest.raises(StorageUnavailable):
        asyncio.run(aenqueue())
    server.start()  # same port, empty: no restart of the app
    reactor.enqueue("simple", {"i": 5}).result(20)  # type: ignore[union-attr]
    reactor.wait_idle(20)
    assert sorted(ran.items) == [0, 5]  # none of the refused jobs ran


@pytest.mark.timeout(90)
def test_an_enqueue_timed_out_under_paused_redis_never_runs(
    reactors: Reactors, server: RedisServer
) -> None:
    reactor, ran, prefix = _setup(reactors, server.url, enqueue_timeout=0.3, redis_timeout=10.0)
    reactor.enqueue("simple", {"i": -1}).result(10)  # type: ignore[union-attr]
    admin = redis.Redis.from_url(server.url)
    told: list[str] = []

    async def aenqueue(i: int) -> None:
        await reactor.aenqueue("simple", {"i": i})

    admin.execute_command("CLIENT", "PAUSE", "20000", "WRITE")
    for i in range(5):  # sync: written from this thread
        with pytest.raises(EnqueueTimeout) as raised:
            reactor.enqueue("simple", {"i": i})
        told.append(raised.value.job_id)
    for i in range(5, 10):  # async: written by the loop, which lands once Redis resumes
        with pytest.raises(EnqueueTimeout) as araised:
            asyncio.run(aenqueue(i))
        assert isinstance(araised.value, JobReactorError)
        assert isinstance(araised.value, TimeoutError)
        assert "will not run" in str(araised.value)
        told.append(araised.value.job_id)
    for i in range(10, 13):  # on the reactor's own loop: written there, then withdrawn
        with pytest.raises(EnqueueTimeout) as onloop:
            reactor.call(lambda i=i: reactor.aenqueue("simple", {"i": i}))  # type: ignore[misc]
        told.append(onloop.value.job_id)
    admin.execute_command("CLIENT", "UNPAUSE")
    reactor.enqueue("simple", {"i": 100}).result(20)  # type: ignore[union-attr]
    reactor.wait_idle(20)
    journal = Keys(prefix).queue(reactor.distributor.journal.queue)[0]  # type: ignore[union-attr]
    wait_until(lambda: not set(admin.hkeys(journal)) & {t.encode() for t in told}, 10, "purge")
    assert sorted(ran.items) == [-1, 100]  # 0 of the 13 told jobs ran
    admin.close()


@pytest.mark.parametrize("how", ["monitor", "cli", "del"])
@pytest.mark.timeout(90)
def test_deleting_a_periodic_jobs_record_ends_it(
    reactors: Reactors, redis_server: RedisServer, how: str
) -> None:
    prefix = unique_prefix()
    reactor = reactors(redis_prefix=prefix)
    host, port = reactor.start_distributor("127.0.0.1", 0)
    registry, ran = Registry(), Recorder()
    registry.job("tick")(lambda args: ran(1))
    reactor.start_node("r", "redis", [(host, port)], registry=registry, redis_url=redis_server.url)
    handle = reactor.enqueue("tick", {}, {"period": 2.0})
    assert handle is not None
    ran.wait(1, timeout=20)
    # Delete between runs. A delete racing a run's own save stays deleted too (the storage
    # saves a periodic update only while its record exists): tests/storage/test_periodic_delete.py.
    with RedisMonitor(redis_server.url, prefix=prefix) as monitor:
        wait_until(lambda: _between_runs(monitor, handle.id), 20, "the run's own save")
    if how == "monitor":
        with RedisMonitor(redis_server.url, prefix=prefix) as monitor:
            assert monitor.destroy(handle.id)
    elif how == "cli":
        subprocess.run(
            [sys.executable, "-m", "jobreactor", "jobs", "--redis-url", redis_server.url,
             "--prefix", prefix, "destroy", handle.id],
            check=True, timeout=60, capture_output=True,
        )  # fmt: skip
    else:
        client = redis.Redis.from_url(redis_server.url)
        assert client.delete(Keys(prefix).job("r", handle.id)) == 1
        client.close()
    with pytest.raises(JobCancelled):  # its next run found no record: skipped, the job ended
        handle.result(20)
    runs = len(ran)
    reactor.wait_idle(10)
    assert len(ran) == runs  # no further run


def _between_runs(monitor: RedisMonitor, job_id: str) -> bool:
    record = monitor.load(job_id)
    if record is None or record.get("status") != "queued":
        return False
    return float(record.get("run_at_ts") or 0) > time.time() + 0.5


def test_the_async_twins_work_from_another_loop(
    reactors: Reactors, redis_server: RedisServer
) -> None:
    reactor, ran, _ = _setup(reactors, redis_server.url)

    async def main() -> None:
        await reactor.await_for_node("m", timeout=10)
        handle = await reactor.aenqueue("simple", {"i": 1})
        assert handle is not None
        assert await handle.aaccepted(5)  # stored before aenqueue returned
        await reactor.await_idle(20)
        assert not await reactor.aretry("no-such-job", timeout=2)
        assert not await reactor.arelease_lock("no-such-lock", timeout=2)
        fast = await reactor.aenqueue("simple", {"i": 2}, durable=False)
        assert fast is not None
        assert await fast.aaccepted(5)
        await reactor.await_idle(20)

    asyncio.run(main())
    assert sorted(ran.items) == [1, 2]
