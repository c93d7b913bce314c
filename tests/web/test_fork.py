"""Fork safety (DESIGN "Production topologies"): real os.fork() in a subprocess, real sockets."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from jobreactor import Reactor, ReactorTimeout, Registry
from jobreactor.ids import JobIds
from tests.conftest import make_test_reactor

ROOT = Path(__file__).resolve().parents[2]

PREFIX = len(JobIds().prefix)  # the per-process part of a job id


def _run_fork_app(mode: str, tmp_path: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "tests.web.fork_app", mode, str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def test_a_reactor_started_before_fork_refuses_at_once_and_the_child_exits_0(tmp_path):
    report = _run_fork_app("started", tmp_path)
    refused, restarted = report["children"]
    assert refused["exit"] == 0  # no SIGSEGV at interpreter shutdown
    for call in ("enqueue", "enqueue_many", "nodes", "cancel", "start_distributor", "start_node"):
        seen = refused[call]
        assert seen["raised"] == "ReactorForkedError", call
        assert seen["seconds"] < 0.5, call  # at once: no 30 s wait, no TimeoutError
        assert f"started in process {report['parent']}" in seen["message"]
        assert "fork_app.py" in seen["message"]  # names where JR.run() was called
        assert "post_worker_init" in seen["message"]
    assert refused["ready"] is False
    # JR.run() in a child starts a reactor of its own there, which works.
    assert restarted["exit"] == 0
    assert len(set(restarted["ids"])) == 50
    assert restarted["pids"] != [report["parent"]]
    # The children touched nothing of the parent's: its loop and listener still serve.
    assert report["parent_job_pid"] == report["parent"]


def test_workers_forked_from_one_import_never_repeat_job_ids(tmp_path):
    report = _run_fork_app("created", tmp_path)
    ids: list[str] = []
    for child in report["children"]:
        assert child["exit"] == 0
        ids += child["ids"]
    assert len(ids) == 4 * 200
    assert len(set(ids)) == len(ids)
    assert len({i[:PREFIX] for i in ids}) == 4  # one id prefix per process


def test_a_blocked_loop_gives_a_typed_timeout_not_a_bare_one():
    reactor: Reactor = make_test_reactor()
    try:

        async def block() -> None:
            time.sleep(1.0)  # noqa: ASYNC251 (sync code on the loop: what this is about)

        with pytest.raises(ReactorTimeout, match=r"did not answer within 0\.2s"):
            reactor.call(block, timeout=0.2)
    finally:
        reactor.stop(timeout=10)


def test_ensure_started_is_idempotent_and_thread_safe():
    reactor = Reactor(logger_method="WARNING", shutdown_timeout=2.0)
    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda _: reactor.ensure_started("127.0.0.1", 0), range(16)))
        assert reactor.ready()
        assert len(reactor.members.distributors) == 1
    finally:
        reactor.stop(timeout=10)


def test_attach_refuses_a_reactor_already_running_on_its_thread():
    reactor = make_test_reactor()
    other = asyncio.new_event_loop()
    try:
        with pytest.raises(RuntimeError, match="start it in one place only"):
            reactor.attach(other)
    finally:
        other.close()
        reactor.stop(timeout=10)


def test_aenqueue_from_another_loop_hops_over(reactor: Reactor) -> None:
    registry = Registry()

    @registry.job("hop")
    def hop(args: dict[str, Any]) -> None:
        args["done"] = True

    reactor.start_node("hop-node", registry=registry)

    async def from_the_apps_loop() -> dict[str, Any]:
        handle = await reactor.aenqueue("hop", {})
        assert handle is not None
        return await handle

    assert asyncio.run(from_the_apps_loop()) == {"done": True}
