"""A job without feedbacks keeps its handle weakly: a dropped handle costs the app nothing."""

from __future__ import annotations

import asyncio
import gc
import threading
import weakref

import pytest

from jobreactor import Reactor
from jobreactor.distributor.outcomes import NOBODY, Waiting, awaited, waiting_of
from jobreactor.handle import JobHandle, WeakHandles
from tests.conftest import eventually, noop_registry, wait_until


def test_a_dropped_handle_leaves_nobody_in_the_table_and_a_kept_one_is_found() -> None:
    async def scenario() -> None:
        table: dict[str, object] = {}
        weak = WeakHandles(asyncio.get_running_loop(), table, NOBODY)
        kept = JobHandle("kept")
        table["kept"] = awaited(None, None, kept, weak)
        table["dropped"] = awaited(None, None, JobHandle("dropped"), weak)  # the app drops it
        table["callback"] = awaited(print, None, JobHandle("callback"), weak)
        gc.collect()
        await asyncio.sleep(0)  # the sweep runs on the loop
        assert table["dropped"] is NOBODY
        assert waiting_of(table["kept"]).handle is kept  # type: ignore[arg-type]
        assert type(table["kept"]) is weakref.ref
        callback = table["callback"]
        # Feedbacks: the handle is kept strongly and carries them (no separate record).
        assert isinstance(callback, JobHandle)
        assert waiting_of(callback) == Waiting(print, None, callback)
        assert awaited(print, None, None, weak) == Waiting(print, None, None)  # a read-back job
        assert waiting_of(NOBODY) == Waiting(None, None, None)

    asyncio.run(scenario())


def test_a_handle_dropped_on_another_thread_is_swept_on_the_loop() -> None:
    async def scenario() -> None:
        table: dict[str, object] = {}
        weak = WeakHandles(asyncio.get_running_loop(), table, NOBODY)
        handles = [JobHandle(f"j{i}") for i in range(100)]
        for i in range(100):
            table[f"j{i}"] = awaited(None, None, handles[i], weak)
        thread = threading.Thread(target=handles.clear)
        thread.start()
        thread.join(10)

        async def swept() -> bool:  # the sweeps run on this loop, while this polls
            return all(value is NOBODY for value in table.values())

        await eventually(swept, within=10)
        assert len(table) == 100  # still awaited: only what waits for them is gone

    asyncio.run(scenario())


def test_a_sweep_never_touches_a_job_that_was_resubmitted_or_finished() -> None:
    async def scenario() -> None:
        table: dict[str, object] = {}
        weak = WeakHandles(asyncio.get_running_loop(), table, NOBODY)
        table["a"] = awaited(None, None, JobHandle("a"), weak)
        del table["a"]  # finished before the sweep
        second = JobHandle("b")
        table["b"] = awaited(None, None, JobHandle("b"), weak)
        table["b"] = awaited(None, None, second, weak)  # resubmitted with a live handle
        gc.collect()
        await asyncio.sleep(0)
        assert "a" not in table
        assert waiting_of(table["b"]).handle is second  # type: ignore[arg-type]

    asyncio.run(scenario())


@pytest.mark.timeout(60)
def test_a_job_whose_handle_was_dropped_still_runs_and_settles(reactor: Reactor) -> None:
    host, port = reactor.distributor.address.rsplit(":", 1)
    reactor.start_node("w1", "memory", [(host, int(port))], registry=noop_registry())
    reactor.wait_for_node("w1")
    for i in range(50):
        reactor.enqueue("noop", {"i": i}, {"after": 0.2})  # handles dropped at once
    kept = reactor.enqueue("noop", {"i": 50}, {"after": 0.2})
    assert kept is not None
    waiting = reactor.distributor.outcomes.waiting
    wait_until(lambda: sum(value is NOBODY for value in list(waiting.values())) == 50, 10, "swept")
    kept.result(timeout=30)
    reactor.wait_idle(30)
    assert not waiting
