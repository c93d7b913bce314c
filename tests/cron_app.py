"""An app process declaring a cron schedule, as each worker of a pre-fork web tier would.

    python -m tests.cron_app OUT REDIS_URL PREFIX

Starts a reactor and a distributor on Redis storage (port 0), enqueues the job "tick" on the
schedule "* * * * * *" with `enqueue_id="every-second"`, and writes one JSON line to OUT:
{"port": <its port>, "scheduled": <job id or null when the enqueue_id refused it>}.
It then runs until SIGTERM.
"""

from __future__ import annotations

import json
import signal
import sys
import threading

from jobreactor import Reactor


def main() -> None:
    out, redis_url, prefix = sys.argv[1], sys.argv[2], sys.argv[3]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    reactor = Reactor(logger_method="WARNING", log_job_processing=False, redis_prefix=prefix)
    reactor.run()
    reactor.start_distributor("127.0.0.1", 0, storage="redis", redis_url=redis_url)
    handle = reactor.enqueue(
        "tick", {}, {"cron": "* * * * * *", "enqueue_id": "every-second", "tz": "Europe/Berlin"}
    )
    scheduled = None if handle is None else handle.id
    with open(out, "a") as f:
        f.write(json.dumps({"port": reactor.distributor.address_port(), "scheduled": scheduled}))
        f.write("\n")
    stop.wait()
    reactor.stop(timeout=10)


if __name__ == "__main__":
    main()
