"""FastAPI + `await JR.aenqueue` with redis storage on the distributor (issue 16): a 200 means
the job is stored. Writes paused, then a worker killed: every job whose request got a 200
runs, once (the living worker adopts the dead one's journal). Redis down: every request gets
the error, none a false 200, and enqueues work again once Redis is back (no restart)."""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.conftest import wait_until
from tests.redis_server import RedisServer
from tests.web.load import Load
from tests.web.servers import WebNode, WebServer, read_jsonl

UVICORN = ("uvicorn", "fastapi_app:app", "--workers", "2", "--port", "{port}", "--no-access-log")


@pytest.fixture
def storage_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """The distributors' storage Redis, apart from the discovery one: stopped by the test."""
    server = RedisServer(tmp_path / "storage-redis").start()
    yield server
    server.stop()


def _wait_started(server: WebServer) -> None:
    def started() -> bool:
        return server.log_text().count("Application startup complete.") >= 2

    wait_until(started, 60, "both uvicorn workers to start")


@pytest.mark.timeout(180)
def test_writes_paused_then_a_worker_killed_every_200_runs_once(
    web: Callable[..., WebServer],
    nodes: Callable[..., list[WebNode]],
    storage_redis: RedisServer,
) -> None:
    server = web(*UVICORN, storage="redis", hiredis_url=storage_redis.url, node_grace=3.0)
    server.wait_serving()
    _wait_started(server)
    nodes(1, server.out, concurrency=4, prefetch=0)
    load = Load(server.url, path="/enqueue/{n}?s=0.02")
    wait_until(lambda: len(load.pids()) == 2 or load.count() >= 400, 60, "answers from workers")
    admin = redis.Redis.from_url(storage_redis.url)
    try:
        admin.execute_command("CLIENT", "PAUSE", "2000", "WRITE")
        victim = max(load.pids(), key=lambda pid: sum(
            1 for answer in list(load.answers.values()) if answer["pid"] == pid
        ))  # fmt: skip
        os.kill(victim, signal.SIGKILL)  # its jobs stored so far wait in its journal
        admin.execute_command("CLIENT", "UNPAUSE")
    finally:
        admin.close()
    settled = load.count()
    wait_until(lambda: load.count() >= settled + 100, 60, "answers after the kill")
    answers = load.stop()
    assert answers, "no request was answered"

    def runs() -> Counter[int]:
        return Counter(row["n"] for row in read_jsonl(server.out / "runs.jsonl"))

    wait_until(lambda: set(runs()) >= set(answers), 90, "every acknowledged job to run")
    assert {n for n, count in runs().items() if count > 1 and n in answers} == set()


@pytest.mark.timeout(120)
def test_with_redis_down_every_request_gets_the_error_and_none_a_false_200(
    web: Callable[..., WebServer],
    nodes: Callable[..., list[WebNode]],
    storage_redis: RedisServer,
) -> None:
    server = web(*UVICORN, storage="redis", hiredis_url=storage_redis.url, redis_timeout=1.0)
    server.wait_serving()
    _wait_started(server)  # both workers up before Redis goes (a failed startup is #16's
    nodes(1, server.out)  # other half: tests/web for the start hooks)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.get("/enqueue/0").status_code == 200
        storage_redis.stop()
        statuses = [client.get(f"/enqueue/{n}").status_code for n in range(1, 21)]
        assert statuses == [503] * 20  # 20 of 20 told (StorageUnavailable), none a false 200
        storage_redis.start()  # same port, empty
        wait_until(lambda: client.get("/enqueue/100").status_code == 200, 30, "a 200 again")
    wait_until(lambda: 100 in {row["n"] for row in read_jsonl(server.out / "runs.jsonl")}, 30)
    ran = {row["n"] for row in read_jsonl(server.out / "runs.jsonl")}
    assert ran & set(range(1, 21)) == set()  # none of the refused jobs ran
