"""A node per core (issue 21): `processes = N` runs a supervisor over real node processes."""

from __future__ import annotations

import itertools
import os
import signal
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from jobreactor import Reactor
from jobreactor.node.identity import expand_node_name
from jobreactor.node.supervisor import Recycler, child_argv
from tests.conftest import CliNode, wait_until

pytestmark = pytest.mark.timeout(120)

WHERE_JOBS = textwrap.dedent(
    """
    import asyncio, os, time
    from jobreactor import job

    @job("where")
    async def where(args):
        args["start"] = time.time()
        await asyncio.sleep(args.get("s", 0.05))
        args["pid"] = os.getpid()
        args["end"] = time.time()
    """
)


def children_of(pid: int) -> set[int]:
    """Live child processes of `pid` (from /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def names(reactor: Reactor) -> set[str]:
    return {node["name"] for node in reactor.nodes()}


def start(cli_node: Callable[..., CliNode], tmp_path: Path, reactor: Reactor, **settings: Any):
    jobs = tmp_path / "cli_jobs"
    jobs.mkdir(exist_ok=True)
    (jobs / "where.py").write_text(WHERE_JOBS)
    address = ("127.0.0.1", reactor.distributor.address_port())
    return cli_node("sup", address, **settings)


def run_where(reactor: Reactor, n: int, **args: Any) -> list[dict[str, Any]]:
    handles = [reactor.enqueue("where", {"i": i, **args}) for i in range(n)]
    return [h.result(60) for h in handles if h is not None]


def test_two_children_connect_and_jobs_run_on_both(
    reactor: Reactor, cli_node: Callable[..., CliNode], tmp_path: Path
) -> None:
    node = start(cli_node, tmp_path, reactor, processes=2, prefetch=0, concurrency=2)
    wait_until(lambda: names(reactor) == {"sup-1", "sup-2"}, 60, "two child nodes")
    results = run_where(reactor, 40, s=0.1)
    pids = {r["pid"] for r in results}
    assert pids == children_of(node.proc.pid)
    assert len(pids) == 2


def test_a_killed_child_is_replaced_and_sigterm_stops_all_with_exit_0(
    reactor: Reactor, cli_node: Callable[..., CliNode], tmp_path: Path
) -> None:
    node = start(cli_node, tmp_path, reactor, processes=2)
    wait_until(lambda: names(reactor) == {"sup-1", "sup-2"}, 60, "two child nodes")
    first = children_of(node.proc.pid)
    assert len(first) == 2
    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: len(children_of(node.proc.pid) - first) == 1, 60, "a replacement")
    wait_until(lambda: names(reactor) == {"sup-1", "sup-2"}, 60, "the replacement to connect")
    assert len(run_where(reactor, 10)) == 10
    children = children_of(node.proc.pid)
    node.signal(signal.SIGTERM)
    assert node.wait(60) == 0
    assert not any(alive(pid) for pid in children)
    log = node.log_text()
    assert "died (exit code -9" in log
    assert "every node process stopped" in log


def test_a_child_past_its_job_budget_drains_before_its_replacement_starts(
    reactor: Reactor, cli_node: Callable[..., CliNode], tmp_path: Path
) -> None:
    node = start(cli_node, tmp_path, reactor, max_jobs_per_process=4, prefetch=0, concurrency=2)
    wait_until(lambda: names(reactor) == {"sup-1"}, 60, "the child node")
    results = run_where(reactor, 12, s=0.1)
    assert sorted(r["i"] for r in results) == list(range(12))  # each job done, none lost
    by_pid: dict[int, list[dict[str, Any]]] = {}
    for result in results:
        by_pid.setdefault(result["pid"], []).append(result)
    assert len(by_pid) >= 3  # 12 jobs at most 4 per process
    spans = sorted(
        (min(r["start"] for r in rs), max(r["end"] for r in rs)) for rs in by_pid.values()
    )
    for (_, end), (start_next, _) in itertools.pairwise(spans):
        assert end <= start_next  # the old one finished its jobs before the fresh one took any
    assert "recycles: it started 4 jobs" in node.log_text()
    node.signal(signal.SIGTERM)
    assert node.wait(60) == 0


def test_a_child_above_its_memory_limit_is_recycled(
    reactor: Reactor, cli_node: Callable[..., CliNode], tmp_path: Path
) -> None:
    node = start(cli_node, tmp_path, reactor, max_memory_mb=1, prefetch=0, concurrency=1)
    wait_until(lambda: names(reactor) == {"sup-1"}, 60, "the child node")
    results = run_where(reactor, 3)
    assert sorted(r["i"] for r in results) == [0, 1, 2]
    # Above the limit from its first job, each child is drained and replaced after the job
    # that finds it so; memory is read at most once a second, so a child may run two.
    assert len({r["pid"] for r in results}) >= 2
    assert "recycles: it uses" in node.log_text()


def test_recycler_asks_once_past_the_memory_limit() -> None:
    asked: list[bool] = []
    recycler = Recycler(None, 100.0, stop=lambda: asked.append(True), memory_mb=lambda: 150.0)
    recycler.attempt_started(now=10.0)
    recycler.attempt_started(now=20.0)
    assert asked == [True]
    calm = Recycler(None, 100.0, stop=lambda: asked.append(True), memory_mb=lambda: 50.0)
    calm.attempt_started(now=10.0)
    assert asked == [True]


def test_child_argv_names_each_child_and_keeps_the_rest() -> None:
    argv = child_argv(["node", "--config", "n.toml", "--processes", "4", "--name=x"], "w", 2, 77)
    assert argv[3:] == [
        "node", "--config", "n.toml", "--processes", "1", "--name", "w-2", "--child-of", "77"
    ]  # fmt: skip


def test_placeholders_in_the_name_are_left_for_each_child_to_expand() -> None:
    argv = child_argv(["node"], "w-{hostname}-{pid}", 3, 77)
    name = argv[argv.index("--name") + 1]
    assert name == "w-{hostname}-{pid}-3"
    assert expand_node_name(name).endswith(f"-{os.getpid()}-3")
