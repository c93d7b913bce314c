"""Registry sums never go down: an app process that stops, and another that starts in its
place, leave the dashboard's counters where they were, then add up (real processes, real
Redis registry, the dashboard's own /metrics)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest

from jobreactor.dashboard import create_app
from tests.conftest import wait_until
from tests.redis_server import RedisServer, unique_prefix
from tests.test_metrics import samples

FAST = {"registry_beat": 0.2, "registry_ttl": 0.8, "adopt_grace": 1.5}

APP = textwrap.dedent(
    """
    import json, sys
    from jobreactor import Reactor, Registry

    settings = json.loads(sys.argv[1])
    registry = Registry()
    registry.job("work")(lambda args: None)
    reactor = Reactor(logger_method="WARNING", log_job_processing=False, **settings["config"])
    reactor.run()
    _, port = reactor.start_distributor(
        "127.0.0.1", 0, discovery_url=settings["url"], group="totals"
    )
    reactor.start_node("worker", "memory", [("127.0.0.1", port)], registry=registry)
    for handle in reactor.enqueue_many([("work", {"i": i}, None) for i in range(settings["n"])]):
        handle.result(20)
    print("ready", flush=True)
    sys.stdin.read()  # until the test closes our stdin
    reactor.stop(timeout=5)
    """
)


def _app(script: Path, url: str, config: dict[str, Any], n: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, str(script), json.dumps({"url": url, "config": config, "n": n})],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _stop(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    assert proc.stdout is not None
    proc.stdin.close()
    proc.wait(20)
    proc.stdout.close()


@pytest.mark.timeout(120)
def test_registry_sums_never_decrease_across_a_restart(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    prefix = unique_prefix()
    config: dict[str, Any] = {"redis_prefix": prefix, **FAST}
    app = create_app(discovery_url=redis_server.url, group="totals", redis_prefix=prefix)
    transport = httpx.ASGITransport(app=app)
    seen: list[float] = []

    def succeeded() -> float:
        import asyncio

        async def scrape() -> str:
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                return (await client.get("/metrics")).text

        got = samples(asyncio.run(scrape()))
        value = got.get(("jobreactor_jobs_succeeded_total", (("job_name", "work"),)), 0.0)
        seen.append(value)
        return value

    script = tmp_path / "app.py"
    script.write_text(APP)
    first = _app(script, redis_server.url, config, 5)
    try:
        wait_until(lambda: succeeded() == 5, 30, "the first process's 5 successes")
    finally:
        _stop(first)
    source = app.state.dashboard.source

    def left() -> bool:
        return not source.snapshot()["distributors"]

    wait_until(left, 30, "the stopped process to leave the registry")
    for _ in range(5):  # gone from the registry: its totals stay in the sum
        assert succeeded() == 5
    second = _app(script, redis_server.url, config, 3)
    try:
        wait_until(lambda: succeeded() == 8, 30, "both processes' successes, 5 + 3")
    finally:
        _stop(second)
    assert succeeded() == 8
    assert seen == sorted(seen), seen
