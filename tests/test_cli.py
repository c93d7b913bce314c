"""`jobreactor node --config` as a real process: end to end, bad config, kill -9, SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from jobreactor import Reactor, Registry
from tests.conftest import Recorder, in_flight, wait_until

pytestmark = pytest.mark.timeout(90)


def lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def test_cli_node_runs_jobs_and_feedback_comes_back(reactor, address, cli_node, tmp_path) -> None:
    node = cli_node("cli1", address)
    reactor.wait_for_node("cli1", timeout=20)
    out = tmp_path / "out.jsonl"
    handles = [reactor.enqueue("simple", {"out": str(out), "i": i}) for i in range(50)]
    results = [h.result(20) for h in handles]
    assert all(r["result"] == "ok" for r in results)
    assert sorted(line["i"] for line in lines(out)) == list(range(50))
    errors = Recorder()
    h = reactor.enqueue("fail", {"out": str(out)}, error=errors)
    (err,) = errors.wait(1, timeout=20)
    assert err["error"]["class"] == "RuntimeError"
    assert err["seen_error"] == "RuntimeError"
    assert h is not None
    assert h.done()
    assert sum(1 for line in lines(out) if line["what"] == "fail") == 3  # max_attempt = 3
    node.signal(signal.SIGTERM)
    assert node.wait(20) == 0


def test_bad_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text('name = "x"\ndistributors = [["127.0.0.1", 1]]\nmax_atempt = 3\n')
    proc = subprocess.run(
        [sys.executable, "-m", "jobreactor", "node", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2
    assert "max_atempt" in proc.stderr
    assert str(config) in proc.stderr
    config.write_text("name = \n")
    proc = subprocess.run(
        [sys.executable, "-m", "jobreactor", "node", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2
    assert "TOML" in proc.stderr


def test_kill_9_of_a_memory_node_redispatches_its_jobs_exactly_once(
    reactor: Reactor, address, cli_node, tmp_path
) -> None:
    victim = cli_node("victim", address)
    reactor.wait_for_node("victim", timeout=20)
    out = tmp_path / "out.jsonl"
    successes = Recorder()
    handles = [
        reactor.enqueue("simple", {"out": str(out), "i": i}, {"after": 2.0}, success=successes)
        for i in range(100)
    ]
    # Every job acknowledged by the victim (held, scheduled for later)...
    wait_until(lambda: in_flight(reactor, "victim") == 100, what="100 jobs on the victim")
    victim.proc.kill()
    victim.proc.wait(10)
    # ...comes back and runs on the survivor, with one final feedback each.
    registry = Registry()
    ran = Recorder()
    registry.job("simple")(lambda args: ran(args["i"]))
    reactor.start_node("survivor", "memory", [address], registry=registry)
    for h in handles:
        h.result(20)  # type: ignore[union-attr]
    assert sorted(ran.items) == list(range(100))
    assert len(successes) == 100
    assert lines(out) == []


def test_sigterm_hands_back_unstarted_jobs(reactor: Reactor, address, cli_node, tmp_path) -> None:
    leaving = cli_node("leaving", address)
    reactor.wait_for_node("leaving", timeout=20)
    out = tmp_path / "out.jsonl"
    handles = [
        reactor.enqueue("simple", {"out": str(out), "i": i}, {"after": 60}) for i in range(30)
    ]
    wait_until(lambda: in_flight(reactor, "leaving") == 30, what="30 jobs on the node")
    leaving.signal(signal.SIGTERM)
    assert leaving.wait(20) == 0
    assert "handed 30 job(s) back" in leaving.log_text()
    assert reactor.distributor.pending_count == 30
    for h in handles:
        assert reactor.cancel(h.id)  # type: ignore[union-attr]


def test_a_reconnecting_node_settles_a_long_held_list_in_several_frames(
    reactor: Reactor, address, monkeypatch: pytest.MonkeyPatch
) -> None:
    import jobreactor.node.link as link_module

    monkeypatch.setattr(link_module, "_HELD_PER_FRAME", 7)  # 40 held jobs: Hello + 5 Held
    registry, ran = Registry(), Recorder()
    registry.job("simple")(lambda args: ran(args["i"]))
    node = reactor.start_node("chunky", "memory", [address], registry=registry)
    handles = [reactor.enqueue("simple", {"i": i}, {"after": 1.5}) for i in range(40)]
    wait_until(lambda: in_flight(reactor, "chunky") == 40, what="40 jobs on the node")
    reactor.call(lambda: _drop_link(node))  # the link breaks; the node redials at once
    for h in handles:
        h.result(20)  # type: ignore[union-attr]
    assert sorted(ran.items) == list(range(40))  # settled again: each ran exactly once


async def _drop_link(node: Any) -> None:
    conn = node._node.links[0].conn
    assert conn is not None
    conn.abort("test: link cut")
