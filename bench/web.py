"""Web figures: Flask under `gunicorn -w 4` (and FastAPI under uvicorn) with the jobreactor recipe.

    python -m bench.web [--workers 4] [--seconds 10] [--connections 32] [--loop-nice 10]
    python -m bench.web --latency [--trees /work/wt/base,.] [--requests 1000] [--only redis]

Default (issue 9):
1. requests/s of `GET /hello` and of `GET /enqueue/<n>` (one `JR.enqueue` per request), by
   `wrk` (apt install wrk) when it is installed, else by a Python client (slower: it shares the
   CPUs with the server, so compare its two figures with each other only);
2. the time spent inside `JR.enqueue` in a request, p50/p99, while that load runs: a sampler
   reads `enqueue_us` from the app's answers (examples/web/common.py times the call);
3. how long a node that uses discovery takes to start using a new distributor: a distributor
   starts in this process (port 0, discovery), and we time until the node has joined it.

`--latency` (issue 16): the time inside one enqueue in a request, beside a plain HSET. For each
jobreactor source tree (`--trees`: "before" and "after" in one run), each distributor storage
(redis, then memory as the baseline) and each app (Flask under `gunicorn -w 4`: `JR.enqueue` in
a sync view; FastAPI under `uvicorn --workers 4`: `await JR.aenqueue`), it serves
bench/webapps/latency_apps.py and measures, from the app's own timing of the call, p50/p99 of
`/enqueue` and of `/hset` (a plain Redis HSET from the same kind of view), sequentially (one
connection) and at 16 connections. The load average is printed with every row.

Nodes and the registry use a private redis-server. Numbers are noisy on a shared machine:
compare runs made back to back.
"""

from __future__ import annotations

import argparse
import json
import os
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
APPS = Path(__file__).resolve().parent / "webapps"
GROUP = "bench-web"
LATENCY_SERVERS = {
    "flask": ["gunicorn", "-c", "{conf}", "-w", "4", "-b", "127.0.0.1:{port}",
              "--no-control-socket", "--backlog", "2048", "latency_apps:flask_app"],
    "fastapi": ["uvicorn", "--workers", "4", "--port", "{port}", "--no-access-log",
                "latency_apps:asgi_app"],
}  # fmt: skip


# --- the servers and the node (both modes) -----------------------------------------------------


def _serve(argv: list[str], cwd: Path, env: dict[str, str], workdir: Path, probe: str) -> Any:
    """Start `python -m <argv>` in `cwd` (`{port}`, `{conf}` filled in); its url once `probe`
    answers 200. `{conf}` is the recipe's gunicorn hooks with `loop_nice` (env BENCH_NICE)."""
    port = free_port()
    conf = workdir / "gunicorn_conf.py"  # examples/web/gunicorn_hooks.py, with loop_nice
    conf.write_text(
        "from jobreactor.contrib.gunicorn import hooks\n"
        f"post_worker_init, worker_exit = hooks(loop_nice={env.get('BENCH_NICE', '10')})\n"
    )
    args = [a.format(conf=conf, port=port) for a in argv]
    log = (workdir / f"{argv[0]}.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", *args], cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    REGISTRY.add(proc)
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            return httpx.get(f"{url}{probe}", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(answers, 60, f"{argv[0]} to serve")
    return proc, url


def _node(env: dict[str, str], workdir: Path, name: str, group: str) -> Any:
    """A discovering node (memory storage) that runs examples/web/jobs."""
    config = workdir / f"{name}.toml"
    lines = [
        f'name = "{name}"',
        f'job_directory = "{EXAMPLES / "jobs"}"',
        f'discovery_url = "{env["JOBREACTOR_DISCOVERY_URL"]}"',
        f'group = "{group}"',
        "concurrency = 64",
        'logger_method = "WARNING"',
        "log_job_processing = false",
    ]
    if "JOBREACTOR_REDIS_PREFIX" in env:
        lines.append(f'redis_prefix = "{env["JOBREACTOR_REDIS_PREFIX"]}"')
    config.write_text("\n".join(lines) + "\n")
    log = (workdir / f"{name}.log").open("ab")
    argv = [sys.executable, "-m", "jobreactor", "node", "--config", str(config)]
    # In `workdir`, not here: `python -m` puts the working directory first on sys.path, and the
    # node must import the tree under test (PYTHONPATH), not the checkout the bench runs from.
    proc = subprocess.Popen(argv, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    REGISTRY.add(proc)
    return proc


def _percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


# --- default mode: throughput, time inside enqueue under load, discovery latency ---------------


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


def throughput(opts: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-web-"))
    redis = RedisServer(workdir)
    load = "wrk" if shutil.which("wrk") else "python"
    results: dict[str, Any] = {"workers": opts.workers, "load": load}
    try:
        env = _child_env({"JOBREACTOR_DISCOVERY_URL": redis.url(), "JOBREACTOR_GROUP": GROUP,
                          "BENCH_NICE": str(opts.loop_nice)})  # fmt: skip
        node = _node(env, workdir, "bench-web-node", GROUP)
        argv = ["gunicorn", "-c", "{conf}", "-w", str(opts.workers), "-b", "127.0.0.1:{port}",
                "--no-control-socket", "--backlog", "2048", "flask_app:app"]  # fmt: skip
        server, url = _serve(argv, EXAMPLES, env, workdir, "/hello")
        wait_until(lambda: _booted(workdir, opts.workers), 30, "every worker's distributor")
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
        ordered = sorted(samples)
        results["enqueue_us"] = {"samples": len(ordered), "p50": statistics.median(ordered),
                                 "p99": _percentile(ordered, 0.99), "max": ordered[-1]}  # fmt: skip
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
    return results


def _booted(workdir: Path, workers: int) -> bool:
    text = (workdir / "gunicorn.log").read_text()
    return text.count("jobreactor distributor listening") >= workers


# --- --latency: inside one enqueue vs a plain HSET (issue 16) ----------------------------------


def _latency_env(tree: Path, redis_url: str, storage: str, loop_nice: int) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tree), str(APPS)])
    env.update({
        "PYTHONUNBUFFERED": "1",
        "BENCH_REDIS_URL": redis_url,
        "BENCH_NICE": str(loop_nice),
        "JOBREACTOR_DISCOVERY_URL": redis_url,
        "JOBREACTOR_GROUP": "bench-latency",
        "JOBREACTOR_STORAGE": storage,
        "JOBREACTOR_HIREDIS_URL": redis_url,
        "JOBREACTOR_REDIS_PREFIX": f"bench{os.getpid()}",
        "JOBREACTOR_LOGGER_METHOD": "WARNING",
        "JOBREACTOR_LOG_JOB_PROCESSING": "false",
    })  # fmt: skip
    return env


def _sample(url: str, path: str, requests: int, connections: int) -> dict[str, float]:
    """`requests` GETs over `connections` keep-alive connections: the in-call times, req/s."""
    times: list[float] = []
    lock = threading.Lock()
    per = max(1, requests // connections)

    def run(offset: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            mine = []
            for i in range(per):
                response = client.get(path.format(n=offset * per + i))
                response.raise_for_status()
                mine.append(float(response.json()["us"]))
            with lock:
                times.extend(mine)

    start = time.perf_counter()
    threads = [threading.Thread(target=run, args=(c,)) for c in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    ordered = sorted(times)
    return {
        "p50_ms": statistics.median(ordered) / 1000,
        "p99_ms": _percentile(ordered, 0.99) / 1000,
        "req_s": len(ordered) / elapsed,
        "load_avg_1m": os.getloadavg()[0],
    }


def _one_server(env: dict[str, str], app: str, workdir: Path, requests: int) -> dict[str, Any]:
    node = _node(env, workdir, "bench-latency-node", env["JOBREACTOR_GROUP"])
    server, url = _serve(LATENCY_SERVERS[app], APPS, env, workdir, "/enqueue/0")
    rows: dict[str, Any] = {}
    try:
        _sample(url, "/enqueue/{n}", 200, 4)  # warm-up: every worker connected
        for path in ("/enqueue/{n}", "/hset/{n}"):
            for connections in (1, 16):
                rows[f"{path.split('/')[1]} c{connections}"] = _sample(
                    url, path, requests, connections
                )
    finally:
        stop_processes([server, node])
    return rows


def latency(opts: argparse.Namespace) -> dict[str, Any]:
    """`--only`: e.g. "redis,flask" to run just those storages/apps."""
    trees = [Path(t).resolve() for t in opts.trees.split(",")]
    picked = set(opts.only.split(",")) if opts.only else set()
    storages = [s for s in ("redis", "memory") if not picked or s in picked] or ["redis", "memory"]
    apps = [a for a in ("flask", "fastapi") if not picked or a in picked] or ["flask", "fastapi"]
    workdir = Path(tempfile.mkdtemp(prefix="bench-latency-"))
    redis = RedisServer(workdir)
    results: dict[str, Any] = {}
    try:
        for storage in storages:
            for app in apps:
                for tree in trees:
                    label = f"{tree.name} {storage} {app}"
                    env = _latency_env(tree, redis.url(), storage, opts.loop_nice)
                    results[label] = _one_server(env, app, workdir, opts.requests)
                    print(label, json.dumps(results[label]), flush=True)
    finally:
        REGISTRY.stop_all()
        redis.stop()
    return results


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
    results = latency(opts) if opts.latency else throughput(opts)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
