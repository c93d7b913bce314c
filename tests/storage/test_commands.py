"""Wake-up commands for Redis nodes (pub/sub, no polling) and RedisMonitor's retry and stats."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio.client

from jobreactor.job import JobStatus
from jobreactor.monitor import RedisMonitor
from jobreactor.storage.redis import RESYNC, RedisStorage
from tests.conftest import eventually
from tests.redis_server import RedisServer
from tests.storage.test_contract import rec

pytestmark = pytest.mark.timeout(60)


class Listener:
    """`commands(node)` consumed by a task into a queue, like a node would."""

    def __init__(self, store: RedisStorage, node: str, *, resync: bool = False) -> None:
        self.received: asyncio.Queue[str] = asyncio.Queue()
        self.task = asyncio.create_task(self._run(store, node, resync))

    async def _run(self, store: RedisStorage, node: str, resync: bool) -> None:
        async for job_id in store.commands(node, resync=resync):
            await self.received.put(job_id)

    async def next(self, within: float = 5.0) -> str:
        return await asyncio.wait_for(self.received.get(), within)

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


@contextlib.asynccontextmanager
async def listening(
    store: RedisStorage, node: str, *, resync: bool = False
) -> AsyncIterator[Listener]:
    listener = Listener(store, node, resync=resync)
    try:
        yield listener
    finally:
        await listener.stop()


async def until_subscribed(
    store: RedisStorage, node: str, job_id: str, within: float = 10.0
) -> int:
    """Publish `job_id` until a subscriber gets it (subscribing is asynchronous)."""
    receivers = 0

    async def published() -> bool:
        nonlocal receivers
        with contextlib.suppress(Exception):
            receivers = await store.send_command(node, job_id)
        return receivers > 0

    await eventually(published, within)
    return receivers


async def gone(plain: redis.Redis[str], channel: str, within: float = 5.0) -> None:
    """Wait until Redis has seen the subscriber's connection close."""

    async def unsubscribed() -> bool:
        return bool(plain.pubsub_numsub(channel) == [(channel, 0)])

    await eventually(unsubscribed, within)


@pytest.fixture
def monitor(redis_storage: RedisStorage, prefix: str) -> Iterator[RedisMonitor]:
    with RedisMonitor(redis_storage._url, prefix=prefix) as mon:
        yield mon


# --- commands / send_command --------------------------------------------------------------------


async def test_send_command_without_listener_reaches_nobody(redis_storage: RedisStorage) -> None:
    assert await redis_storage.send_command("w1", "job-1") == 0


async def test_commands_round_trip_in_order(redis_storage: RedisStorage, prefix: str) -> None:
    sender = RedisStorage(redis_storage._url, prefix=prefix)  # another process, in effect
    try:
        async with listening(redis_storage, "w1") as listener:
            assert await until_subscribed(sender, "w1", "first") == 1
            assert await listener.next() == "first"
            for i in range(50):
                assert await sender.send_command("w1", f"job-{i}") == 1
            assert [await listener.next() for _ in range(50)] == [f"job-{i}" for i in range(50)]
    finally:
        await sender.aclose()


async def test_commands_are_per_node_and_per_prefix(
    redis_storage: RedisStorage, prefix: str
) -> None:
    other_prefix = RedisStorage(redis_storage._url, prefix=prefix + "-other")
    try:
        async with listening(redis_storage, "w1") as w1, listening(redis_storage, "w2") as w2:
            await until_subscribed(redis_storage, "w1", "for-w1")
            await until_subscribed(redis_storage, "w2", "for-w2")
            assert await other_prefix.send_command("w1", "elsewhere") == 0
            assert await w1.next() == "for-w1"
            assert await w2.next() == "for-w2"
            await asyncio.sleep(0.1)  # nothing more must arrive: a window, no event to wait on
            assert w1.received.empty()
            assert w2.received.empty()
    finally:
        await other_prefix.aclose()


async def test_channel_shares_the_hash_tag(
    single_storage: RedisStorage, redis_server: RedisServer, prefix: str
) -> None:
    """External tools can wake a node with a plain PUBLISH on the documented channel."""
    redis_storage = single_storage
    assert redis_storage.keys.commands("w1") == f"{{{prefix}:n:w1}}:commands"
    plain = redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        async with listening(redis_storage, "w1") as listener:
            await until_subscribed(redis_storage, "w1", "warm-up")
            assert await listener.next() == "warm-up"
            assert plain.publish(f"{{{prefix}:n:w1}}:commands", "by-hand") == 1
            assert await listener.next() == "by-hand"
    finally:
        plain.close()


async def test_stopping_the_consumer_unsubscribes(
    single_storage: RedisStorage, redis_server: RedisServer
) -> None:
    redis_storage = single_storage
    plain = redis.Redis.from_url(redis_server.url, decode_responses=True)
    channel = redis_storage.keys.commands("w1")
    try:
        async with listening(redis_storage, "w1"):
            await until_subscribed(redis_storage, "w1", "x")
            assert plain.pubsub_numsub(channel) == [(channel, 1)]
        await gone(plain, channel)
        # Closing the generator (aclose) unsubscribes as well as cancelling does.
        gen = redis_storage.commands("w1")
        reader: asyncio.Task[str] = asyncio.create_task(anext(gen))
        await until_subscribed(redis_storage, "w1", "y")
        assert await asyncio.wait_for(reader, 5) == "y"
        await gen.aclose()
        await gone(plain, channel)
    finally:
        plain.close()


async def test_subscription_survives_a_redis_restart(
    own_redis_server: RedisServer, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="jobreactor.storage.redis")
    store = RedisStorage(own_redis_server.url, prefix=prefix)
    try:
        async with listening(store, "w1", resync=True) as listener:
            await until_subscribed(store, "w1", "before")
            assert await listener.next() == "before"

            own_redis_server.stop()

            async def retrying() -> bool:  # it keeps trying, with backoff, and never raises
                return any("redis unreachable" in r.getMessage() for r in caplog.records)

            await eventually(retrying)
            assert not listener.task.done()
            own_redis_server.start()  # same port, empty

            await until_subscribed(store, "w1", "after")
            # RESYNC first: commands sent while it was away are lost, look at storage.
            assert await listener.next() == RESYNC
            assert await listener.next() == "after"
            assert not listener.task.done()
    finally:
        await store.aclose()
    assert any("redis unreachable" in r.getMessage() for r in caplog.records)
    assert all(r.levelno <= logging.WARNING for r in caplog.records)


async def test_commands_wait_for_redis_that_is_down_at_start(
    own_redis_server: RedisServer, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="jobreactor.storage.redis")
    own_redis_server.stop()
    store = RedisStorage(own_redis_server.url, prefix=prefix)
    try:
        async with listening(store, "w1") as listener:

            async def retried() -> bool:  # failed, and tried again after its backoff
                failures = [r for r in caplog.records if "redis unreachable" in r.getMessage()]
                return len(failures) >= 2

            await eventually(retried)
            assert not listener.task.done()
            own_redis_server.start()
            await until_subscribed(store, "w1", "late")
            assert await listener.next() == "late"  # no RESYNC without resync=True
    finally:
        await store.aclose()


async def test_an_idle_subscription_pings_and_stays(
    redis_storage: RedisStorage, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("jobreactor.storage.wakeups._COMMANDS_IDLE_S", 0.05)
    caplog.set_level(logging.WARNING, logger="jobreactor.storage.redis")
    pings = 0
    real_ping = redis.asyncio.client.PubSub.ping

    async def counted_ping(self: redis.asyncio.client.PubSub, *args: Any, **kw: Any) -> Any:
        nonlocal pings
        pings += 1
        return await real_ping(self, *args, **kw)

    async def ten_pings() -> bool:
        return pings >= 10

    monkeypatch.setattr(redis.asyncio.client.PubSub, "ping", counted_ping)
    async with listening(redis_storage, "w1", resync=True) as listener:
        await until_subscribed(redis_storage, "w1", "one")
        assert await listener.next() == "one"
        await eventually(ten_pings, within=20)  # ten idle periods: ten PINGs, each answered
        assert await redis_storage.send_command("w1", "two") == 1
        assert await listener.next() == "two"
    assert caplog.records == []  # never thought the link dead


async def test_a_frozen_redis_is_noticed_by_ping(
    own_redis_server: RedisServer,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A link that goes silent without a reset (SIGSTOP: no RST) is dropped and redialled."""
    monkeypatch.setattr("jobreactor.storage.wakeups._COMMANDS_IDLE_S", 0.05)
    caplog.set_level(logging.WARNING, logger="jobreactor.storage.redis")
    store = RedisStorage(own_redis_server.url, prefix=prefix, socket_timeout=0.5)
    assert own_redis_server.proc is not None
    pid = own_redis_server.proc.pid
    try:
        async with listening(store, "w1", resync=True) as listener:
            await until_subscribed(store, "w1", "before")
            assert await listener.next() == "before"
            os.kill(pid, signal.SIGSTOP)
            try:

                async def noticed() -> bool:
                    return any("no answer to PING" in r.getMessage() for r in caplog.records)

                await eventually(noticed, 5)
            finally:
                os.kill(pid, signal.SIGCONT)
            # Resubscribed (RESYNC) first: until then a PUBLISH may count the dead link's
            # subscription, which the thawed server has not dropped yet, and be lost as the
            # docstring of `commands` says (what RESYNC is for).
            received = [await listener.next(within=30)]
            while received[-1] != RESYNC:
                received.append(await listener.next(within=30))
            await until_subscribed(store, "w1", "after")
            while received[-1] != "after":
                received.append(await listener.next())
    finally:
        await store.aclose()


# --- RedisMonitor.retry / stats -------------------------------------------------------------------


async def test_monitor_retry_resets_a_failed_job_and_wakes_its_node(
    redis_storage: RedisStorage, monitor: RedisMonitor
) -> None:
    failed = rec(
        "f1",
        JobStatus.FAILED,
        attempt=10,
        lease=7,
        run_at_ts=1.0,
        failed_at=1_700_000_000.5,
        last_error="RuntimeError: boom",
    )
    await redis_storage.save_many("w1", [failed, rec("ok", JobStatus.COMPLETE)])
    async with listening(redis_storage, "w1") as listener:
        await until_subscribed(redis_storage, "w1", "warm-up")
        assert await listener.next() == "warm-up"
        before = time.time()
        assert await asyncio.to_thread(monitor.retry, "f1")
        assert await listener.next() == "f1"
    job = await redis_storage.load("w1", "f1")
    assert job is not None
    assert job.status == JobStatus.NEW
    assert job.attempt == 0
    assert job.lease == 0
    assert before <= job.run_at_ts <= time.time()
    assert job.last_error == "RuntimeError: boom"  # history kept
    assert job.failed_at == 1_700_000_000.5
    assert job.args == {"i": "f1"}
    # It now counts as unfinished: a node that was down resumes it at start.
    assert [j.id for j in await redis_storage.jobs_for("w1", unfinished_only=True)] == ["f1"]


async def test_monitor_retry_takes_error_jobs_and_refuses_others(
    redis_storage: RedisStorage, monitor: RedisMonitor
) -> None:
    await redis_storage.save_many(
        "w1",
        [
            rec("e1", JobStatus.ERROR, attempt=2),
            rec("n1", JobStatus.NEW),
            rec("r1", JobStatus.IN_PROGRESS, attempt=1),
            rec("c1", JobStatus.COMPLETE),
            rec("x1", JobStatus.CANCELLED),
        ],
    )
    assert monitor.retry("e1")
    assert monitor.load("e1") is not None
    assert monitor.load("e1")["status"] == "new"  # type: ignore[index]
    for job_id in ("n1", "r1", "c1", "x1", "missing"):
        assert not monitor.retry(job_id), job_id
    assert monitor.load("r1")["status"] == "in progress"  # type: ignore[index]
    assert monitor.load("r1")["attempt"] == 1  # type: ignore[index]


async def test_monitor_stats_counts_by_status_per_node(
    redis_storage: RedisStorage, monitor: RedisMonitor
) -> None:
    assert monitor.stats() == {}
    await redis_storage.save_many(
        "w1",
        [
            rec("a", JobStatus.NEW),
            rec("b", JobStatus.NEW),
            rec("c", JobStatus.FAILED),
            rec("d", JobStatus.IN_PROGRESS),
        ],
    )
    await redis_storage.save_many("w2", [rec("e", JobStatus.QUEUED)])
    await redis_storage.save_many("w3", [rec("f")])
    await redis_storage.destroy_many("w3", ["f"])  # emptied nodes are left out
    assert monitor.stats() == {
        "w1": {"failed": 1, "in progress": 1, "new": 2},
        "w2": {"queued": 1},
    }


async def test_monitor_stats_pages_through_big_nodes(
    redis_storage: RedisStorage, monitor: RedisMonitor
) -> None:
    jobs = [rec(f"j{i}", JobStatus.FAILED if i % 10 == 0 else JobStatus.NEW) for i in range(2500)]
    await redis_storage.save_many("big", jobs)
    assert monitor.stats() == {"big": {"failed": 250, "new": 2250}}
