"""Durable or told across a distributor's kill -9 (issue 16): the keys a journaled job holds
are released by the restarted distributor, and no job of an interrupted `enqueue_many` runs
twice. The distributor runs in its own process (tests/durable_app.py); the node stays up."""

from __future__ import annotations

import collections
import json
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import CliNode, wait_until
from tests.redis_server import RedisServer, unique_prefix

App = Callable[..., subprocess.Popen[str]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ran(out: Path) -> collections.Counter[int]:
    if not out.exists():
        return collections.Counter()
    return collections.Counter(
        json.loads(line)["i"] for line in out.read_text().splitlines() if line
    )


@pytest.fixture
def app(redis_server: RedisServer) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start `python -m tests.durable_app <mode> PORT REDIS PREFIX ...` (stopped at the end)."""
    started: list[subprocess.Popen[str]] = []

    def start(mode: str, port: int, prefix: str, *rest: str) -> subprocess.Popen[str]:
        argv = [sys.executable, "-m", "tests.durable_app", mode, str(port)]
        argv += [redis_server.url, prefix, *rest]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()


def _line(proc: subprocess.Popen[str], starts: str) -> str:
    """The next stdout line that starts with `starts` (the pytest timeout bounds the wait)."""
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline()
        assert line, f"the app exited (rc={proc.poll()}) before printing {starts!r}"
        if line.startswith(starts):
            return line.strip()


def _kill(proc: subprocess.Popen[str]) -> None:
    proc.kill()  # kill -9: no stop, no flush
    proc.wait(10)


@pytest.mark.timeout(180)
def test_enqueue_ids_are_accepted_again_after_a_kill_9_and_restart(
    app: App, cli_node: Callable[..., CliNode], tmp_path: Path
) -> None:
    port, prefix, out, count = _free_port(), unique_prefix(), tmp_path / "out.jsonl", 40
    cli_node("w", ("127.0.0.1", port))
    first = app("unique", port, prefix, str(out), str(count))
    assert _line(first, "ACCEPTED") == f"ACCEPTED {count}"
    _kill(first)  # the jobs wait on the node (after=2 s): their enqueue_id keys are held
    second = app("again", port, prefix, str(out), str(count))
    _line(second, "IDLE")  # the first runs finished (reported to the restarted distributor)
    assert _line(second, "ACCEPTED") == f"ACCEPTED {count}"  # their keys were released
    wait_until(lambda: sum(_ran(out).values()) >= 2 * count, 60, "both rounds to run")
    assert set(_ran(out).values()) == {2}  # each id once per round


@pytest.mark.timeout(240)
def test_a_kill_9_during_enqueue_many_runs_no_job_twice(
    app: App, cli_node: Callable[..., CliNode], tmp_path: Path
) -> None:
    port, prefix, out = _free_port(), unique_prefix(), tmp_path / "out.jsonl"
    cli_node("w", ("127.0.0.1", port))
    first = app("many", port, prefix, str(out))
    enqueued = 0
    while enqueued < 6000 or sum(_ran(out).values()) < 1000:
        enqueued = int(_line(first, "ENQUEUED").split()[1])
    _kill(first)  # in the middle of an enqueue_many, with jobs out on the node
    second = app("serve", port, prefix)
    _line(second, "IDLE")
    wait_until(lambda: set(range(enqueued)) <= set(_ran(out)), 60, "every stored job to run")
    twice = [i for i, n in _ran(out).items() if n > 1]
    assert twice == []
