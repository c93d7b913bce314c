"""A web worker stand-in for discovery tests: its own process, reactor and distributor (port 0).

    python -m tests.discovery.producer OUT COUNT [storage] [delay_s] [slow]

It registers in the group (its settings come from JOBREACTOR_* variables), enqueues COUNT
jobs named "work" with the named feedback "fed" (the first `slow` of them with args
{"s": 5.0}: long-running, as far as a test is concerned), and writes JSON lines to OUT:
"ready" (with address and iid) once started, "enqueued" once every job is accepted, "fed" for
each feedback it receives. It then runs until SIGTERM (graceful stop: it leaves the group).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

from jobreactor import Reactor
from jobreactor.config import load_distributor_config


def main() -> None:
    out, count = sys.argv[1], int(sys.argv[2])
    storage = sys.argv[3] if len(sys.argv) > 3 else "memory"
    delay = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
    slow = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    lock = threading.Lock()

    def write(**line: Any) -> None:
        with lock, open(out, "a") as f:
            f.write(json.dumps({"pid": os.getpid(), **line}) + "\n")

    settings = load_distributor_config(None).settings  # JOBREACTOR_* from the test
    logging.basicConfig(level=settings.logger_method or "WARNING", stream=sys.stderr)
    reactor = Reactor(**settings.model_dump())
    reactor.register_feedback("fed", lambda args: write(what="fed", i=args["i"]))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    reactor.run()
    reactor.start_distributor("127.0.0.1", 0, storage=storage)
    distributor = reactor.distributor
    write(what="ready", address=distributor.address, iid=distributor.iid)
    tag = f"{os.getpid()}"
    handles = []
    for i in range(count):
        args: dict[str, Any] = {"i": f"{tag}-{i}"} | ({"s": 5.0} if i < slow else {})
        handles.append(reactor.enqueue("work", args, success="fed"))
        if delay:
            time.sleep(delay)  # paced on purpose: jobs keep flowing while a test scales workers
    for handle in handles:
        assert handle is not None
        handle.accepted(10)
    write(what="enqueued", n=count)
    stop.wait()
    reactor.stop(timeout=10)


if __name__ == "__main__":
    main()
