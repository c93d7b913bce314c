"""Forks a process around a reactor and reports what the child saw, as JSON on stdout.

python -m tests.web.fork_app started   # JR running before fork: the child must be refused
python -m tests.web.fork_app created   # JR created, not started: each child starts its own
(tests/web/test_fork.py; in a subprocess so that pytest itself never forks.)
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from jobreactor import JR, ReactorForkedError, job


@job("fork.echo")
def echo(args: dict[str, Any]) -> None:
    args["pid"] = os.getpid()


def _refusals() -> dict[str, Any]:
    """In the child of a running reactor: every entry point raises at once."""
    seen: dict[str, Any] = {}
    calls: dict[str, Callable[[], object]] = {
        "enqueue": lambda: JR.enqueue("fork.echo", {}),
        "enqueue_many": lambda: JR.enqueue_many([("fork.echo", {}, None)]),
        "nodes": JR.nodes,
        "cancel": lambda: JR.cancel("x"),
        "start_distributor": lambda: JR.start_distributor("127.0.0.1", 0),
        "start_node": lambda: JR.start_node("n"),
    }
    for name, call in calls.items():
        start = time.monotonic()
        try:
            call()
            seen[name] = {"raised": None}
        except ReactorForkedError as exc:
            seen[name] = {"raised": "ReactorForkedError", "message": str(exc)}
        seen[name]["seconds"] = time.monotonic() - start
    JR.stop()  # the loop is the parent's: a no-op here, never an error
    seen["ready"] = JR.ready()
    return seen


def _child_round_trip(count: int) -> dict[str, Any]:
    """Start a reactor here, run `count` jobs on an in-process node; their ids and pids."""
    JR.run()
    JR.start_distributor("127.0.0.1", 0)
    JR.start_node("child-node", registry=JR.registry)
    handles = [JR.enqueue("fork.echo", {}) for _ in range(count)]
    pids = {h.result(20)["pid"] for h in handles if h is not None}
    JR.stop()
    return {"ids": [h.id for h in handles if h is not None], "pids": sorted(pids)}


def _fork(work: Any, out: str) -> int:
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            with open(out, "w") as f:
                json.dump(work(), f)
        except BaseException:
            code = 1
            raise
        finally:
            sys.stdout.flush()
        sys.exit(code)  # the normal exit path (atexit, finalizers), like a gunicorn worker
    return pid


def main() -> None:
    mode, directory = sys.argv[1], sys.argv[2]
    report: dict[str, Any] = {"parent": os.getpid(), "children": []}
    if mode == "started":
        JR.run()
        JR.start_distributor("127.0.0.1", 0)
        works = [_refusals, lambda: _child_round_trip(50)]
    else:
        works = [lambda: _child_round_trip(200) for _ in range(4)]
    pids = [_fork(work, os.path.join(directory, f"child{i}.json")) for i, work in enumerate(works)]
    for i, pid in enumerate(pids):
        _, status = os.waitpid(pid, 0)
        with open(os.path.join(directory, f"child{i}.json")) as f:
            child = json.load(f)
        report["children"].append({"exit": os.waitstatus_to_exitcode(status), **child})
    if mode == "started":  # the parent's reactor still serves after its children exited
        JR.start_node("parent-node", registry=JR.registry)
        handle = JR.enqueue("fork.echo", {})
        assert handle is not None
        report["parent_job_pid"] = handle.result(20)["pid"]
        JR.stop()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
