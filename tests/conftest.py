"""Fixtures: real reactors on real sockets (port 0), in-process and CLI nodes."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jobreactor import Reactor, Registry
from tests.redis_server import (  # noqa: F401
    any_redis_url,
    own_redis_server,
    redis_cluster,
    redis_server,
)


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM (a graceful stop), then SIGKILL if it takes over 10 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def make_test_reactor(**config: Any) -> Reactor:
    """A running reactor with the suite's settings (SPEC 1.18: fast retries, quiet logs)."""
    settings: dict[str, Any] = {
        "retry_multiplier": 0,
        "max_attempt": 3,
        "logger_method": "WARNING",
        "log_job_processing": False,
        "shutdown_timeout": 2.0,
        "reconnect_interval": 0.05,
    }
    reactor = Reactor(**{**settings, **config})
    reactor.run()
    return reactor


@pytest.fixture
def reactor() -> Iterator[Reactor]:
    """A running reactor with a distributor on 127.0.0.1:<free port>; fast retries (SPEC 1.18)."""
    r = make_test_reactor(max_attempt=5)
    r.start_distributor("127.0.0.1", 0)
    yield r
    r.stop(timeout=15)


@pytest.fixture
def reactors() -> Iterator[Any]:
    made: list[Reactor] = []

    def make(**config: Any) -> Reactor:
        reactor = make_test_reactor(**config)
        made.append(reactor)
        return reactor

    yield make
    for reactor in made:
        reactor.stop(timeout=15)


@pytest.fixture
def address(reactor: Reactor) -> tuple[str, int]:
    return ("127.0.0.1", reactor.distributor.address_port())


class Recorder:
    """Thread-safe list of observations with a wait-for-count (no sleeping in tests)."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._cond = threading.Condition()

    def __call__(self, item: Any) -> None:
        with self._cond:
            self.items.append(item)
            self._cond.notify_all()

    def wait(self, count: int, timeout: float = 10.0) -> list[Any]:
        with self._cond:
            ok = self._cond.wait_for(lambda: len(self.items) >= count, timeout)
            assert ok, f"waited {timeout}s for {count} items, got {len(self.items)}"
            return list(self.items)

    def __len__(self) -> int:
        with self._cond:
            return len(self.items)


@pytest.fixture
def recorder() -> Callable[[], Recorder]:
    return Recorder


def in_flight(reactor: Reactor, name: str) -> int:
    """Jobs the distributor has out on node `name` (-1: not connected)."""
    for node in reactor.nodes():
        if node["name"] == name:
            return int(node["in_flight"])
    return -1


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 5.0) -> None:
    """Poll `check` every 20 ms until true; fail after `within` seconds (for async tests)."""
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, f"condition still false after {within}s"
        await asyncio.sleep(0.02)


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "it") -> None:
    """Poll state nothing can notify us of (another process, Redis, a file), bounded."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.05)


NODE_JOBS = textwrap.dedent(
    """
    import json, os, time
    from jobreactor import job, job_errback

    def _record(args, what):
        with open(args["out"], "a") as f:
            f.write(json.dumps({"what": what, "i": args.get("i"), "node": os.environ.get("NODE"),
                                "t": time.time()}) + "\\n")

    @job("simple")
    def simple(args):
        _record(args, "simple")
        args["result"] = "ok"

    @job("fail")
    def fail(args):
        _record(args, "fail")
        raise RuntimeError("always")

    @job_errback("fail")
    def fail_eb(args):
        args["seen_error"] = args["error"].__class__.__name__

    @job("span")
    async def span(args):
        import asyncio
        start = time.time()
        await asyncio.sleep(args.get("s", 0.02))
        with open(args["out"], "a") as f:
            f.write(json.dumps({"what": "span", "i": args["i"], "node": os.environ.get("NODE"),
                                "start": start, "end": time.time()}) + "\\n")

    @job("part")
    def part(args):
        pass

    @job("slow")
    async def slow(args):
        import asyncio
        await asyncio.sleep(args.get("s", 0.2))
        _record(args, "slow")
    """
)


class CliNode:
    """`python -m jobreactor node --config node.toml` as a real subprocess."""

    def __init__(
        self,
        tmp: Path,
        name: str,
        address: tuple[str, int],
        storage: str = "memory",
        distributors_override: list[str] | None = None,
        wrap: tuple[str, ...] = (),
        **settings: Any,
    ) -> None:
        jobs = tmp / "cli_jobs"
        jobs.mkdir(exist_ok=True)
        (jobs / "jobs.py").write_text(NODE_JOBS)
        lines = [
            f'name = "{name}"',
            f'storage = "{storage}"',
            "distributors = "
            + (
                json.dumps(distributors_override)
                if distributors_override
                else f'[["{address[0]}", {address[1]}]]'
            ),
            f'job_directory = "{jobs}"',
            "retry_multiplier = 0",
            "max_attempt = 3",
            "reconnect_interval = 0.1",
            "shutdown_timeout = 5.0",
            'logger_method = "INFO"',
            "log_job_processing = false",
        ]
        lines = [line for line in lines if line.split(" = ")[0] not in settings]  # they win
        lines += [f"{k} = {v!r}".replace("'", '"') for k, v in settings.items()]
        stem, copy = name, 0
        while (tmp / f"{stem}.toml").exists():  # namesakes (issue 10) get files of their own
            copy += 1
            stem = f"{name}-{copy}"
        self.config = tmp / f"{stem}.toml"
        self.config.write_text("\n".join(lines) + "\n")
        self.log = tmp / f"{stem}.log"
        env = {**os.environ, "NODE": name}
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                # `wrap`: e.g. ("ip", "netns", "exec", name) to run it in a network namespace
                [*wrap, sys.executable, "-m", "jobreactor", "node", "--config", str(self.config)],
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=env,
            )

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 20.0) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        stop_process(self.proc)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def cli_node(tmp_path: Path) -> Iterator[Callable[..., CliNode]]:
    started: list[CliNode] = []

    def start(name: str, address: tuple[str, int], **settings: Any) -> CliNode:
        node = CliNode(tmp_path, name, address, **settings)
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()


def make_registry() -> Registry:
    return Registry()


def noop_registry() -> Registry:
    """A fresh registry with one job, "noop", that does nothing."""
    made = Registry()

    @made.job("noop")
    def noop(args: dict[str, Any]) -> None:
        pass

    return made


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Collect garbage before each Hypothesis test. Objects left over by earlier tests
    (asyncio Redis clients of the discovery tests) have finalizers that draw from `random`.
    Run inside a Hypothesis strategy, they fail it with "Do not use the random module inside
    strategies"."""
    if getattr(getattr(item, "obj", None), "is_hypothesis_test", False):
        gc.collect()
