"""`python bench/unknown_names.py [N]`: what N distinct job names no node runs cost a scrape.

A distributor with no node, N jobs each under its own made-up name: the size and render time
of `/metrics` (this process's registry), and the size of the registry beat (the
distributor's `stats()` as JSON). Issue 19: under 1 MB and 64 KB for 100k names, since
unregistered names count under one `unknown` series. Works on older trees too (for before/
after figures: run it with PYTHONPATH pointing at each).
"""

from __future__ import annotations

import json
import sys
import time

from prometheus_client import generate_latest

from jobreactor import Reactor
from jobreactor.metrics import metrics_registry


def main(n: int) -> None:
    reactor = Reactor(logger_method=None, log_job_processing=False)
    reactor.run()
    try:
        reactor.start_distributor("127.0.0.1", 0)
        reactor.enqueue_many([(f"made-up-{i}", {}, None) for i in range(n)])
        deadline = time.monotonic() + 300
        while len(reactor.distributor.dispatcher) < n and time.monotonic() < deadline:
            time.sleep(0.05)  # a bench, not a test: polling the count is fine here

        async def beat() -> bytes:
            return json.dumps(reactor.distributor.stats()).encode()

        renders = []
        for _ in range(3):
            t0 = time.perf_counter()
            text = generate_latest(metrics_registry())
            renders.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        published = reactor.call(beat, timeout=120)
        beat_s = time.perf_counter() - t0
    finally:
        reactor.stop(timeout=30)
    print(
        f"{n:,} unknown names: /metrics {len(text):,} bytes, render first {renders[0]:.3f} s, "
        f"best {min(renders):.3f} s; "
        f"registry beat {len(published):,} bytes, built in {beat_s:.3f} s"
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
