"""JR.attach: jobreactor on a loop the app already runs (SPEC 1.2, JR.wait_em_and_run)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from jobreactor import Reactor, Registry

pytestmark = pytest.mark.timeout(30)


async def test_attached_reactor_runs_jobs_on_the_apps_loop() -> None:
    reactor = Reactor(logger_method="WARNING", log_job_processing=False, shutdown_timeout=1.0)
    reactor.attach(asyncio.get_running_loop())
    assert reactor.ready()
    host, port = await reactor.astart_distributor("127.0.0.1", 0)
    registry = Registry()
    seen: list[str] = []

    @registry.job("where")
    def where(args: dict[str, Any]) -> None:
        seen.append(threading.current_thread().name)

    await reactor.astart_node("w", "memory", [(host, port)], registry=registry)
    handle = reactor.enqueue("where", {"x": 1})
    assert handle is not None
    assert await handle == {"x": 1}
    assert seen == [threading.current_thread().name]  # the app's own loop thread
    with pytest.raises(RuntimeError, match="astop"):
        reactor.stop()
    await reactor.astop()
    assert not reactor.ready()


def test_attach_from_another_thread_runs_setup_on_that_loop() -> None:
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()
    try:
        reactor = Reactor(logger_method="WARNING", shutdown_timeout=1.0)
        started = threading.Event()

        async def setup() -> None:
            await reactor.astart_distributor("127.0.0.1", 0)
            started.set()

        reactor.attach(loop, setup)
        assert started.wait(10)
        assert reactor.nodes() == []  # blocking calls work from this (non-loop) thread
        reactor.stop()
    finally:
        loop.call_soon_threadsafe(loop.stop)
        runner.join(5)
        loop.close()
