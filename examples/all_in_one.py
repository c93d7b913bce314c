"""A distributor and a memory node in one process (the Ruby all_in_one_memory example).

    python examples/all_in_one.py

`JR.run()` starts the reactor's event loop in a background thread; the distributor and the node
both live on it, and this (main) thread is "the application". It enqueues `test_job`s (defined
in examples/all_in_one_jobs/) with a success and an error feedback each, waits for every
feedback (bounded), prints them, stops the reactor and exits: 0 if every feedback arrived and
looked right, 1 otherwise. Unlike the Ruby original, it ends by itself.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

from jobreactor import JR

HERE = Path(__file__).resolve().parent
JOBS = 6  # jobs 0..5; the odd ones fail on purpose
WAIT_S = 30.0


def main() -> int:
    # Retries happen on the node, which here shares this reactor's config: two attempts, no
    # delay between them, so the failing jobs reach their error feedback at once.
    JR.config.update(max_attempt=2, retry_multiplier=0, logger_method="WARNING")
    JR.run()
    host, port = JR.start_distributor("127.0.0.1", 0)  # port 0: any free port
    JR.start_node("memory_node", "memory", [(host, port)], job_directory=HERE / "all_in_one_jobs")
    print(f"distributor on {host}:{port}; nodes: {[n['name'] for n in JR.nodes()]}")

    lock = threading.Lock()
    outcomes: dict[int, tuple[str, dict[str, Any]]] = {}
    all_in = threading.Event()

    def record(kind: str, args: dict[str, Any]) -> None:
        # Feedbacks run on the reactor's loop thread: keep them short, share state with a lock.
        with lock:
            outcomes[args["n"]] = (kind, args)
            if len(outcomes) == JOBS:
                all_in.set()

    def success(args: dict[str, Any]) -> None:
        record("success", args)

    def error(args: dict[str, Any]) -> None:
        record("error", args)

    for n in range(JOBS):
        JR.enqueue("test_job", {"n": n, "fail": n % 2 == 1}, success=success, error=error)

    finished = all_in.wait(WAIT_S)
    JR.stop()

    ok = finished
    print(f"\n{len(outcomes)}/{JOBS} feedbacks:")
    for n in range(JOBS):
        if n not in outcomes:
            print(f"  job {n}: no feedback within {WAIT_S:.0f}s")
            ok = False
            continue
        kind, args = outcomes[n]
        if kind == "success":
            print(f"  job {n}: success feedback: result={args['result']!r}")
            ok = ok and n % 2 == 0 and args["checked"] is True
        else:
            why = f"{args['error']['class']}: {args['error']['message']}"
            print(f"  job {n}: error feedback: {why} (err={args['err']!r})")
            ok = ok and n % 2 == 1 and args["err"] == "seen by first_errback"
    print("all feedbacks arrived as expected" if ok else "something went wrong")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
