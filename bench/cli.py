"""`python -m bench`: run the workloads, print a markdown table, write bench/results/*.json."""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import logging
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from bench import compare
from bench.context import Context, Params
from bench.harness import REGISTRY, RedisServerMissing, RedisStorageUnavailable
from bench.report import (
    FAILED,
    INVALID,
    SKIPPED,
    Fig,
    machine_info,
    markdown_table,
    versions,
    write_json,
)
from bench.scale import SCALE_DEADLINES, SCALE_WORKLOADS
from bench.workloads import DEADLINES, WORKLOADS, Figs

WORKLOADS = {**WORKLOADS, **SCALE_WORKLOADS}
DEADLINES = {**DEADLINES, **SCALE_DEADLINES}

RESULTS_DIR = Path(__file__).resolve().parent / "results"
NOT_AVAILABLE = "redis storage: not available"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="jobreactor benchmark (issue 6): throughput, latency, delayed jobs, memory, "
        "idle CPU. Prints a markdown table; writes JSON to bench/results/. Exit status 1 if "
        "any row is FAILED or INVALID (a job not run exactly once, a delayed job run early).",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: whole run < 60 s")
    parser.add_argument("--n", type=int, default=None, help="throughput jobs per case "
                        "(default 100000; 5000 with --quick)")  # fmt: skip
    parser.add_argument("--storage", choices=["memory", "redis", "both"], default="both",
                        help="node storage to measure (default both)")  # fmt: skip
    parser.add_argument("--distributor-storage", choices=["memory", "redis"], default="memory",
                        help="the in-process distributor's storage (redis: it journals every "
                        "job; default memory)")  # fmt: skip
    parser.add_argument("--only", default=",".join(WORKLOADS),
                        help=f"comma-separated subset of: {','.join(WORKLOADS)}")  # fmt: skip
    parser.add_argument("--concurrency", type=int, default=100, help="node concurrency")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR,
                        help="where the JSON goes (default bench/results)")  # fmt: skip
    parser.add_argument("--compare", metavar="REF", default=None,
                        help="run the workloads against REF too (a git ref, checked out in a "
                        "temporary worktree, or a checkout's path), alternating rounds, and print "
                        "both sides and the change in %%")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=3,
                        help="with --compare: rounds per side (default 3)")  # fmt: skip
    parser.add_argument("--keep-logs", action="store_true",
                        help="keep the temp dir with node and redis logs")  # fmt: skip
    args = parser.parse_args(argv)
    only = [w.strip() for w in args.only.split(",") if w.strip()]
    unknown = [w for w in only if w not in WORKLOADS]
    if unknown or not only:
        parser.error(f"--only: unknown workload(s) {unknown}; choose from {','.join(WORKLOADS)}")
    args.only = [w for w in WORKLOADS if w in only]
    if args.n is not None and args.n < 1:
        parser.error("--n must be >= 1")
    return args


def run_one(ctx: Context, name: str, storage: str) -> tuple[Figs, float]:
    """Run one workload in a watchdog thread; a workload that overruns its deadline is FAILED."""
    figs: Figs = {}
    box: dict[str, BaseException] = {}

    def target() -> None:
        try:
            WORKLOADS[name](ctx, storage, figs)
        except BaseException as exc:  # noqa: BLE001 -- reported below, in the main thread
            box["error"] = exc

    deadline = DEADLINES[name](ctx)
    t0 = time.monotonic()
    thread = threading.Thread(target=target, name=f"bench-{name}-{storage}", daemon=True)
    thread.start()
    thread.join(deadline)
    elapsed = time.monotonic() - t0
    if thread.is_alive():
        figs[f"{name}/deadline"] = Fig(
            "", "run", None, status=FAILED,
            note=f"timed out: still running after its hard deadline of {deadline:.0f} s",
        )  # fmt: skip
        ctx.abandon_all()
        return figs, elapsed
    error = box.get("error")
    if isinstance(error, RedisStorageUnavailable):
        ctx.redis_storage_unavailable = str(error)
        return {"na": Fig("", NOT_AVAILABLE, None, status=SKIPPED, note=str(error))}, elapsed
    if isinstance(error, RedisServerMissing):
        return {"na": Fig("", "needs redis-server", None, status=SKIPPED, note=str(error))}, elapsed
    if error is not None:
        text = str(error) or type(error).__name__
        if type(error).__module__ != "bench.harness":
            text = f"{type(error).__name__}: {text}"
        figs[f"{name}/error"] = Fig("", "run", None, status=FAILED, note=text[:400])
        ctx.drop_shared(storage)  # whatever state it left must not leak into the next workload
    return figs, elapsed


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.compare is not None:
        return compare.main(args.compare, args.rounds, sys.argv[1:] if argv is None else argv)
    params = Params.build(args.quick, args.n, args.concurrency)
    params.distributor_storage = args.distributor_storage
    storages = ["memory", "redis"] if args.storage == "both" else [args.storage]
    started = dt.datetime.now().astimezone()
    console = Console(stderr=True)
    machine = machine_info()
    atexit.register(REGISTRY.stop_all)

    tmp = tempfile.TemporaryDirectory(prefix="jobreactor-bench-")
    workdir = Path(tmp.name)
    if args.keep_logs:
        tmp._finalizer.detach()  # type: ignore[attr-defined]  # keep the directory
    ctx = Context(params, workdir, console)
    # The in-process reactor's log lines go to a file: on stderr they would tear the progress bars.
    app_log = logging.FileHandler(workdir / "app.log")
    app_log.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.getLogger("jobreactor").addHandler(app_log)
    all_figs: list[Fig] = []
    durations: dict[str, float] = {}
    interrupted = False
    t_start = time.monotonic()
    console.print(f"[bold]jobreactor bench[/] {'--quick ' if args.quick else ''}"
                  f"storage={','.join(storages)} workloads={','.join(args.only)} "
                  f"(logs in {workdir})")  # fmt: skip
    try:
        with ctx.progress:
            for storage in storages:
                for name in args.only:
                    if storage == "redis" and ctx.redis_storage_unavailable is not None:
                        figs: Figs = {"na": Fig("", NOT_AVAILABLE, None, status=SKIPPED,
                                                note="as above")}  # fmt: skip
                        elapsed = 0.0
                    else:
                        figs, elapsed = run_one(ctx, name, storage)
                    durations[f"{name}/{storage}"] = round(elapsed, 2)
                    for fig in figs.values():
                        fig.workload, fig.storage = name, storage
                        all_figs.append(fig)
                ctx.drop_shared(storage)
    except KeyboardInterrupt:
        interrupted = True
        console.print("[red]interrupted: stopping processes; partial results follow")
    finally:
        ctx.close()
        REGISTRY.stop_all()

    total_s = time.monotonic() - t_start
    table = markdown_table(all_figs)
    header = (
        f"jobreactor bench, {started:%Y-%m-%d %H:%M}, {'quick, ' if args.quick else ''}"
        f"N={params.n:,}, node concurrency {params.concurrency}; {machine['cpus']} cores "
        f"({machine['cpu_model']}), Python {machine['python']}; {total_s:.0f} s"
    )
    print(f"\n{header}\n\n{table}\n")
    extra: dict[str, Any] = {
        "machine": machine,
        "versions": versions(ctx.redis_version),
        "durations_s": {**durations, "total": round(total_s, 2)},
        "interrupted": interrupted,
        "table_markdown": table,
    }
    parameters = {
        **{k: getattr(params, k) for k in params.__slots__},  # type: ignore[attr-defined]
        "storage": storages,
        "only": args.only,
        "distributor_storage": args.distributor_storage,
        "node_processes": "python -m jobreactor node --config <toml>",
    }
    path = write_json(args.results_dir, started, parameters, all_figs, extra)
    console.print(f"results: {path}")
    if args.keep_logs:
        console.print(f"logs kept in {workdir}")
    else:
        tmp.cleanup()
    if interrupted:
        return 130
    bad = [f for f in all_figs if f.status in (FAILED, INVALID)]
    if bad:
        console.print(f"[red]{len(bad)} row(s) FAILED or INVALID (exit status 1)")
    return 1 if bad else 0
