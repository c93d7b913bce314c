"""A redis-backed distributor in its own process, for the kill -9 tests of issue 16
(tests/test_durable_restart.py). It prints one line per step on stdout.

python -m tests.durable_app unique PORT REDIS_URL PREFIX OUT N   # N jobs with enqueue_id u<i>
python -m tests.durable_app again PORT REDIS_URL PREFIX OUT N    # restore; once idle, the same
                                                                 # N ids again: ACCEPTED <k>
python -m tests.durable_app many PORT REDIS_URL PREFIX OUT       # enqueue_many until killed
python -m tests.durable_app serve PORT REDIS_URL PREFIX          # restore, serve; IDLE when idle
"""

from __future__ import annotations

import sys
import threading

from jobreactor import Reactor


def _unique(reactor: Reactor, out: str, count: int, after: float) -> int:
    """Enqueue `slow` jobs with enqueue_id u0..u<count-1>; how many were accepted."""
    accepted = 0
    for i in range(count):
        opts = {"enqueue_id": f"u{i}", "after": after}
        handle = reactor.enqueue("slow", {"out": out, "i": i, "s": 0.2}, opts)
        accepted += handle is not None
    return accepted


def main() -> None:
    mode, port, redis_url, prefix = sys.argv[1:5]
    reactor = Reactor(
        redis_prefix=prefix,
        logger_method="INFO",
        log_job_processing=False,
        reconnect_interval=0.1,
        node_grace=60.0,
    )
    reactor.run()
    reactor.start_distributor("127.0.0.1", int(port), storage="redis", redis_url=redis_url)
    print("READY", flush=True)
    if mode == "unique":
        print(f"ACCEPTED {_unique(reactor, sys.argv[5], int(sys.argv[6]), 2.0)}", flush=True)
    elif mode == "again":
        reactor.wait_idle(timeout=120)
        print("IDLE", flush=True)
        print(f"ACCEPTED {_unique(reactor, sys.argv[5], int(sys.argv[6]), 0.0)}", flush=True)
    elif mode == "many":
        out, start = sys.argv[5], 0
        while True:
            jobs = [("simple", {"out": out, "i": start + i}, None) for i in range(500)]
            reactor.enqueue_many(jobs)
            start += len(jobs)
            print(f"ENQUEUED {start}", flush=True)
    else:
        reactor.wait_idle(timeout=120)
        print("IDLE", flush=True)
    threading.Event().wait()  # until killed


if __name__ == "__main__":
    main()
