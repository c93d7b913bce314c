"""The discovery Redis goes away under a live site (issue 16): starting never fails for it.

gunicorn with the recipe (examples/web/gunicorn_hooks.py), memory storage, two nodes found by
discovery, requests flowing. Redis stops; gunicorn reloads (HUP) and recycles workers
(`--max-requests`) while it is away: every request is answered (no connection refused, the
master never exits), enqueues keep working, and once Redis is back the new workers register,
the nodes find them and their jobs run once and feed back home. uvicorn's lifespan likewise
starts with Redis away.
"""

from __future__ import annotations

import logging
import re
import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import wait_until
from tests.redis_server import RedisServer
from tests.web.load import Load
from tests.web.servers import WebNode, WebServer, read_jsonl, request_all, wait_linked
from tests.web.test_gunicorn import GUNICORN

pytestmark = pytest.mark.timeout(180)
logger = logging.getLogger(__name__)

UNREACHABLE = "registers in group web once redis answers"


def ran_once_and_fed_home(out: Path, answers: dict[int, dict[str, object]], log: str = "") -> bool:
    """Every answered job ran once and fed back in its worker, or, if a worker recycled with it
    out (memory storage: nothing to hand over), was named lost at WARNING in `log`."""
    lost = set(LOST_ID.findall(log)) if log else set()
    runs = Counter(row["n"] for row in read_jsonl(out / "runs.jsonl") if row["n"] in answers)
    fed = [row for row in read_jsonl(out / "feedback.jsonl") if row["n"] in answers]
    fed_ns = {row["n"] for row in fed}
    if any(n not in fed_ns and answer["id"] not in lost for n, answer in answers.items()):
        return False
    assert {n for n, count in runs.items() if count != 1} == set()
    assert {n for n, a in answers.items() if a["id"] not in lost} <= set(runs)
    assert len(fed) == len(fed_ns)  # each feedback once
    assert all(row["pid"] == row["enqueued_by"] == answers[row["n"]]["pid"] for row in fed)
    return True


# Job ids in the WARNING lines of a recycling memory-storage worker (distributor/handover.py).
LOST_ID = re.compile(r"\b([0-9a-f]{16,})\(")


def test_gunicorn_reload_and_recycling_while_discovery_redis_is_down(
    web: Callable[..., WebServer], nodes: Callable[..., list[WebNode]], tmp_path: Path
) -> None:
    discovery = RedisServer(tmp_path / "discovery").start()
    try:
        urls = {"discovery_url": discovery.url, "hiredis_url": discovery.url}
        server = web(*GUNICORN, "-w", "2", "--max-requests", "80", "flask_app:app", **urls)
        old = server.wait_workers(2)
        made = nodes(2, server.out, **urls)
        wait_linked(made, server.addresses().values())
        load = Load(server.url)
        wait_until(lambda: load.count() >= 40, 30, "requests before the outage")
        discovery.stop()
        served = load.count()
        server.signal(signal.SIGHUP)  # new workers boot while Redis is away
        wait_until(lambda: not (server.workers() & old) and server.has_workers(2), 60, "reload")
        wait_until(lambda: load.count() >= served + 400, 90, "requests through recycling")
        assert server.proc.poll() is None, server.log_text()[-4000:]
        during = load.stop()
        assert load.failed == []  # no connection refused, no error: the site stayed up
        assert UNREACHABLE in server.log_text()
        booted = len(set(server.addresses()) - old)  # workers started during the outage
        discovery.start()  # same port, empty
        server.wait_workers(2)
        wait_linked_to_current(server, made)
        answers, failed = request_all(server.url, range(10**6, 10**6 + 150), threads=4)
        assert failed == []
        # --max-requests 80 keeps recycling the 2 workers through these 150 requests: a
        # recycling memory-storage worker loses the outcome of jobs still out after its 0.5 s
        # drain, and names each (issue 17). A loaded machine made that happen (the whole-suite
        # failure): the check takes the named losses as the contract says, nothing else.
        wait_until(
            lambda: ran_once_and_fed_home(server.out, answers, server.log_text()),
            60,
            "jobs after Redis",
        )
        logger.info(
            "outage: %d requests answered, %d workers booted meanwhile", len(during), booted
        )
        assert "Worker failed to boot" not in server.log_text()
        assert server.stop() == 0, server.log_text()[-4000:]
    finally:
        discovery.stop()


def wait_linked_to_current(server: WebServer, made: list[WebNode]) -> None:
    """Until every node works with every current worker (found once Redis is back)."""

    def linked() -> bool:
        addresses = server.addresses()
        current = [addresses.get(pid) for pid in server.workers()]
        return None not in current and all(
            f"ready to work with distributor {address}" in node.log_text()
            for node in made
            for address in current
        )

    wait_until(linked, 60, "the nodes to find the workers")


def test_uvicorn_starts_while_discovery_redis_is_down(
    web: Callable[..., WebServer], nodes: Callable[..., list[WebNode]], tmp_path: Path
) -> None:
    discovery = RedisServer(tmp_path / "discovery").start()
    discovery.stop()  # its port stays ours to start it on later
    try:
        urls = {"discovery_url": discovery.url, "hiredis_url": discovery.url}
        server = web(
            "uvicorn", "fastapi_app:app", "--workers", "2", "--port", "{port}",
            "--no-access-log", **urls,
        )  # fmt: skip
        server.wait_serving()
        answers, failed = request_all(server.url, range(100))
        assert failed == []  # accepted, waiting for a node
        assert "Application startup failed" not in server.log_text()
        discovery.start()
        nodes(1, server.out, **urls)
        wait_until(lambda: ran_once_and_fed_home(server.out, answers), 60, "jobs after Redis")
        assert server.stop() == 0, server.log_text()[-4000:]
    finally:
        discovery.stop()


def test_gunicorn_workers_with_redis_storage_boot_while_redis_is_down(
    web: Callable[..., WebServer], nodes: Callable[..., list[WebNode]], tmp_path: Path
) -> None:
    redis = RedisServer(tmp_path / "redis").start()
    redis.stop()  # down from the start: storage and discovery both
    try:
        urls = {"discovery_url": redis.url, "hiredis_url": redis.url, "redis_url": redis.url}
        server = web(*GUNICORN, "-w", "2", "flask_app:app", storage="redis", **urls)
        server.wait_workers(2)  # booted, distributors listening: the master did not exit
        assert "until its journal is read back" in server.log_text()
        refused, failed = request_all(server.url, range(-20, 0))
        assert (refused, sorted(failed)) == ({}, list(range(-20, 0)))  # told: no false 200
        redis.start()
        nodes(1, server.out, **urls)
        answers, failed = request_all(server.url, range(100))
        assert failed == []
        wait_until(lambda: ran_once_and_fed_home(server.out, answers), 60, "jobs after Redis")
        assert not [row for row in read_jsonl(server.out / "runs.jsonl") if row["n"] < 0]
        assert "Worker failed to boot" not in server.log_text()
        assert server.stop() == 0, server.log_text()[-4000:]
    finally:
        redis.stop()
