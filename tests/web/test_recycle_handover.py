"""Recycling web workers hand over instead of waiting (issue 17): `--max-requests` and HUP
with long jobs out on nodes. Redis storage: no feedback is lost (named feedbacks fire in the
adopter). Memory storage: every feedback that is lost is named in a WARNING line, by the
stopping worker or by the node that ran the job. Real gunicorn, real nodes, real Redis.
(How long requests take while workers recycle is measured by bench/recycle.py, not here.)
"""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_until
from tests.web.servers import WebNode, WebServer, read_jsonl, request_all, wait_linked
from tests.web.test_gunicorn import GUNICORN

pytestmark = pytest.mark.timeout(240)

STORAGES = pytest.mark.parametrize("storage", ["redis", "memory"])
# Registry timings a loaded 2-core box keeps (FAST's 0.8 s TTL expires live workers under
# this load): a released journal is adopted at once whatever adopt_grace says.
TIMINGS = {"registry_beat": 0.5, "registry_ttl": 4.0, "adopt_grace": 8.0}


def _lost_lines(server: WebServer, node_list: list[WebNode]) -> str:
    """Every line that says an outcome is lost, from the workers and the nodes."""
    texts = [server.log_text(), *(node.log_text() for node in node_list)]
    return "\n".join(
        line
        for text in texts
        for line in text.splitlines()
        if " is lost" in line  # handover.py, recovery.py, membership.py: WARNING lines
    )


def _fed(out: Path) -> Counter[int]:
    return Counter(row["n"] for row in read_jsonl(out / "feedback.jsonl"))


def check_feedbacks(
    storage: str, server: WebServer, node_list: list[WebNode], answers: dict[int, Any]
) -> None:
    """Redis: every job feeds back once. Memory: once, or its id is in a lost-outcome line."""
    if storage == "redis":
        wait_until(lambda: set(_fed(server.out)) >= set(answers), 120, "every feedback")
    else:

        def accounted() -> bool:
            fed, lost = _fed(server.out), _lost_lines(server, node_list)
            return all(n in fed or answers[n]["id"] in lost for n in answers)

        wait_until(accounted, 120, "every feedback, or a WARNING naming it")
    fed = _fed(server.out)
    assert set(fed.values()) <= {1}, "a feedback fired twice"
    if storage == "memory":  # nothing moves between processes: each fires where it was sent
        rows = read_jsonl(server.out / "feedback.jsonl")
        assert all(row["pid"] == row["enqueued_by"] for row in rows)
    runs = Counter(row["n"] for row in read_jsonl(server.out / "runs.jsonl"))
    assert {n for n, count in runs.items() if count > 1} == set(), "a job ran twice"
    if storage == "redis":
        assert set(runs) >= set(answers)  # nothing enqueued is lost


@STORAGES
def test_max_requests_with_long_jobs_out_hands_over(
    web: Callable[..., WebServer], nodes: Callable[..., list[WebNode]], storage: str
) -> None:
    server = web(
        *GUNICORN, "-w", "4", "--max-requests", "200", "flask_app:app", storage=storage, **TIMINGS
    )
    first = server.wait_workers(4)
    node_list = nodes(2, server.out, concurrency=1000, **TIMINGS)
    wait_linked(node_list, server.addresses().values())
    answers, failed = request_all(server.url, range(1500), path="/enqueue/{n}?s=5")
    assert failed == []
    assert len({answer["pid"] for answer in answers.values()} - first) >= 4  # recycled
    check_feedbacks(storage, server, node_list, answers)
    assert server.stop() == 0, server.log_text()[-4000:]


@STORAGES
def test_hup_with_long_jobs_out_hands_over(
    web: Callable[..., WebServer], nodes: Callable[..., list[WebNode]], storage: str
) -> None:
    server = web(*GUNICORN, "-w", "2", "flask_app:app", storage=storage, **TIMINGS)
    old = server.wait_workers(2)
    node_list = nodes(2, server.out, concurrency=500, **TIMINGS)
    wait_linked(node_list, server.addresses().values())
    answers, failed = request_all(server.url, range(400), path="/enqueue/{n}?s=8")
    assert failed == []
    assert len(_fed(server.out)) < len(answers)  # jobs are out on nodes
    server.signal(signal.SIGHUP)  # new workers first, then the old ones stop gracefully
    wait_until(lambda: not (server.workers() & old) and server.has_workers(2), 60, "reload")
    check_feedbacks(storage, server, node_list, answers)
    assert server.stop() == 0, server.log_text()[-4000:]
