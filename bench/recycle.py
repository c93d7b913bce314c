"""Recycle figures (issue 17): gunicorn `--max-requests` with long jobs out on nodes.

    python -m bench.recycle [--tree PATH] [--requests 1500] [--job-seconds 5] [--workers 4]

For memory and Redis storage, with and without `--max-requests 200`: `examples/web/flask_app`
under `gunicorn -w 4` with the recipe's hooks, two discovering nodes (concurrency 1000), and
1,500 requests (16 at a time) that each enqueue a 5 s job with a named feedback. Reported:
request latency (max, p99), the requests that failed, the longest worker exit hook (what
jobreactor's own stop took in a recycling worker; the rest of a recycle is gunicorn reaping,
forking and booting the replacement), and the feedbacks lost (answered requests whose
feedback never fired, counted once nothing has fired for 10 s). `--tree` runs
another checkout's jobreactor and examples (e.g. the base commit: before/after on one machine,
back to back). Load average is printed with the figures: compare runs made together only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from bench.harness import REGISTRY, RedisServer, free_port, stop_processes, wait_until

REPO = Path(__file__).resolve().parent.parent


def _env(tree: Path, out: Path, extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(PYTHONPATH=str(tree), PYTHONUNBUFFERED="1", WEB_EXAMPLE_OUT=str(out), **extra)
    return env


def _jr_env(redis_url: str, group: str, storage: str) -> dict[str, str]:
    return {
        "JOBREACTOR_DISCOVERY_URL": redis_url,
        "JOBREACTOR_HIREDIS_URL": redis_url,
        "JOBREACTOR_GROUP": group,
        "JOBREACTOR_STORAGE": storage,
    }


def _start_nodes(tree: Path, work: Path, redis_url: str, group: str) -> list[Any]:
    procs = []
    for i in range(2):
        config = work / f"node{i}.toml"
        config.write_text(
            "\n".join([
                f'name = "recycle-node{i}"',
                f'job_directory = "{tree / "examples" / "web" / "jobs"}"',
                f'discovery_url = "{redis_url}"',
                f'group = "{group}"',
                "concurrency = 1000",
                'logger_method = "WARNING"',
                "log_job_processing = false",
            ]) + "\n"
        )  # fmt: skip
        log = (work / f"node{i}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "jobreactor", "node", "--config", str(config)],
            cwd=work,  # not here: `python -m` puts the cwd first on sys.path (see bench.web)
            env=_env(tree, work / "out", {"NODE": f"node{i}"}),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        REGISTRY.add(proc)
        procs.append(proc)
    return procs


# The recipe's hooks (examples/web/gunicorn_hooks.py), timed: each worker's life in
# timeline.jsonl, to say where a recycle's time goes (`_phases`).
_TIMED_HOOKS = """
import json, sys, time
sys.path.insert(0, {examples!r})
from gunicorn_hooks import post_worker_init as _init, worker_exit as _exit


def _note(what, pid):
    with open({out!r}, "a") as f:
        f.write(json.dumps({{"t": time.time(), "what": what, "pid": pid}}) + "\\n")


def post_fork(server, worker):
    _note("forked", worker.pid)


def post_worker_init(worker):
    import atexit, threading
    _note("init", worker.pid)
    _init(worker)
    _note("serving", worker.pid)
    # Interpreter shutdown: threading's exit hooks run first (then non-daemon threads are
    # joined), atexit's later.
    threading._register_atexit(_note, "threads_shutdown", worker.pid)
    atexit.register(_note, "atexit", worker.pid)


def worker_exit(server, worker):
    _note("exit", worker.pid)
    _exit(server, worker)
    _note("exited", worker.pid)
    if {fast_exit!r}:  # --fast-exit: the process ends here (atexit handlers run first)
        import atexit, os
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def child_exit(server, worker):
    _note("reaped", worker.pid)
"""


def _start_gunicorn(tree: Path, work: Path, env: dict[str, str], opts: Any, recycle: bool) -> Any:
    port = free_port()
    conf = work / "gunicorn_timed.py"
    examples = str(tree / "examples" / "web")
    timeline = str(work / "timeline.jsonl")
    conf.write_text(_TIMED_HOOKS.format(examples=examples, out=timeline, fast_exit=opts.fast_exit))
    argv = [sys.executable, "-m", "gunicorn", "-c", str(conf), "-w", str(opts.workers),
            "-b", f"127.0.0.1:{port}", "--no-control-socket", "--backlog", "2048"]  # fmt: skip
    if recycle:
        argv += ["--max-requests", str(opts.max_requests)]
        if opts.jitter:
            argv += ["--max-requests-jitter", str(opts.jitter)]
    if opts.preload:
        argv += ["--preload"]  # the app (and jobreactor) imported once, in the master
    log = (work / "gunicorn.log").open("wb")
    proc = subprocess.Popen(
        [*argv, "flask_app:app"],
        cwd=tree / "examples" / "web",
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    REGISTRY.add(proc)
    url = f"http://127.0.0.1:{port}"

    def booted() -> bool:
        text = (work / "gunicorn.log").read_text()
        return bool(text.count("jobreactor distributor listening") >= opts.workers)

    wait_until(booted, 60, "every worker's distributor")
    return proc, url


def _fire(url: str, count: int, seconds: float) -> tuple[dict[int, str], list[float], int]:
    answers: dict[int, str] = {}
    latencies: list[float] = []
    failed = [0]
    limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
    with httpx.Client(base_url=url, timeout=120, limits=limits) as client:

        def one(n: int) -> None:
            start = time.perf_counter()
            try:
                response = client.get(f"/enqueue/{n}?s={seconds}")
                response.raise_for_status()
                answers[n] = response.json()["id"]
            except httpx.HTTPError:
                failed[0] += 1
            latencies.append(time.perf_counter() - start)

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(one, range(count)))
    return answers, latencies, failed[0]


def _log(work: Path) -> str:
    return (work / "gunicorn.log").read_text(errors="replace")


def _fed(out: Path) -> set[int]:
    path = out / "feedback.jsonl"
    if not path.exists():
        return set()
    return {json.loads(line)["n"] for line in path.read_text().splitlines() if line}


def _settle(
    out: Path, answers: dict[int, str], quiet_s: float = 10.0, limit_s: float = 120.0
) -> int:
    """Wait until every feedback fired, or none fired for `quiet_s`; how many are missing."""
    deadline = time.monotonic() + limit_s
    seen, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        fed = _fed(out)
        if set(answers) <= fed:
            return 0
        if len(fed) != seen:
            seen, since = len(fed), time.monotonic()
        elif time.monotonic() - since > quiet_s:
            break
        time.sleep(0.5)
    return len(set(answers) - _fed(out))


def _phases(work: Path) -> dict[str, float]:
    """Where recycles spent their time (max over recycles, seconds), and the longest span with
    no worker serving: from a worker's decision to recycle (`exit`) to its replacement
    serving, through its exit hook, its reaping by the master, the fork and the boot."""
    path = work / "timeline.jsonl"
    if not path.exists():
        return {}
    events = [json.loads(line) for line in path.read_text().splitlines() if line]
    events.sort(key=lambda e: e["t"])
    at: dict[tuple[str, int], float] = {(e["what"], e["pid"]): e["t"] for e in events}
    spans: dict[str, list[float]] = {}

    def span(name: str, start: tuple[str, int], end: tuple[str, int]) -> None:
        if start in at and end in at:
            spans.setdefault(name, []).append(at[end] - at[start])

    forked = [e for e in events if e["what"] == "forked"]
    for e in events:
        if e["what"] == "exit":
            pid = e["pid"]
            span("exit_hook", ("exit", pid), ("exited", pid))
            span("process_end_and_reap", ("exited", pid), ("reaped", pid))
            span("exited_to_threads_shutdown", ("exited", pid), ("threads_shutdown", pid))
            span("threads_joined_to_atexit", ("threads_shutdown", pid), ("atexit", pid))
            span("atexit_to_reaped", ("atexit", pid), ("reaped", pid))
            after = next((f for f in forked if f["t"] >= at.get(("reaped", pid), 1e18)), None)
            if after is not None:
                span("reap_to_fork", ("reaped", pid), ("forked", after["pid"]))
    for f in forked:
        span("fork_to_init (app import)", ("forked", f["pid"]), ("init", f["pid"]))
        span("init_to_serving (reactor start)", ("init", f["pid"]), ("serving", f["pid"]))
    out = {name: round(max(values), 3) for name, values in spans.items()}
    serving, gap, since = 0, 0.0, None
    for e in events:
        if e["what"] == "serving":
            serving += 1
            if serving == 1 and since is not None:
                gap = max(gap, e["t"] - since)
        elif e["what"] == "exit":
            serving -= 1
            if serving == 0:
                since = e["t"]
    out["no_worker_serving_max"] = round(gap, 3)
    return out


def one_case(
    tree: Path, redis: RedisServer, storage: str, recycle: bool, opts: Any
) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"bench-recycle-{storage}-"))
    (work / "out").mkdir()
    group = f"recycle-{os.getpid()}-{time.monotonic_ns()}"
    nodes = _start_nodes(tree, work, redis.url(), group)
    env = _env(tree, work / "out", _jr_env(redis.url(), group, storage))
    server, url = _start_gunicorn(tree, work, env, opts, recycle)
    try:
        time.sleep(2.0)  # the nodes dial the workers they discover
        load_before = os.getloadavg()[0]
        answers, latencies, failed = _fire(url, opts.requests, opts.job_seconds)
        lost = _settle(work / "out", answers)
        stops = [float(x) for x in re.findall(r"jobreactor stopped in ([0-9.]+)s", _log(work))]
        return {
            "storage": storage,
            "max_requests": opts.max_requests if recycle else None,
            "max_requests_jitter": opts.jitter if recycle else None,
            "preload": opts.preload,
            "fast_exit": opts.fast_exit,
            "request_max_s": round(max(latencies), 3),
            "request_p99_s": round(statistics.quantiles(latencies, n=100)[98], 3),
            "failed_requests": failed,
            "answered": len(answers),
            "lost_feedbacks": lost,
            # What the worker's exit hook itself took (the rest is gunicorn: reap, fork, boot).
            "worker_stops": len(stops),
            "worker_stop_max_s": max(stops, default=0.0),
            "phases_max_s": _phases(work),
            "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        }
    finally:
        stop_processes([server, *nodes])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, default=REPO, help="checkout whose code to run")
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--job-seconds", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--max-requests", type=int, default=200)
    parser.add_argument("--jitter", type=int, default=0, help="--max-requests-jitter")
    parser.add_argument("--preload", action="store_true", help="gunicorn --preload")
    parser.add_argument(
        "--fast-exit", action="store_true", help="end a worker right after its exit hook"
    )
    parser.add_argument("--storage", choices=["memory", "redis", "both"], default="both")
    opts = parser.parse_args()
    storages = ["memory", "redis"] if opts.storage == "both" else [opts.storage]
    work = Path(tempfile.mkdtemp(prefix="bench-recycle-"))
    redis = RedisServer(work)
    results: list[dict[str, Any]] = []
    try:
        for storage in storages:
            for recycle in (False, True):
                results.append(one_case(opts.tree.resolve(), redis, storage, recycle, opts))
                print(json.dumps(results[-1]), flush=True)
    finally:
        REGISTRY.stop_all()
        redis.stop()
    print(json.dumps({"tree": str(opts.tree), "cases": results}, indent=2))


if __name__ == "__main__":
    main()
