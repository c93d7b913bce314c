"""A distributor in its own process, for the kill -9 test (tests/test_faults.py).

python -m tests.fault_app enqueue PORT REDIS_URL PREFIX OUT N   # enqueue N, then wait
python -m tests.fault_app serve PORT REDIS_URL PREFIX           # restore and serve
"""

from __future__ import annotations

import sys
import threading

from jobreactor import Reactor


def main() -> None:
    mode, port, redis_url, prefix = sys.argv[1:5]
    reactor = Reactor(redis_prefix=prefix, logger_method="INFO", log_job_processing=False)
    reactor.run()
    reactor.start_distributor("127.0.0.1", int(port), storage="redis", redis_url=redis_url)
    if mode == "enqueue":
        out, count = sys.argv[5], int(sys.argv[6])
        for i in range(count):
            handle = reactor.enqueue("simple", {"out": out, "i": i})
            assert handle is not None  # stored: enqueue waited for the journal
        print("ENQUEUED", flush=True)
    else:
        print("READY", flush=True)
    threading.Event().wait()  # until killed


if __name__ == "__main__":
    main()
