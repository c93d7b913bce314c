"""Time inside one enqueue in a web request, beside a plain HSET (issue 16's figures).

    python -m bench.web --latency [--trees /work/wt/base,.] [--requests 1000]

For each jobreactor source tree (`--trees`: "before" and "after" in one run), each
distributor storage (redis, then memory as the baseline), and each app (Flask under
`gunicorn -w 4`: `JR.enqueue` in a sync view; FastAPI under `uvicorn --workers 4`:
`await JR.aenqueue`), it serves bench/webapps/latency_apps.py and measures, from the app's own
timing of the call (`{"us": ...}`), p50/p99 of `/enqueue` and of `/hset` (a plain Redis HSET
from the same kind of view), sequentially (one connection) and at 16 connections. A node
(memory storage, discovery) runs the jobs. The load average is printed with every row: the
figures are only comparable within one run.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench.harness import REGISTRY, RedisServer, free_port, stop_processes, wait_until

APPS = Path(__file__).resolve().parent / "webapps"
JOBS = Path(__file__).resolve().parent.parent / "examples" / "web" / "jobs"
GROUP = "bench-latency"
SERVERS = {
    "flask": ["gunicorn", "-c", "{conf}", "-w", "4", "-b", "127.0.0.1:{port}",
              "--no-control-socket", "--backlog", "2048", "latency_apps:flask_app"],
    "fastapi": ["uvicorn", "--workers", "4", "--port", "{port}", "--no-access-log",
                "latency_apps:asgi_app"],
}  # fmt: skip


def _env(tree: Path, redis_url: str, storage: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tree), str(APPS)])
    env.update({
        "PYTHONUNBUFFERED": "1",
        "BENCH_REDIS_URL": redis_url,
        "JOBREACTOR_DISCOVERY_URL": redis_url,
        "JOBREACTOR_GROUP": GROUP,
        "JOBREACTOR_STORAGE": storage,
        "JOBREACTOR_HIREDIS_URL": redis_url,
        "JOBREACTOR_REDIS_PREFIX": f"bench{os.getpid()}",
        "JOBREACTOR_LOGGER_METHOD": "WARNING",
        "JOBREACTOR_LOG_JOB_PROCESSING": "false",
    })  # fmt: skip
    return env


def _serve(app: str, env: dict[str, str], workdir: Path, loop_nice: int) -> tuple[Any, str]:
    port = free_port()
    conf = workdir / "latency_gunicorn.py"
    conf.write_text(
        "from jobreactor.contrib.gunicorn import hooks\n"
        f"post_worker_init, worker_exit = hooks(loop_nice={loop_nice})\n"
    )
    argv = [a.format(conf=conf, port=port) for a in SERVERS[app]]
    log = (workdir / f"{app}.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", *argv], cwd=APPS, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    REGISTRY.add(proc)
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            return httpx.get(f"{url}/enqueue/0", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(answers, 60, f"{app} to serve")
    return proc, url


def _node(env: dict[str, str], workdir: Path) -> Any:
    config = workdir / "latency_node.toml"
    config.write_text(
        "\n".join([
            'name = "bench-latency-node"',
            f'job_directory = "{JOBS}"',
            f'discovery_url = "{env["JOBREACTOR_DISCOVERY_URL"]}"',
            f'group = "{GROUP}"',
            f'redis_prefix = "{env["JOBREACTOR_REDIS_PREFIX"]}"',
            "concurrency = 64",
            'logger_method = "WARNING"',
            "log_job_processing = false",
        ]) + "\n"
    )  # fmt: skip
    log = (workdir / "latency_node.log").open("ab")
    argv = [sys.executable, "-m", "jobreactor", "node", "--config", str(config)]
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    REGISTRY.add(proc)
    return proc


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
        "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] / 1000,
        "req_s": len(ordered) / elapsed,
        "load_avg_1m": os.getloadavg()[0],
    }


def _one_server(
    tree: Path,
    storage: str,
    app: str,
    redis: RedisServer,
    workdir: Path,
    requests: int,
    loop_nice: int,
) -> dict[str, Any]:
    env = _env(tree, redis.url(), storage)
    node = _node(env, workdir)
    server, url = _serve(app, env, workdir, loop_nice)
    rows: dict[str, Any] = {}
    try:
        _sample(url, "/enqueue/{n}", 200, 4)  # warm-up: every worker connected
        for path in ("/enqueue/{n}", "/hset/{n}"):
            for connections in (1, 16):
                key = f"{path.split('/')[1]} c{connections}"
                rows[key] = _sample(url, path, requests, connections)
    finally:
        stop_processes([server, node])
    return rows


def run(
    trees: list[Path], requests: int, storages: list[str], apps: list[str], loop_nice: int
) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-latency-"))
    redis = RedisServer(workdir)
    results: dict[str, Any] = {}
    try:
        for storage in storages:
            for app in apps:
                for tree in trees:
                    label = f"{tree.name} {storage} {app}"
                    results[label] = _one_server(
                        tree, storage, app, redis, workdir, requests, loop_nice
                    )
                    print(label, json.dumps(results[label]), flush=True)
    finally:
        REGISTRY.stop_all()
        redis.stop()
    return results


def main(trees: str, requests: int, only: str = "", loop_nice: int = 10) -> None:
    """`only`: e.g. "redis,flask" to run just those storages/apps."""
    chosen = [Path(t).resolve() for t in trees.split(",")]
    picked = set(only.split(",")) if only else set()
    storages = [s for s in ("redis", "memory") if not picked or s in picked] or ["redis", "memory"]
    apps = [a for a in ("flask", "fastapi") if not picked or a in picked] or ["flask", "fastapi"]
    results = run(chosen, requests, storages, apps, loop_nice)
    print(json.dumps(results, indent=2))
