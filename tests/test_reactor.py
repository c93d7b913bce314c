"""The thread boundary: app threads on one side, the reactor's loop on the other."""

from __future__ import annotations

import asyncio
import re
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import jobreactor
from jobreactor import JobFailed, Reactor, ReactorClosed, Registry
from jobreactor.node import Node
from tests.conftest import Recorder

pytestmark = pytest.mark.timeout(60)

DESIGN = Path("/work/shared/DESIGN.md")
PINNED = ["JR", "Reactor", "job", "job_callback", "job_errback", "CancelJob", "NoSuchJob"]


def start(reactor: Reactor, registry: Registry, name: str = "w1") -> Node:
    return reactor.start_node(
        name, "memory", [("127.0.0.1", reactor.distributor.address_port())], registry=registry
    )._node


def test_enqueue_from_eight_threads_runs_every_job_exactly_once(reactor: Reactor) -> None:
    threads_n, per_thread = 8, 1000
    registry, runs = Registry(), Recorder()
    registry.job("count")(lambda args: runs((args["t"], args["i"])))
    start(reactor, registry)
    barrier = threading.Barrier(threads_n)
    handles: list[list[Any]] = [[] for _ in range(threads_n)]
    errors: list[BaseException] = []

    def produce(t: int) -> None:
        try:
            barrier.wait(10)
            handles[t] = [reactor.enqueue("count", {"t": t, "i": i}) for i in range(per_thread)]
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=produce, args=(t,)) for t in range(threads_n)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
    assert not any(w.is_alive() for w in workers)
    assert errors == []
    for per in handles:
        assert len(per) == per_thread
        for h in per:
            h.result(30)
    seen = runs.wait(threads_n * per_thread, timeout=30)
    counts = Counter(seen)
    assert len(counts) == threads_n * per_thread
    assert set(counts.values()) == {1}  # none lost, none twice
    assert len(seen) == threads_n * per_thread
    assert len({h.id for per in handles for h in per}) == threads_n * per_thread


def test_run_twice_is_harmless() -> None:
    r = Reactor(logger_method="WARNING")
    try:
        r.run()
        r.run()
        assert r.ready()
        calls = Recorder()
        r.run(lambda: calls("setup"))  # already running: just the setup
        assert calls.items == ["setup"]
        _host, port = r.start_distributor("127.0.0.1", 0)
        assert port > 0
    finally:
        r.stop()
    assert not r.ready()


def test_stop_twice_is_harmless_and_stop_before_run_too() -> None:
    r = Reactor(logger_method="WARNING")
    r.stop()  # never started: nothing to do
    r.run()
    r.start_distributor("127.0.0.1", 0)
    r.stop()
    r.stop()
    assert not r.ready()
    with pytest.raises(ReactorClosed):
        r.enqueue("x", {})


def test_enqueue_before_run_or_distributor_raises_reactor_closed() -> None:
    r = Reactor(logger_method="WARNING")
    with pytest.raises(ReactorClosed):
        r.enqueue("x", {})
    r.run()
    try:
        with pytest.raises(ReactorClosed):
            r.enqueue("x", {})  # running, but no distributor yet
        r.start_distributor("127.0.0.1", 0)
        assert r.enqueue("x", {}) is not None
    finally:
        r.stop(timeout=10)


def test_blocking_api_inside_a_feedback_raises_naming_the_async_variant(
    reactor: Reactor,
) -> None:
    registry = Registry()
    registry.job("simple")(lambda args: None)
    start(reactor, registry)
    captured = Recorder()

    def feedback(args: dict[str, Any]) -> None:
        try:
            reactor.start_node("w2", "memory", [("127.0.0.1", 1)], registry=registry)
        except BaseException as exc:
            captured(exc)
        else:
            captured(None)

    h = reactor.enqueue("simple", {}, success=feedback)
    assert h is not None
    h.result(10)
    (exc,) = captured.wait(1)
    assert isinstance(exc, RuntimeError)
    assert "astart_node" in str(exc)
    # The loop is still fine afterwards.
    h2 = reactor.enqueue("simple", {"n": 2})
    assert h2 is not None
    assert h2.result(10) == {"n": 2}


def test_await_handle_inside_a_coroutine_on_the_loop(reactor: Reactor) -> None:
    registry = Registry()

    @registry.job("double")
    def double(args: dict[str, Any]) -> None:
        args["out"] = args["x"] * 2

    @registry.job("fail")
    def fail(args: dict[str, Any]) -> None:
        raise RuntimeError("no")

    start(reactor, registry)

    async def use_handles() -> tuple[dict[str, Any], str]:
        h = reactor.enqueue("double", {"x": 21})
        bad = reactor.enqueue("fail", {}, {"max_attempt": 1})
        assert h is not None
        assert bad is not None
        async with asyncio.timeout(10):
            result = await h
            again = await h  # a resolved handle can be awaited again
            assert again == result
            try:
                await bad
            except JobFailed as exc:
                return result, exc.args_dict["error"]["class"]
        raise AssertionError("the failing job did not raise")

    result, error_class = reactor.call(use_handles, timeout=20)
    assert result == {"x": 21, "out": 42}
    assert error_class == "RuntimeError"


def test_jr_is_a_reactor_and_all_has_the_pinned_names() -> None:
    assert isinstance(jobreactor.JR, Reactor)
    exported = set(jobreactor.__all__)
    assert set(PINNED) <= exported
    for name in jobreactor.__all__:
        assert hasattr(jobreactor, name), name


@pytest.mark.skipif(not DESIGN.exists(), reason="DESIGN.md not available here")
def test_all_covers_every_name_design_pins_that_exists() -> None:
    text = DESIGN.read_text()
    block = text.split("## Public API", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    (import_line,) = [line for line in block.splitlines() if line.startswith("from jobreactor")]
    names = [n.strip() for n in import_line.split("import", 1)[1].split(",")]
    assert names == PINNED
    # Names DESIGN mentions elsewhere in the section, if the package has them.
    section = text.split("## Public API", 1)[1].split("\n## ", 1)[0]
    for name in set(re.findall(r"`jobreactor\.([A-Za-z_]+)", section)):
        if hasattr(jobreactor, name):
            assert name in jobreactor.__all__, name
