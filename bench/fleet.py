"""`python -m bench.fleet HOST:PORT N`: N real nodes in one process, each with its own socket.

For the nodes-per-distributor curve: the distributor sees N ordinary node sessions (handshake,
credits, feedbacks), while the machine runs one process instead of N. Nodes are named
`fleet1` … `fleetN`, use memory storage and the bench's job directory, and stay until stdin
closes (the bench closes it, or dies).
"""

from __future__ import annotations

import argparse
import sys

from bench.harness import JOB_DIRECTORY


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet")
    parser.add_argument("address", help="the distributor, HOST:PORT")
    parser.add_argument("nodes", type=int)
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args()
    host, port = args.address.rsplit(":", 1)
    from jobreactor import Reactor

    reactor = Reactor(log_job_processing=False, logger_method="WARNING", shutdown_timeout=5.0)
    reactor.run()
    for i in range(1, args.nodes + 1):
        reactor.start_node(
            f"fleet{i}",
            "memory",
            [(host, int(port))],
            job_directory=str(JOB_DIRECTORY),
            concurrency=args.concurrency,
            wait=False,
        )
    print("started", flush=True)
    sys.stdin.read()  # until the bench closes our stdin
    reactor.stop(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
