"""/health says what is true now: storage reachable, loop answering, no job stuck too long,
no job waiting with no node allowed to run it (jobreactor/health.py)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest

from jobreactor import Reactor
from jobreactor.dashboard import create_app
from tests.conftest import make_test_reactor, wait_until
from tests.redis_server import RedisServer


def _health(reactor: Reactor) -> tuple[int, dict[str, Any]]:
    transport = httpx.ASGITransport(app=create_app(reactor))

    async def get() -> httpx.Response:
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.get("/health")

    answer = asyncio.run(get())
    return answer.status_code, answer.json()


@pytest.mark.timeout(90)
def test_health_is_down_while_redis_is(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis").start()
    reactor = make_test_reactor()
    try:
        reactor.start_distributor("127.0.0.1", 0, storage="redis", redis_url=server.url)
        code, body = _health(reactor)
        assert (code, body["status"]) == (200, "ok"), body
        assert body["checks"]["storage"] == {"ok": True, "kinds": ["redis"]}
        server.kill()
        code, body = _health(reactor)
        assert (code, body["status"]) == (503, "down"), body
        assert not body["checks"]["storage"]["ok"]
        assert "redis" in body["checks"]["storage"]["error"]
    finally:
        reactor.stop(timeout=10)
        server.stop()


@pytest.mark.timeout(60)
def test_health_degraded_and_one_warning_when_no_node_may_run_a_job(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reactor = make_test_reactor(warn_no_node_after=0.3)
    caplog.set_level(logging.WARNING, logger="jobreactor.distributor")
    try:
        reactor.start_distributor("127.0.0.1", 0)
        assert _health(reactor)[0] == 200
        for i in range(3):
            reactor.enqueue("nobody_runs_this", {"i": i})

        def degraded() -> bool:
            return bool(_health(reactor)[1]["status"] == "degraded")

        wait_until(degraded, 20, "/health to say degraded")
        code, body = _health(reactor)
        assert code == 503
        stuck = body["checks"]["no_eligible_node"]
        assert (stuck["ok"], stuck["jobs"]) == (False, 3)
        assert body["checks"]["storage"]["ok"]
        assert body["checks"]["loop"]["ok"]

        def warned() -> list[str]:
            return [r.getMessage() for r in caplog.records if "no connected node" in r.message]

        wait_until(lambda: bool(warned()), 20, "the no-node warning")
        # later checks find the same names stuck: no second line
        checks = reactor.distributor.backlog_watch
        for _ in range(3):
            reactor.call(_run_check(checks), timeout=10)
        assert len(warned()) == 1
        assert "start a node that defines these job names" in warned()[0]
    finally:
        reactor.stop(timeout=10)


def _run_check(watch: Any) -> Any:
    async def check() -> None:
        watch.close()
        watch._check()

    return check


@pytest.mark.timeout(60)
def test_health_degraded_when_the_oldest_pending_job_is_too_old() -> None:
    reactor = make_test_reactor(health_max_pending_age=0.2, warn_no_node_after=0)
    try:
        reactor.start_distributor("127.0.0.1", 0)
        reactor.enqueue("waits_long", {})

        def degraded() -> bool:
            return bool(_health(reactor)[1]["status"] == "degraded")

        wait_until(degraded, 20, "/health to say degraded")
        body = _health(reactor)[1]
        assert not body["checks"]["oldest_pending"]["ok"]
        assert body["checks"]["no_eligible_node"]["ok"]  # warn_no_node_after = 0: off
    finally:
        reactor.stop(timeout=10)


@pytest.mark.timeout(60)
def test_registry_dashboard_health_follows_the_registry(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "registry").start()
    app = create_app(discovery_url=server.url, group="health")
    transport = httpx.ASGITransport(app=app)

    async def get() -> httpx.Response:
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.get("/health")

    try:
        ok = asyncio.run(get())
        assert (ok.status_code, ok.json()["status"]) == (200, "ok")
        server.kill()
        down = asyncio.run(get())
        assert (down.status_code, down.json()["status"]) == (503, "down")
        assert "registry" in down.json()["checks"]["storage"]["error"]
    finally:
        server.stop()
