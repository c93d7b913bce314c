"""gunicorn reloads (HUP), a worker killed (kill -9), the web tier scaled (TTIN/TTOU), while
requests enqueue jobs. Real gunicorn, real nodes found by discovery, real Redis."""

from __future__ import annotations

import re
import signal
from collections import Counter
from collections.abc import Callable
from functools import partial

import pytest

from tests.conftest import wait_until
from tests.web.load import Load
from tests.web.servers import WebNode, WebServer, read_jsonl, request_all, wait_linked
from tests.web.test_gunicorn import GUNICORN
from tests.web.test_recycle_handover import check_feedbacks

pytestmark = pytest.mark.timeout(120)


def test_reload_while_jobs_flow_loses_nothing(
    web: Callable[..., WebServer], nodes: Callable[..., list[WebNode]]
) -> None:
    # Redis storage: the old workers hand their jobs over (issue 17), nothing is lost.
    server = web(*GUNICORN, "-w", "2", "flask_app:app", storage="redis")
    old = server.wait_workers(2)
    started = nodes(2, server.out)
    wait_linked(started, server.addresses().values())
    load = Load(server.url)
    wait_until(lambda: load.count() >= 100, 30, "requests before the reload")
    server.signal(signal.SIGHUP)  # new workers first, then the old ones stop gracefully
    wait_until(lambda: not (server.workers() & old) and server.has_workers(2), 60, "reload")
    new = server.wait_workers(2)
    wait_until(lambda: load.pids() & new != set(), 30, "requests served by new workers")
    answers = load.stop()
    assert load.failed == []
    assert old <= load.pids()
    check_feedbacks("redis", server, started, answers)
    assert server.stop() == 0, server.log_text()[-4000:]


def test_scale_two_to_four_and_back_while_jobs_flow(
    web: Callable[..., WebServer], nodes: Callable[..., list[WebNode]]
) -> None:
    server = web(*GUNICORN, "-w", "2", "flask_app:app")
    first = server.wait_workers(2)
    started = nodes(2, server.out)  # memory storage: a stopping worker hands nothing over
    wait_linked(started, server.addresses().values())
    load = Load(server.url)
    for count in (3, 4):  # one at a time: gunicorn may merge signals sent together
        server.signal(signal.SIGTTIN)
        server.wait_workers(count)
    added = server.workers() - first
    # The nodes dial the new workers with no change to their config: their jobs run.
    wait_until(lambda: added <= load.pids(), 30, "requests served by the new workers")
    for count in (3, 2):  # gunicorn stops the oldest worker each time
        server.signal(signal.SIGTTOU)
        wait_until(partial(server.has_workers, count), 60, f"{count} workers")
    gone = {address for pid, address in server.addresses().items() if pid in first}
    assert server.workers() == added
    answers = load.stop()
    assert load.failed == []
    # Each feedback fires once, at home, or its loss is named in a WARNING (issue 17).
    check_feedbacks("memory", server, started, answers)
    for node in started:  # every node retired the gone workers' links: no more dialling
        for address in gone:
            retired = f"distributor {address} left; no more dialling it"
            node.wait_logged(retired, 15)
            last = [line for line in node.log_text().splitlines() if address in line][-1]
            assert retired in last
    assert server.stop() == 0, server.log_text()[-4000:]


def test_kill_9_of_a_redis_backed_worker_its_jobs_are_adopted(
    web: Callable[..., WebServer], nodes: Callable[..., list[WebNode]]
) -> None:
    server = web(*GUNICORN, "-w", "3", "flask_app:app", storage="redis", node_grace=3.0)
    server.wait_workers(3)
    wait_linked(nodes(2, server.out, prefetch=0, concurrency=4), server.addresses().values())
    # 300 jobs of 50 ms on 8 slots: many are still waiting or running when a worker dies.
    answers, failed = request_all(server.url, range(300), path="/enqueue/{n}?s=0.05")
    assert failed == []
    victim = Counter(answer["pid"] for answer in answers.values()).most_common(1)[0][0]
    fed_before = {row["n"] for row in read_jsonl(server.out / "feedback.jsonl")}
    server.kill_worker(victim)
    theirs = {n for n, answer in answers.items() if answer["pid"] == victim}
    assert theirs - fed_before, "the victim's jobs were all done before the kill"
    more, failed = request_all(server.url, range(300, 400))
    assert failed == []
    answers |= more

    def fed() -> Counter[int]:
        return Counter(row["n"] for row in read_jsonl(server.out / "feedback.jsonl"))

    wait_until(lambda: set(fed()) >= set(answers), 60, "a feedback for every job")
    feedbacks = read_jsonl(server.out / "feedback.jsonl")
    fed_by_victim = {row["n"] for row in feedbacks if row["pid"] == victim}
    after = Counter(row["n"] for row in feedbacks if row["pid"] != victim)
    assert set(after.values()) == {1}  # named feedbacks fire once in the living
    adopted = {
        row["n"] for row in feedbacks if row["enqueued_by"] == victim and row["pid"] != victim
    }
    # Every job the victim had not fed back; also those it fed back but died before storing
    # their journal removal: their reports were not acknowledged, the adopter settles them.
    assert theirs - fed_by_victim <= adopted <= theirs
    runs = Counter(row["n"] for row in read_jsonl(server.out / "runs.jsonl"))
    assert set(runs) == set(answers)  # nothing enqueued is lost
    # Run twice only if the dead worker had taken the report but not cleared its journal.
    assert {n for n, count in runs.items() if count > 1} <= theirs
    assert server.stop() == 0, server.log_text()[-4000:]
    # No worker waited at its stop for an adopted job that would never report.
    stops = [float(x) for x in re.findall(r"jobreactor stopped in ([0-9.]+)s", server.log_text())]
    assert stops, server.log_text()[-4000:]
    assert max(stops) < 10, stops


def test_kill_9_of_a_memory_worker_loses_only_its_jobs_and_nothing_hangs(
    web: Callable[..., WebServer], nodes: Callable[..., list[WebNode]]
) -> None:
    server = web(*GUNICORN, "-w", "3", "flask_app:app")
    server.wait_workers(3)
    wait_linked(nodes(2, server.out, prefetch=0, concurrency=4), server.addresses().values())
    answers, failed = request_all(server.url, range(300), path="/enqueue/{n}?s=0.05")
    assert failed == []
    victim = Counter(answer["pid"] for answer in answers.values()).most_common(1)[0][0]
    server.kill_worker(victim)
    more, failed = request_all(server.url, range(300, 400))
    assert failed == []
    answers |= more
    survivors = {n: answer for n, answer in answers.items() if answer["pid"] != victim}
    # Every job of a living worker runs once and feeds back home; the victim's are the
    # documented loss (memory storage keeps nothing once its process is gone).
    wait_until(
        lambda: {row["n"] for row in read_jsonl(server.out / "feedback.jsonl")} >= set(survivors),
        60,
        "every survivor's feedback",
    )
    feedbacks = [row for row in read_jsonl(server.out / "feedback.jsonl") if row["n"] in survivors]
    assert all(row["pid"] == row["enqueued_by"] for row in feedbacks)
    assert Counter(row["n"] for row in feedbacks).most_common(1)[0][1] == 1
    assert server.stop() == 0, server.log_text()[-4000:]


def test_max_requests_recycles_workers_while_jobs_flow(
    web: Callable[..., WebServer], nodes: Callable[..., list[WebNode]]
) -> None:
    server = web(*GUNICORN, "-w", "2", "--max-requests", "100", "flask_app:app")
    first = server.wait_workers(2)
    started = nodes(2, server.out)
    wait_linked(started, server.addresses().values())
    answers, failed = request_all(server.url, range(600), threads=4)
    assert failed == []
    # Each worker stopped gracefully after 100 requests and a new one took its place; with
    # memory storage it hands nothing over: each feedback fires once at home, or its loss is
    # named in a WARNING (tests/web/test_recycle_handover.py has the long-job cases).
    assert len({answer["pid"] for answer in answers.values()} - first) >= 4
    check_feedbacks("memory", server, started, answers)
    assert server.stop() == 0, server.log_text()[-4000:]
