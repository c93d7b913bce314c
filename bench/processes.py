"""`python -m bench.processes`: issue 21's figures.

- Throughput of one `jobreactor node` with `processes = 1` and `processes = 2` (a supervisor over
  two node processes), for a no-op body and a CPU-bound body (`sum(i*i)` over 300,000 ints,
  about 15 ms on this machine). The distributor runs in this process; jobs are enqueued with
  `enqueue_many` and timed from the first enqueue to the last success feedback.
- Cron tick lateness: a `"* * * * * *"` schedule on an in-process memory node; lateness is the
  attempt's start minus its tick (`job_itself.run_at_ts`), over `--ticks` ticks; p50/p99/max.

Each figure is printed with the load average (`os.getloadavg()`) at its end.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

from jobreactor import Reactor, Registry

JOBS = textwrap.dedent(
    """
    from jobreactor import job

    @job("p_noop")
    def noop(args):
        pass

    @job("p_burn")
    def burn(args):
        args["s"] = sum(i * i for i in range(300_000)) % 7
    """
)


def _load() -> str:
    return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def throughput(
    processes: int, job: str, n: int, tmp: Path, node_keys: str = "", opts: Any = None
) -> float:
    reactor = Reactor(logger_method="WARNING", log_job_processing=False, shutdown_timeout=5.0)
    reactor.run()
    try:
        reactor.start_distributor("127.0.0.1", 0)
        port = reactor.distributor.address_port()
        jobs = tmp / "jobs"
        jobs.mkdir(exist_ok=True)
        (jobs / "jobs.py").write_text(JOBS)
        config = tmp / f"node{processes}.toml"
        config.write_text(
            f'name = "bp"\ndistributors = ["127.0.0.1:{port}"]\njob_directory = "{jobs}"\n'
            f'log_job_processing = false\nlogger_method = "WARNING"\n{node_keys}\n'
        )
        cmd = [sys.executable, "-m", "jobreactor", "node", "-c", str(config)]
        node = subprocess.Popen([*cmd, "--processes", str(processes)])
        try:
            want = {"bp"} if processes == 1 else {f"bp-{i}" for i in range(1, processes + 1)}
            deadline = time.monotonic() + 60
            while {d["name"] for d in reactor.nodes()} != want:
                assert time.monotonic() < deadline, "nodes did not connect"
                time.sleep(0.05)
            done = threading.Event()
            left = [n]
            lock = threading.Lock()

            def fed(_: dict[str, Any]) -> None:
                with lock:
                    left[0] -= 1
                    if left[0] == 0:
                        done.set()

            start = time.perf_counter()
            reactor.enqueue_many(((job, {"i": i}, opts) for i in range(n)), success=fed)
            assert done.wait(600), f"{left[0]} jobs left"
            return n / (time.perf_counter() - start)
        finally:
            node.terminate()
            node.wait(30)
    finally:
        reactor.stop(timeout=15)


def cron_lateness(ticks: int) -> list[float]:
    reactor = Reactor(
        logger_method="WARNING", log_job_processing=False, merge_job_itself_to_args=True
    )
    reactor.run()
    lateness: list[float] = []
    enough = threading.Event()
    registry = Registry()

    @registry.job("tick")
    def tick(args: dict[str, Any]) -> None:
        lateness.append(time.time() - args["job_itself"]["run_at_ts"])
        if len(lateness) >= ticks:
            enough.set()

    try:
        reactor.start_distributor("127.0.0.1", 0)
        reactor.start_node("cron", "memory", registry=registry)
        handle = reactor.enqueue("tick", {}, {"cron": "* * * * * *"})
        assert handle is not None
        assert enough.wait(ticks + 30)
        reactor.cancel(handle.id)
    finally:
        reactor.stop(timeout=15)
    return sorted(lateness)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.processes")
    parser.add_argument("--noop", type=int, default=100_000, help="no-op jobs per run")
    parser.add_argument("--burn", type=int, default=400, help="CPU-bound jobs per run")
    parser.add_argument("--ticks", type=int, default=30, help="cron ticks for lateness")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        # A CPU-bound body runs inline on the loop: a small window keeps each loop turn short
        # (with prefetch 900 one node would take every job and starve its heartbeats).
        small = "concurrency = 2\nprefetch = 2"
        runs = [
            ("p_noop", args.noop, 1, "concurrency = 100", None),
            ("p_noop", args.noop, 2, "concurrency = 100", None),
            ("p_burn", args.burn, 1, small, None),
            ("p_burn", args.burn, 2, small, None),
            ("p_burn", args.burn, 1, "concurrency = 4\nprefetch = 4", {"defer": "process"}),
        ]
        for job, n, processes, keys, opts in runs:
            rate = throughput(processes, job, n, Path(tmp), keys, opts)
            how = ' defer="process"' if opts else ""
            print(f"{job:7} processes={processes}{how}: {rate:10,.0f} jobs/s  ({_load()})")
    late = cron_lateness(args.ticks)
    p99 = late[min(len(late) - 1, int(len(late) * 0.99))]
    print(
        f"cron lateness over {len(late)} ticks: p50 {late[len(late) // 2] * 1000:.2f} ms, "
        f"p99 {p99 * 1000:.2f} ms, max {late[-1] * 1000:.2f} ms  ({_load()})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
