"""An application with a distributor inside (the Ruby example's application.rb).

    python app.py [PORT] [--jobs N] [--errors K] [--timeout S]

Starts a distributor on 127.0.0.1:PORT (default $APP_PORT or 5100), enqueues N `success_job`s
and K `error_job`s with a success and an error feedback each, and waits (at most --timeout
seconds) until every job's final feedback came back, from whichever node ran it. Then it prints
a summary, stops and exits 0, or 1 if a feedback is missing, duplicated or unexpected.

Jobs enqueued before any node is connected wait in the distributor (no polling: they go out
the moment a node connects and grants credit). run.sh starts two of these apps and then three
nodes (node1/2/3.toml), each node connected to both distributors.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import threading
import time
from typing import Any

from jobreactor import JR


def parse_args(default_port: int, port_env: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "port", nargs="?", type=int, default=int(os.environ.get(port_env, default_port))
    )
    parser.add_argument("--jobs", type=int, default=200, help="success_jobs to enqueue")
    parser.add_argument("--errors", type=int, default=5, help="error_jobs to enqueue")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait, at most")
    return parser.parse_args()


class Tally:
    """What the feedbacks told us. They run on the reactor's loop thread; main() reads it."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.lock = threading.Lock()
        self.all_in = threading.Event()
        self.successes: collections.Counter[int] = collections.Counter()
        self.errors: collections.Counter[int] = collections.Counter()
        self.by_node: collections.Counter[str] = collections.Counter()
        self.problems: list[str] = []

    def _count(self, counter: collections.Counter[int], i: int) -> None:
        counter[i] += 1
        if counter[i] > 1:
            self.problems.append(f"job {i}: feedback #{counter[i]}")
        if len(self.successes) + len(self.errors) >= self.expected:
            self.all_in.set()

    def success(self, args: dict[str, Any]) -> None:
        with self.lock:
            if "digest" not in args:
                self.problems.append(f"job {args['i']}: success feedback without a digest")
            self.by_node[str(args.get("ran_on"))] += 1
            self._count(self.successes, args["i"])

    def error(self, args: dict[str, Any]) -> None:
        with self.lock:
            error = args["error"]
            if error["class"] != "NameError":
                self.problems.append(f"job {args['i']}: unexpected error {error}")
            # Present when the nodes set merge_job_itself_to_args.
            attempts = (args.get("job_itself") or {}).get("attempt")
            if attempts is not None and attempts != args["max_attempt"]:
                self.problems.append(f"job {args['i']}: error feedback after {attempts} attempts")
            self._count(self.errors, args["i"])


def run(label: str, default_port: int, port_env: str, interval_s: float) -> int:
    options = parse_args(default_port, port_env)
    # Retries are decided on the node that runs the job, so node1/2/3.toml set max_attempt and
    # retry_multiplier too. These settings would apply to a node started in this process; a
    # job's own `max_attempt` option (used for error_job below) travels with the job.
    JR.config.update(max_attempt=2, retry_multiplier=0, logger_method="WARNING")
    JR.run()
    # The distributor must listen before the nodes dial in (they redial every
    # reconnect_interval if it is not up yet). run.sh waits for this line.
    host, port = JR.start_distributor("127.0.0.1", options.port)
    print(f"{label}: distributor listening on {host}:{port}", flush=True)

    tally = Tally(options.jobs + options.errors)
    started = time.monotonic()
    for i in range(options.jobs):
        JR.enqueue("success_job", {"i": i}, success=tally.success, error=tally.error)
        time.sleep(interval_s)  # "the application is working"
    max_attempt = 2
    for i in range(options.jobs, options.jobs + options.errors):
        JR.enqueue(
            "error_job",
            {"i": i, "max_attempt": max_attempt},
            {"max_attempt": max_attempt},
            success=tally.success,
            error=tally.error,
        )
    print(f"{label}: enqueued {options.jobs} success_job(s), {options.errors} error_job(s)")

    finished = tally.all_in.wait(options.timeout)
    elapsed = time.monotonic() - started
    nodes = sorted(n["name"] for n in JR.nodes())
    JR.stop()

    with tally.lock:
        ok = finished and not tally.problems
        ok = ok and len(tally.successes) == options.jobs and len(tally.errors) == options.errors
        print(
            f"{label}: {len(tally.successes)}/{options.jobs} success and "
            f"{len(tally.errors)}/{options.errors} error feedbacks in {elapsed:.2f}s; "
            f"nodes connected at the end: {nodes}"
        )
        for node, count in sorted(tally.by_node.items()):
            print(f"{label}:   {count:4d} job(s) ran on {node}")
        for problem in tally.problems[:10]:
            print(f"{label}:   problem: {problem}")
    if not finished:
        print(f"{label}: timed out after {options.timeout:.0f}s waiting for feedbacks")
    print(f"{label}: {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(run("app", 5100, "APP_PORT", interval_s=0.001))
