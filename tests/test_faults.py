"""Fault tests of the delivery guarantee with Redis (issue 4): kill -9 a node, the
distributor, Redis itself; a node away past node_grace. Real processes, real Redis."""

from __future__ import annotations

import collections
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from jobreactor import RedisMonitor, Registry, StorageUnavailable
from tests.conftest import Recorder, wait_until
from tests.redis_server import RedisServer, unique_prefix

pytestmark = pytest.mark.timeout(120)


def lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def test_kill_9_of_a_redis_node_loses_nothing_and_feeds_back_once(
    reactors, cli_node, any_redis_url: str, tmp_path: Path
) -> None:
    """On a single server and on a cluster (the claim of the dead node's jobs is one script
    in that node's slot there)."""
    reactor = reactors(node_grace=120.0)
    host, port = reactor.start_distributor("127.0.0.1", 0)
    prefix = unique_prefix()
    settings = {"storage": "redis", "redis_url": any_redis_url, "redis_prefix": prefix}
    victim = cli_node("r1", (host, port), concurrency=50, prefetch=50, **settings)
    reactor.wait_for_node("r1", timeout=20)
    out = tmp_path / "out.jsonl"
    successes = Recorder()
    handles = [
        reactor.enqueue("simple", {"out": str(out), "i": i}, {"after": 3}, success=successes)
        for i in range(500)
    ] + [
        reactor.enqueue("slow", {"out": str(out), "i": 500 + i, "s": 0.3}, success=successes)
        for i in range(500)
    ]
    monitor = RedisMonitor(any_redis_url, prefix=prefix)
    # scheduled ones stored, instant ones running (credits: concurrency + prefetch at a time)
    wait_until(lambda: len(monitor.jobs_for("r1")) >= 550, what="jobs stored on r1")
    wait_until(lambda: any(line["what"] == "slow" for line in lines(out)), what="running jobs")
    victim.proc.kill()
    victim.proc.wait(10)
    started = time.monotonic()
    cli_node("r1", (host, port), concurrency=50, prefetch=50, **settings)  # resumes its jobs
    for h in handles:
        h.result(60)
    recovery_s = time.monotonic() - started
    ids = collections.Counter(a["i"] for a in successes.wait(1000))
    assert sorted(ids) == list(range(1000))  # nothing lost
    assert set(ids.values()) == {1}  # each final feedback exactly once
    ran = collections.Counter(line["i"] for line in lines(out))
    assert set(ran) == set(range(1000))
    duplicates = sum(count - 1 for count in ran.values())
    print(f"kill -9 node: 0 lost, {duplicates} duplicate runs, recovered in {recovery_s:.1f}s")


def test_a_node_away_past_node_grace_loses_its_jobs_to_another_and_runs_none(
    reactors, cli_node, redis_server: RedisServer, tmp_path: Path
) -> None:
    reactor = reactors(node_grace=1.0)
    host, port = reactor.start_distributor("127.0.0.1", 0)
    prefix = unique_prefix()
    settings = {"storage": "redis", "redis_url": redis_server.url, "redis_prefix": prefix}
    old = cli_node("old", (host, port), **settings)
    reactor.wait_for_node("old", timeout=20)
    out = tmp_path / "out.jsonl"
    due = time.time() + 4
    handles = [
        reactor.enqueue("simple", {"out": str(out), "i": i}, {"run_at": due, "node": "old"})
        for i in range(200)
    ]
    monitor = RedisMonitor(redis_server.url, prefix=prefix)
    wait_until(lambda: len(monitor.jobs_for("old")) == 200, what="jobs stored on old")
    old.proc.kill()
    old.proc.wait(10)
    registry, ran = Registry(), Recorder()
    registry.job("simple")(lambda args: ran(args["i"]))
    reactor.start_node("new", "memory", [(host, port)], registry=registry)
    for h in handles:  # taken over after node_grace, run on "new"
        h.result(30)
    assert sorted(ran.items) == list(range(200))
    cli_node("old", (host, port), **settings)  # comes back: must run none of them
    reactor.wait_for_node("old", timeout=20)
    wait_until(lambda: monitor.jobs_for("old") == {}, what="old dropping its taken jobs")
    time.sleep(max(0.0, due + 0.5 - time.time()))  # past their due time: would have run now
    assert lines(out) == []


def test_kill_9_of_the_distributor_with_pending_jobs_then_restart_runs_them_all(
    cli_node, redis_server: RedisServer, tmp_path: Path
) -> None:
    prefix, out = unique_prefix(), tmp_path / "out.jsonl"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = [sys.executable, "-m", "tests.fault_app"]
    args = [str(port), redis_server.url, prefix]
    first = subprocess.Popen(
        [*base, "enqueue", *args, str(out), "300"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert first.stdout is not None
        assert first.stdout.readline().strip() == "ENQUEUED"
    finally:
        first.kill()  # kill -9, with 300 jobs pending (no node ever connected)
        first.wait(10)
        if first.stdout is not None:
            first.stdout.close()
    second = subprocess.Popen([*base, "serve", *args], stdout=subprocess.PIPE, text=True)
    try:
        assert second.stdout is not None
        assert second.stdout.readline().strip() == "READY"
        cli_node("w", ("127.0.0.1", port))
        wait_until(lambda: len(lines(out)) >= 300, timeout=60, what="300 jobs run")
        ran = collections.Counter(line["i"] for line in lines(out))
        assert sorted(ran) == list(range(300))
        assert set(ran.values()) == {1}
    finally:
        second.send_signal(signal.SIGTERM)
        try:
            second.wait(15)
        except subprocess.TimeoutExpired:
            second.kill()
            second.wait(5)
        if second.stdout is not None:
            second.stdout.close()


def test_redis_kill_9_with_aof_loses_nothing_acknowledged(
    reactors, cli_node, tmp_path: Path
) -> None:
    server = RedisServer(tmp_path / "aof", aof=True).start()
    try:
        reactor = reactors(node_grace=120.0)
        host, port = reactor.start_distributor("127.0.0.1", 0)
        prefix = unique_prefix()
        settings = {"storage": "redis", "redis_url": server.url, "redis_prefix": prefix}
        node = cli_node("a", (host, port), **settings)
        reactor.wait_for_node("a", timeout=20)
        out = tmp_path / "out.jsonl"
        successes = Recorder()
        handles = [
            reactor.enqueue("simple", {"out": str(out), "i": i}, {"after": 3}, success=successes)
            for i in range(300)
        ]
        monitor = RedisMonitor(server.url, prefix=prefix)
        wait_until(lambda: len(monitor.jobs_for("a")) == 300, what="300 jobs acknowledged")
        monitor.close()
        time.sleep(1.5)  # appendfsync everysec: what was acknowledged a second ago is on disk
        server.kill()
        node.proc.kill()
        node.proc.wait(10)
        server.start()  # replays the AOF
        cli_node("a", (host, port), **settings)
        for h in handles:
            h.result(60)
        assert sorted(a["i"] for a in successes.wait(300)) == list(range(300))
    finally:
        server.stop()


def test_redis_going_away_refuses_enqueues_then_recovers(reactors, tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "r").start()
    try:
        reactor = reactors(redis_prefix=unique_prefix(), enqueue_timeout=10.0)
        host, port = reactor.start_distributor(
            "127.0.0.1", 0, storage="redis", redis_url=server.url
        )
        registry, ran = Registry(), Recorder()
        registry.job("simple")(lambda args: ran(args["i"]))
        reactor.start_node("m", "memory", [(host, port)], registry=registry)
        reactor.enqueue("simple", {"i": 0}).result(10)
        server.stop()
        with pytest.raises(StorageUnavailable, match="redis"):
            reactor.enqueue("simple", {"i": 1})
        server.start()
        reactor.enqueue("simple", {"i": 2}).result(20)
        assert ran.items == [0, 2]  # the refused job never ran
    finally:
        server.stop()


def test_a_redis_node_whose_redis_goes_away_hands_jobs_back_then_resumes(
    reactors, tmp_path: Path
) -> None:
    server = RedisServer(tmp_path / "r").start()
    try:
        reactor = reactors(redis_prefix=unique_prefix(), hiredis_url=server.url)
        host, port = reactor.start_distributor("127.0.0.1", 0)
        registry, ran = Registry(), Recorder()
        registry.job("simple")(lambda args: ran(args["i"]))
        reactor.start_node("r", "redis", [(host, port)], registry=registry)
        reactor.enqueue("simple", {"i": 0}).result(10)
        server.stop()
        handles = [reactor.enqueue("simple", {"i": i}) for i in range(1, 6)]
        # Nacked (it can't store them) and held in the distributor: no ping-pong meanwhile.
        wait_until(lambda: reactor.distributor.pending_count == 5, what="jobs handed back")
        server.start()
        for h in handles:
            h.result(30)
        assert sorted(ran.items) == [0, 1, 2, 3, 4, 5]
    finally:
        server.stop()
