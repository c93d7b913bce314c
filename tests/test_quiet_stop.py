"""A clean stop logs no WARNING (issue 12).

The app's reactor (a distributor) stops while a node in another reactor stays up, as when a
web app is stopped or reloaded: every feedback has arrived, so the node has nothing to warn
about. It used to log "redialling, 1 report(s) kept for it": the distributor closed the
connection in the same loop turn as the last report, before its batched acknowledgement left.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from jobreactor import Registry
from jobreactor.node.handshake import Phase
from tests.conftest import Recorder, make_test_reactor, wait_until

pytestmark = pytest.mark.timeout(60)


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.levelno >= logging.WARNING and r.name.startswith("jobreactor")
    ]


def test_app_stop_with_every_feedback_in_logs_no_warning_on_either_side(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = make_test_reactor()
    workers = make_test_reactor()
    try:
        host, port = app.start_distributor("127.0.0.1", 0)
        registry, started, release = Registry(), Recorder(), threading.Event()

        @registry.job("nap")
        async def nap(args: dict[str, Any]) -> None:
            started(args["i"])
            assert await asyncio.to_thread(release.wait, 30)  # in flight until released

        node = workers.start_node("w", "memory", [(host, port)], registry=registry)
        feedbacks = Recorder()
        for i in range(5):
            app.enqueue("nap", {"i": i}, success=feedbacks)
        started.wait(5)
        with ThreadPoolExecutor(1) as pool:
            # The app stops with all five in flight: it waits for them, then closes as the
            # last reports come in.
            stopping = pool.submit(app.stop, timeout=15)
            wait_until(lambda: app.distributor.status.closed, 10, "the app to begin stopping")
            release.set()
            stopping.result(30)
        assert len(feedbacks.wait(5)) == 5
        link = node._node.links[0]
        wait_until(lambda: link.handshake.phase is Phase.DOWN, 10, "the node to see the app go")
        assert link.unacked_reports == 0  # the acknowledgement left before the goodbye
    finally:
        workers.stop(timeout=15)
        app.stop(timeout=15)
    assert warnings_of(caplog) == []


def test_node_that_really_lost_reports_still_warns(caplog: pytest.LogCaptureFixture) -> None:
    """The warning stays for what deserves it: a link lost with reports not acknowledged."""
    app = make_test_reactor()
    workers = make_test_reactor()
    try:
        host, port = app.start_distributor("127.0.0.1", 0)
        registry = Registry()
        registry.job("echo")(lambda args: None)
        node = workers.start_node("w", "memory", [(host, port)], registry=registry)
        link = node._node.links[0]

        async def lose_with_a_report_pending() -> None:
            link.report("no-such-job", 1, "success", True, {})
            assert link.conn is not None
            link.conn.abort("cut for the test")

        workers.call(lose_with_a_report_pending)
        wait_until(lambda: bool(warnings_of(caplog)), 10, "the warning")
    finally:
        workers.stop(timeout=15)
        app.stop(timeout=15)
    assert any("1 report(s) kept" in line for line in warnings_of(caplog))


def test_one_reactor_with_distributor_and_node_stops_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reactor = make_test_reactor()
    try:
        reactor.start_distributor("127.0.0.1", 0)
        registry = Registry()
        registry.job("echo")(lambda args: None)
        reactor.start_node("w", "memory", None, registry=registry)
        handles: list[Any] = [reactor.enqueue("echo", {"i": i}) for i in range(5)]
        for handle in handles:
            handle.result(10)
    finally:
        reactor.stop(timeout=15)
    assert warnings_of(caplog) == []
