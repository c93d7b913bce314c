"""Graceful stop (issue 3, practice 7): nodes drain within `shutdown_timeout`, then cancel;
a second signal stops at once; `JR.stop()` drops what no node will run, and says so."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from jobreactor import JobCancelled, Reactor, Registry
from jobreactor.node import Node
from tests.conftest import Recorder, wait_until

pytestmark = pytest.mark.timeout(60)


def start(reactor: Reactor, registry: Registry, name: str = "w1", **kw: Any) -> Node:
    return reactor.start_node(
        name,
        "memory",
        [("127.0.0.1", reactor.distributor.address_port())],
        registry=registry,
        **kw,
    )._node


def stop_node(reactor: Reactor, node: Node) -> float:
    """Stop `node` on the loop; return how long it took."""
    began = time.monotonic()
    reactor.call(node.stop, timeout=30)
    return time.monotonic() - began


# --- in-process nodes ------------------------------------------------------------------------


def test_stop_lets_a_running_async_job_finish(reactor: Reactor) -> None:
    registry, started, finished = Registry(), Recorder(), Recorder()
    release = threading.Event()

    @registry.job("slow")
    async def slow(args: dict[str, Any]) -> None:
        started(1)
        assert await asyncio.to_thread(release.wait, 30)  # runs until the test releases it
        args["done"] = True
        finished(1)

    node = start(reactor, registry)
    h = reactor.enqueue("slow", {})
    assert h is not None
    started.wait(1)
    with ThreadPoolExecutor(1) as pool:
        stopping = pool.submit(lambda: (stop_node(reactor, node), len(finished)))
        wait_until(lambda: node.stopping, 10, "the node to begin stopping")
        assert not stopping.done()  # it waits for the running job...
        release.set()  # ...which ends now, mid-stop
        took, finished_when_stopped = stopping.result(30)
    assert finished_when_stopped == 1  # finished inside stop(), not cut short
    assert took < 5.0  # shutdown_timeout is 2 s in the fixture
    assert h.result(5) == {"done": True}  # its report went out before the node closed


def test_stop_hands_unstarted_jobs_back_to_another_node(reactor: Reactor) -> None:
    registry1, started, where = Registry(), Recorder(), Recorder()
    release = threading.Event()

    @registry1.job("slow")
    async def slow(args: dict[str, Any]) -> None:
        started(1)
        assert await asyncio.to_thread(release.wait, 30)  # holds w1's slot until released

    registry1.job("quick")(lambda args: where(("w1", args["i"])))
    w1 = start(reactor, registry1, concurrency=1)  # one running slot: quick jobs wait
    slow_handle = reactor.enqueue("slow", {})
    quick = [reactor.enqueue("quick", {"i": i}) for i in range(3)]
    started.wait(1)
    registry2 = Registry()
    registry2.job("quick")(lambda args: where(("w2", args["i"])))
    start(reactor, registry2, "w2")
    with ThreadPoolExecutor(1) as pool:
        stopping = pool.submit(stop_node, reactor, w1)
        where.wait(3)  # handed back and run on w2 while slow still holds w1's slot
        release.set()
        stopping.result(60)
    assert slow_handle is not None
    slow_handle.result(5)
    for h in quick:
        assert h is not None
        h.result(10)
    assert sorted(where.items) == [("w2", 0), ("w2", 1), ("w2", 2)]  # each once, none on w1


def test_a_job_over_shutdown_timeout_is_cancelled(reactor: Reactor) -> None:
    reactor.config.update(shutdown_timeout=0.3)
    registry, started, outcome = Registry(), Recorder(), Recorder()

    @registry.job("stuck")
    async def stuck(args: dict[str, Any]) -> None:
        started(1)
        try:
            await asyncio.Event().wait()  # runs until cancelled
        except asyncio.CancelledError:
            outcome("cancelled")
            raise
        outcome("finished")

    node = start(reactor, registry)
    h = reactor.enqueue("stuck", {})
    assert h is not None
    started.wait(1)
    took = stop_node(reactor, node)
    assert 0.25 <= took < 4.0
    assert outcome.wait(1, timeout=5) == ["cancelled"]


# --- a CLI node and two signals ----------------------------------------------------------------

LONG_JOBS = textwrap.dedent(
    """
    import asyncio
    from jobreactor import job

    @job("long")
    async def long(args):
        reader, writer = await asyncio.open_connection("127.0.0.1", args["port"])
        writer.write(b"started\\n")
        await writer.drain()
        await asyncio.Event().wait()  # runs until the node gives up on it

    @job("mark")
    def mark(args):
        args["where"] = "cli"
    """
)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A socket the CLI's job dials when it starts: an event to wait on, not a file to poll."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        sock.settimeout(20)
        yield sock


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Any]:
    procs: list[subprocess.Popen[bytes]] = []

    def run(name: str, address: tuple[str, int], **settings: Any) -> subprocess.Popen[bytes]:
        jobs = tmp_path / "long_jobs"
        jobs.mkdir(exist_ok=True)
        (jobs / "jobs.py").write_text(LONG_JOBS)
        lines = [
            f'name = "{name}"',
            'storage = "memory"',
            f'distributors = [["{address[0]}", {address[1]}]]',
            f'job_directory = "{jobs}"',
            "reconnect_interval = 0.1",
            'logger_method = "INFO"',
            "log_job_processing = false",
            *(f"{key} = {value}" for key, value in settings.items()),
        ]
        config = tmp_path / f"{name}.toml"
        config.write_text("\n".join(lines) + "\n")
        with (tmp_path / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "jobreactor", "node", "--config", str(config)],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        procs.append(proc)
        return proc

    yield run
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.mark.timeout(90)
def test_second_sigterm_stops_a_cli_node_at_once(
    reactor: Reactor, address: tuple[str, int], spawn: Any, listener: socket.socket, tmp_path: Path
) -> None:
    proc = spawn("cli_long", address, concurrency=1, shutdown_timeout=60.0)
    reactor.wait_for_node("cli_long", timeout=30)
    long_handle = reactor.enqueue("long", {"port": listener.getsockname()[1]})
    mark_handle = reactor.enqueue("mark", {})  # waits behind `long`: one slot
    assert long_handle is not None
    assert mark_handle is not None
    conn, _ = listener.accept()
    with conn:
        (cli,) = reactor.nodes()
        assert cli["in_flight"] == 2  # both jobs sit on the CLI node
        # A second node, so the job handed back by the first SIGTERM shows us it was handled.
        registry = Registry()
        registry.job("mark")(lambda args: args.update(where="w2"))
        start(reactor, registry, "w2")
        proc.send_signal(signal.SIGTERM)
        assert mark_handle.result(20) == {"where": "w2"}  # the first signal was handled
        assert proc.poll() is None  # draining: `long` runs on (shutdown_timeout = 60 s)
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(15)
        except subprocess.TimeoutExpired:
            log = (tmp_path / "cli_long.log").read_text(errors="replace")
            pytest.fail(f"second SIGTERM did not stop the node within 15 s; log:\n{log}")
    assert time.monotonic() - began < 15
    assert code == 0


# --- the distributor side of JR.stop() ---------------------------------------------------------


def test_stop_drops_pending_jobs_logs_the_count_and_cancels_handles(
    caplog: pytest.LogCaptureFixture,
) -> None:
    r = Reactor(logger_method="WARNING", shutdown_timeout=1.0)
    r.run()
    try:
        r.start_distributor("127.0.0.1", 0)
        handles = [r.enqueue("nobody", {"i": i}) for i in range(7)]
    finally:
        with caplog.at_level(logging.WARNING, logger="jobreactor.distributor"):
            began = time.monotonic()
            r.stop()
            took = time.monotonic() - began
    assert took < 1.0 + 3.0
    assert not r.ready()
    messages = [rec.getMessage() for rec in caplog.records if rec.name == "jobreactor.distributor"]
    assert any("7 pending job(s) dropped" in m for m in messages), messages
    for h in handles:
        assert h is not None
        with pytest.raises(JobCancelled):
            h.result(5)


def test_stop_waits_for_a_connected_node_to_finish_then_returns() -> None:
    """With a node connected, JR.stop() lets the in-flight one-shot job finish first."""
    r = Reactor(logger_method="WARNING", shutdown_timeout=5.0, log_job_processing=False)
    r.run()
    registry, started = Registry(), Recorder()
    release = threading.Event()

    @registry.job("slow")
    async def slow(args: dict[str, Any]) -> None:
        started(1)
        assert await asyncio.to_thread(release.wait, 30)  # runs until the test releases it
        args["done"] = True

    try:
        r.start_distributor("127.0.0.1", 0)
        node = r.start_node(
            "w1", "memory", [("127.0.0.1", r.distributor.address_port())], registry=registry
        )._node
        h = r.enqueue("slow", {})
        assert h is not None
        started.wait(1)
        with ThreadPoolExecutor(1) as pool:
            began = time.monotonic()
            stopping = pool.submit(r.stop)
            wait_until(lambda: node.stopping, 10, "the node to begin stopping")
            assert not stopping.done()  # JR.stop() waits for the in-flight job...
            release.set()  # ...which ends now, mid-stop
            stopping.result(30)
            took = time.monotonic() - began
    finally:
        release.set()
        r.stop()
    assert h.result(1) == {"done": True}
    assert took < 5.0 + 3.0
