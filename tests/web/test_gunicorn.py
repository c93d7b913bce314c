"""The gunicorn recipes (examples/web/gunicorn_hooks.py) under the real server, real nodes."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_until
from tests.web.servers import WebNode, WebServer, read_jsonl, request_all

STARTED_APP = "tests.web.started_app:app"
GUNICORN = ("gunicorn", "-c", "gunicorn_hooks.py", "-b", "127.0.0.1:{port}", "--no-control-socket")


def check_every_job_ran_once_and_fed_back_home(
    out: Path, answers: dict[int, dict[str, Any]], timeout: float = 30.0
) -> None:
    """Each answered request's job ran once; its feedback ran in the worker that enqueued it."""
    wait_until(lambda: len(read_jsonl(out / "feedback.jsonl")) >= len(answers), timeout, "feeds")
    runs = Counter(row["n"] for row in read_jsonl(out / "runs.jsonl"))
    assert {n for n, count in runs.items() if count != 1} == set()
    assert set(runs) == set(answers)
    feedbacks = read_jsonl(out / "feedback.jsonl")
    assert sorted(row["n"] for row in feedbacks) == sorted(answers)
    assert all(row["pid"] == row["enqueued_by"] == answers[row["n"]]["pid"] for row in feedbacks)


def every_worker_serves_and_feeds_home(
    server: WebServer,
    nodes: Callable[..., list[WebNode]],
    *,
    workers: int,
    node_count: int,
    requests: int,
) -> None:
    """`requests` requests are answered by all `workers` workers, each job runs once and feeds
    back home; then the server stops cleanly."""
    pids = server.wait_workers(workers)
    nodes(node_count, server.out)
    answers, failed = request_all(server.url, range(requests))
    assert failed == []
    assert {answer["pid"] for answer in answers.values()} == pids
    check_every_job_ran_once_and_fed_back_home(server.out, answers)
    assert server.stop() == 0, server.log_text()[-4000:]
    ids = [answer["id"] for answer in answers.values()]
    assert len(set(ids)) == len(ids)


@pytest.mark.timeout(120)
def test_preload_four_workers_2000_requests(
    web: Callable[..., WebServer], nodes: Callable[..., list[WebNode]]
) -> None:
    server = web(*GUNICORN, "-w", "4", "--preload", "flask_app:app")
    every_worker_serves_and_feeds_home(server, nodes, workers=4, node_count=2, requests=2000)
    assert "Traceback" not in server.log_text()


@pytest.mark.parametrize("app", ["flask_app:app", "djangosite.wsgi"], ids=["flask", "django"])
def test_gthread_workers_without_preload(
    web: Callable[..., WebServer], nodes: Callable[..., list[WebNode]], app: str
) -> None:
    server = web(*GUNICORN, "-w", "2", "-k", "gthread", "--threads", "4", app)
    every_worker_serves_and_feeds_home(server, nodes, workers=2, node_count=1, requests=300)


def test_a_reactor_started_in_the_master_fails_loudly_in_workers(
    web: Callable[..., WebServer],
) -> None:
    no_hooks = ("-c", "/dev/null")
    server = web(*GUNICORN[:1], *no_hooks, *GUNICORN[3:], "-w", "2", "--preload", STARTED_APP)
    server.wait_serving()
    answers, failed = request_all(server.url, range(20), path="/enqueue", threads=4)
    assert failed == []
    for answer in answers.values():
        assert answer["raised"] == "ReactorForkedError"
        assert answer["s"] < 0.5  # at once, no 30 s wait
        assert f"started in process {server.pid}" in answer["message"]
        assert "started_app.py" in answer["message"]
    assert server.stop() == 0, server.log_text()[-4000:]
    assert "was sent" not in server.log_text()  # gunicorn's word for a worker killed by a signal
