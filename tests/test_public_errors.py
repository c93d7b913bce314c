"""Every error path of the public API raises a `JobReactorError` (issue 20), keeping the builtin
as a second base where users catch one today (TimeoutError, TypeError, ValueError, KeyError,
RuntimeError)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from jobreactor import (
    ConfigError,
    InvalidArgs,
    InvalidOptions,
    JobReactorError,
    NodeHandle,
    Reactor,
    ReactorClosed,
    RedisMonitor,
    Registry,
)
from jobreactor.batch import Batch
from jobreactor.errors import ReactorRunning, UnknownConfigKey, WaitTimeout, WrongThread
from tests.conftest import make_test_reactor

pytestmark = pytest.mark.timeout(60)


def raises(kind: type[BaseException], builtin: type[BaseException] | None, call: Any) -> str:
    """`call()` raises `kind`, a JobReactorError (and `builtin`, if given); its message."""
    with pytest.raises(kind) as caught:
        call()
    assert isinstance(caught.value, JobReactorError)
    if builtin is not None:
        assert isinstance(caught.value, builtin)
    return str(caught.value)


@pytest.fixture
def idle() -> Reactor:
    """A reactor that was never started."""
    return Reactor(logger_method="WARNING")


def test_a_reactor_that_is_not_running_says_so(idle: Reactor) -> None:
    assert "JR.run()" in raises(ReactorClosed, None, lambda: idle.enqueue("j"))
    raises(ReactorClosed, None, lambda: idle.wait_idle(1))
    raises(ReactorClosed, None, lambda: idle.nodes())
    raises(ReactorClosed, None, lambda: idle.retry("some-id"))
    raises(ReactorClosed, None, lambda: idle.start_node("n", distributors=[("127.0.0.1", 1)]))
    raises(ReactorClosed, None, lambda: idle.distributor)


def test_config_errors(idle: Reactor) -> None:
    assert "not a setting" in raises(UnknownConfigKey, KeyError, lambda: idle.config["nope"])
    raises(ConfigError, ValueError, lambda: idle.config.update(logger_method="LOUD"))
    raises(ConfigError, ValueError, lambda: idle.config.update(registry_ttl=1, registry_beat=2))
    raises(ConfigError, ValueError, lambda: Reactor(max_attempt=0))


def test_options_args_and_feedbacks(reactor: Reactor) -> None:
    raises(InvalidArgs, TypeError, lambda: reactor.enqueue("j", [1, 2]))  # type: ignore[arg-type]
    raises(InvalidArgs, TypeError, lambda: reactor.enqueue("j", {"x": object()}))
    raises(InvalidOptions, ValueError, lambda: reactor.enqueue("j", {}, {"after": -1}))
    raises(InvalidOptions, ValueError, lambda: reactor.enqueue("j", {}, {"no_such": 1}))
    raises(InvalidOptions, ValueError, lambda: reactor.enqueue("j", {}, None, "unregistered"))
    raises(InvalidArgs, TypeError, lambda: reactor.register_feedback("f", 42))  # type: ignore[arg-type]
    raises(InvalidOptions, ValueError, lambda: reactor.enqueue_many([("j", {}, {"loner": True})]))


def test_batches(reactor: Reactor) -> None:
    raises(InvalidOptions, ValueError, lambda: reactor.batch(ttl=0))
    raises(InvalidArgs, TypeError, lambda: reactor.batch(ttl=1.5))  # type: ignore[arg-type]
    raises(InvalidOptions, ValueError, lambda: reactor.batch(token=""))
    raises(InvalidOptions, ValueError, lambda: Batch("t", redis_client=object(), store=object()))  # type: ignore[arg-type]


def test_waits_time_out_as_wait_timeout(reactor: Reactor) -> None:
    assert "ghost" in raises(
        WaitTimeout, TimeoutError, lambda: reactor.wait_for_node("ghost", timeout=0.2)
    )
    handle = reactor.enqueue("nobody_runs_this", {})  # no node: it stays pending
    assert handle is not None
    raises(WaitTimeout, TimeoutError, lambda: handle.result(timeout=0.1))
    assert "still queued" in raises(WaitTimeout, TimeoutError, lambda: reactor.wait_idle(0.2))

    async def on_another_loop() -> None:
        await reactor.await_idle(0.2)

    raises(WaitTimeout, TimeoutError, lambda: asyncio.run(on_another_loop()))
    assert reactor.cancel(handle.id)


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port nobody listens on (bound, never listening)."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield held.getsockname()[1]


@pytest.mark.timeout(90)
def test_a_node_no_distributor_welcomes_is_stopped_and_told(closed_port: int) -> None:
    reactor = make_test_reactor(handshake_timeout=1.0)
    try:
        message = raises(
            WaitTimeout,
            TimeoutError,
            lambda: reactor.start_node(
                "lonely", distributors=[("127.0.0.1", closed_port)], registry=Registry()
            ),
        )
        assert "lonely" in message
        assert reactor.members.nodes == []
        raises(InvalidOptions, ValueError, lambda: reactor.start_node("nowhere"))
        raises(ConfigError, ValueError, lambda: reactor.start_node("n", "redis", [("h", 1)]))
    finally:
        reactor.stop(timeout=15)


def test_calls_in_the_wrong_place(reactor: Reactor) -> None:
    async def blocking_call_on_the_loop() -> None:
        reactor.wait_for_node(timeout=0.1)

    assert "`a`-prefixed" in raises(
        WrongThread, RuntimeError, lambda: reactor.call(blocking_call_on_the_loop)
    )

    async def admission_on_the_loop() -> None:
        reactor.enqueue("j", {}, {"enqueue_id": "once"})

    assert "aenqueue" in raises(
        WrongThread, RuntimeError, lambda: reactor.call(admission_on_the_loop)
    )
    loop = asyncio.new_event_loop()
    try:
        raises(ReactorRunning, RuntimeError, lambda: reactor.attach(loop))
    finally:
        loop.close()


def test_tools_and_dashboard() -> None:
    monitor = RedisMonitor("redis://127.0.0.1:1/0")  # never connects: the op is checked first
    raises(InvalidOptions, ValueError, lambda: monitor.control("n1", "explode"))
    from jobreactor.dashboard import create_app

    raises(ConfigError, ValueError, lambda: create_app(token=""))


def test_start_node_returns_a_small_handle(reactor: Reactor, recorder: Callable[[], Any]) -> None:
    registry = Registry()
    registry.job("echo")(lambda args: None)
    node = reactor.start_node("h1", registry=registry)
    assert isinstance(node, NodeHandle)
    assert node.name == "h1"
    assert node.linked() == [reactor.distributor.address]
    done = recorder()
    reactor.enqueue("echo", {}, success=done)
    done.wait(1)
    assert node.held_count == 0
    assert node.running_count == 0
    assert node.stats()["name"] == "h1"
    assert "h1" in repr(node)
    node.stop(grace=1)
    assert node.stats()["distributors"] == []
    public = [name for name in dir(NodeHandle) if not name.startswith("_")]
    assert len(public) <= 12, public
