"""Web figures (issue 9): a Flask app under `gunicorn -w 4` with the jobreactor recipe.

    python -m bench.web [--workers 4] [--seconds 10] [--connections 32]

1. requests/s of `GET /hello` and of `GET /enqueue/<n>` (one `JR.enqueue` per request), by
   `wrk` (apt install wrk) when it is installed, else by a Python client (slower: it shares the
   CPUs with the server, so compare its two figures with each other only);
2. the time spent inside `JR.enqueue` in a request, p50/p99, while that load runs: a sampler
   reads `enqueue_us` from the app's answers (examples/web/common.py times the call);
3. how long a node that uses discovery takes to start using a new distributor: a distributor
   starts in this process (port 0, discovery), and we time until the node has joined it.
Nodes and the registry use a private redis-server. Numbers are noisy on a shared machine:
compare runs made back to back.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench.harness import REGISTRY, RedisServer, _child_env, free_port, stop_processes, wait_until

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "web"
GROUP = "bench-web"


def _start_gunicorn(workdir: Path, workers: int, redis_url: str, loop_nice: int) -> tuple[Any, str]:
    port = free_port()
    conf = workdir / "gunicorn_conf.py"  # examples/web/gunicorn_hooks.py, with loop_nice
    conf.write_text(
        "from jobreactor.contrib.gunicorn import hooks\n"
        f"post_worker_init, worker_exit = hooks(loop_nice={loop_nice})\n"
    )
    env = _child_env({"JOBREACTOR_DISCOVERY_URL": redis_url, "JOBREACTOR_GROUP": GROUP})
    argv = [sys.executable, "-m", "gunicorn", "-c", str(conf), "-w", str(workers),
            "-b", f"127.0.0.1:{port}", "--no-control-socket", "--backlog", "2048",
            "flask_app:app"]  # fmt: skip
    log = (workdir / "gunicorn.log").open("wb")
    proc = subprocess.Popen(argv, cwd=EXAMPLES, env=env, stdout=log, stderr=subprocess.STDOUT)
    REGISTRY.add(proc)
    url = f"http://127.0.0.1:{port}"

    def serving() -> bool:
        try:
            return httpx.get(f"{url}/hello", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(serving, 30, "gunicorn to answer")

    def booted() -> bool:
        text = (workdir / "gunicorn.log").read_text()
        return text.count("jobreactor distributor listening") >= workers

    wait_until(booted, 30, "every worker's distributor")
    return proc, url


def _start_node(workdir: Path, redis_url: str) -> Any:
    config = workdir / "node.toml"
    config.write_text(
        "\n".join([
            'name = "bench-web-node"',
            f'job_directory = "{EXAMPLES / "jobs"}"',
            f'discovery_url = "{redis_url}"',
            f'group = "{GROUP}"',
            "concurrency = 64",
            'logger_method = "WARNING"',
            "log_job_processing = false",
        ]) + "\n"
    )  # fmt: skip
    log = (workdir / "node.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobreactor", "node", "--config", str(config)],
        env=_child_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    REGISTRY.add(proc)
    return proc


def _wrk(url: str, seconds: int, connections: int) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", url],
        capture_output=True, text=True, check=True, timeout=seconds + 30,
    ).stdout  # fmt: skip
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "non_2xx": float(errors.group(1)) if errors else 0.0}


def _python_load(url: str, seconds: int, connections: int) -> dict[str, float]:
    stop = time.monotonic() + seconds
    counts = [0] * connections

    def run(i: int) -> None:
        with httpx.Client(timeout=30) as client:
            while time.monotonic() < stop:
                client.get(url).raise_for_status()
                counts[i] += 1

    threads = [threading.Thread(target=run, args=(i,)) for i in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"rps": sum(counts) / seconds, "non_2xx": 0.0}


def _load(url: str, seconds: int, connections: int) -> dict[str, float]:
    if shutil.which("wrk"):
        return _wrk(url, seconds, connections)
    return _python_load(url, seconds, connections)


def _sample_enqueue(url: str, stop: threading.Event, out: list[float]) -> None:
    with httpx.Client(base_url=url, timeout=30) as client:
        n = 10**9
        while not stop.is_set():
            n += 1
            out.append(float(client.get(f"/enqueue/{n}").json()["enqueue_us"]))


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def _discovery_latency(redis_url: str, rounds: int) -> list[float]:
    """Seconds from start_distributor's return to a discovering node having joined it."""
    from jobreactor import Reactor

    times = []
    for _ in range(rounds):
        reactor = Reactor(logger_method="WARNING")
        reactor.run()
        start = time.perf_counter()
        reactor.start_distributor("127.0.0.1", 0, discovery_url=redis_url, group=GROUP)
        reactor.wait_for_node("bench-web-node", timeout=30)
        times.append(time.perf_counter() - start)
        reactor.stop(timeout=10)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=10, help="discovery latency rounds")
    parser.add_argument("--loop-nice", type=int, default=10, help="the recipe's default: 10")
    parser.add_argument(
        "--latency",
        action="store_true",
        help="instead: time inside JR.enqueue / await JR.aenqueue vs a plain HSET (issue 16)",
    )
    parser.add_argument("--trees", default=".", help="--latency: jobreactor trees, comma-separated")
    parser.add_argument("--requests", type=int, default=1000, help="--latency: per figure")
    parser.add_argument("--only", default="", help='--latency: e.g. "redis,flask"')
    opts = parser.parse_args()
    if opts.latency:
        from bench.web_latency import main as latency

        latency(opts.trees, opts.requests, opts.only, opts.loop_nice)
        return
    workdir = Path(tempfile.mkdtemp(prefix="bench-web-"))
    redis = RedisServer(workdir)
    results: dict[str, Any] = {
        "workers": opts.workers,
        "load": "wrk" if shutil.which("wrk") else "python",
    }
    try:
        node = _start_node(workdir, redis.url())
        server, url = _start_gunicorn(workdir, opts.workers, redis.url(), opts.loop_nice)
        _load(f"{url}/hello", 2, opts.connections)  # warm-up
        results["hello"] = _load(f"{url}/hello", opts.seconds, opts.connections)
        samples: list[float] = []
        stop = threading.Event()
        sampler = threading.Thread(target=_sample_enqueue, args=(url, stop, samples))
        sampler.start()
        try:
            results["enqueue"] = _load(f"{url}/enqueue/1", opts.seconds, opts.connections)
        finally:
            stop.set()
            sampler.join(30)
        results["enqueue_us"] = {
            "samples": len(samples),
            "p50": statistics.median(samples),
            "p99": _percentile(samples, 0.99),
            "max": max(samples),
        }
        stop_processes([server])
        times = _discovery_latency(redis.url(), opts.rounds)
        results["node_joins_new_distributor_ms"] = {
            "p50": statistics.median(times) * 1000,
            "max": max(times) * 1000,
        }
        stop_processes([node])
    finally:
        REGISTRY.stop_all()
        redis.stop()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
