"""`jobreactor jobs ...`: the jobs stored in Redis (RedisMonitor on the command line), and the
pending jobs of live distributors (from the discovery registry, no node storage needed).

Output: a rich table on a terminal; plain tab-separated lines (a `# title`, a header, rows)
when stdout is not one; `--json` for scripts. Exit codes as in cli.py: 1 no such job,
2 usage, 3 Redis unreachable.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from collections.abc import Callable
from dataclasses import fields
from typing import Any

from jobreactor.cli_ops import OPS_ACTIONS, add_ops_parsers
from jobreactor.errors import StorageError, StorageUnavailable
from jobreactor.job import FINISHED_STATUSES, JobRecord, JobStatus
from jobreactor.metrics import PENDING_SAMPLE
from jobreactor.monitor import RedisMonitor
from jobreactor.storage.codec import dump_json, redact_url
from jobreactor.storage.connect import DEFAULT_REDIS_URL, redis_errors

EXIT_NOT_FOUND = 1
EXIT_CONFIG = 2
EXIT_REDIS = 3

_STATUSES = [status.value for status in JobStatus]
_ERROR_WIDTH = 60
_LIST_COLUMNS = ("id", "node", "name", "status", "attempt", "next run", "last error")


def add_jobs_parser(commands: Any) -> None:
    jobs = commands.add_parser(
        "jobs",
        help="inspect and manage the jobs stored in Redis",
        description="Inspect and manage the jobs Redis nodes store (exit 3: Redis unreachable).",
    )
    jobs.add_argument(
        "--redis-url",
        default=os.environ.get("JOBREACTOR_HIREDIS_URL") or DEFAULT_REDIS_URL,
        help="default: $JOBREACTOR_HIREDIS_URL or %(default)s",
    )
    jobs.add_argument(
        "--prefix",
        default=os.environ.get("JOBREACTOR_REDIS_PREFIX") or "jr",
        help="key prefix the nodes use (redis_prefix; default: $JOBREACTOR_REDIS_PREFIX or jr)",
    )
    actions = jobs.add_subparsers(dest="jobs_command", required=True)

    listing = actions.add_parser(
        "list", help="stored jobs, read a page at a time; the shown ones soonest due first"
    )
    listing.add_argument("--node", help="only this node's jobs")
    listing.add_argument("--status", type=_status, help=f"only this status: {', '.join(_STATUSES)}")
    listing.add_argument("--limit", type=int, default=50, help="rows at most (default 50)")
    listing.add_argument("--json", action="store_true", help="one JSON document")

    show = actions.add_parser("show", help="one job's whole record")
    show.add_argument("id")
    show.add_argument("--json", action="store_true", help="print JSON instead of a table")

    retry = actions.add_parser("retry", help="run a failed job again (its node wakes up)")
    retry.add_argument("id")

    destroy = actions.add_parser("destroy", help="delete one stored job")
    destroy.add_argument("id")

    destroy_all = actions.add_parser("destroy-all", help="delete every stored job of a node")
    destroy_all.add_argument("--node", required=True)
    destroy_all.add_argument("--yes", action="store_true", help="yes, delete them all")

    stats = actions.add_parser("stats", help="jobs per node and status")
    stats.add_argument("--json", action="store_true", help="one JSON document")

    actions.add_parser(
        "migrate",
        help="move data of the old single-tag key layout to per-owner tags (once, nodes stopped)",
    )

    add_ops_parsers(actions)

    pending = actions.add_parser(
        "pending",
        help="jobs waiting in live distributors, from the discovery registry (no node storage)",
    )
    pending.add_argument(
        "--discovery-url",
        default=os.environ.get("JOBREACTOR_DISCOVERY_URL"),
        help="the registry's Redis (default: $JOBREACTOR_DISCOVERY_URL)",
    )
    pending.add_argument("--group", default=os.environ.get("JOBREACTOR_GROUP") or "default")
    pending.add_argument("--json", action="store_true", help="one JSON document")


def _status(text: str) -> str:
    status = text.replace("_", " ").replace("-", " ").strip().lower()
    if status not in _STATUSES:
        raise argparse.ArgumentTypeError(f"unknown status {text!r}; one of {', '.join(_STATUSES)}")
    return status


def run_jobs(args: argparse.Namespace) -> int:
    """`jobreactor jobs ...`; returns the exit code."""
    if args.jobs_command == "pending":
        return _jobs_pending(args)
    where = redact_url(args.redis_url)
    try:
        with RedisMonitor(args.redis_url, prefix=args.prefix) as monitor:
            return _JOBS_ACTIONS[args.jobs_command](monitor, args)
    except StorageUnavailable as exc:
        cause = str(exc.__cause__ or exc).rstrip(".")
        print(
            f"jobreactor: cannot reach redis at {where}: {cause}; is redis-server running?",
            file=sys.stderr,
        )
        return EXIT_REDIS
    except StorageError as exc:
        print(f"jobreactor: {exc}", file=sys.stderr)
        return EXIT_NOT_FOUND


def print_table(title: str, columns: list[str], rows: list[list[str]], **right: bool) -> None:
    """A rich table on a terminal; `# title`, a header and tab-separated rows otherwise."""
    if not sys.stdout.isatty():
        print(f"# {title}")
        print("\t".join(columns))
        for row in rows:
            print("\t".join(cell.replace("\t", " ").replace("\n", " ") for cell in row))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(
            column,
            justify="right" if right.get(column.replace(" ", "_")) else "left",
            no_wrap=column != "last error",
        )
    for row in rows:
        table.add_row(*row)
    Console(highlight=False).print(table)


def when(epoch: Any) -> str:
    if not isinstance(epoch, int | float) or isinstance(epoch, bool) or epoch <= 0:
        return "-"
    try:
        stamp = dt.datetime.fromtimestamp(epoch).astimezone()
    except (OverflowError, OSError, ValueError):
        return str(epoch)
    return stamp.isoformat(timespec="seconds")


def _short_error(error: Any) -> str:
    if not error:
        return ""
    line = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return line if len(line) <= _ERROR_WIDTH else line[: _ERROR_WIDTH - 1] + "…"


def _jobs_list(monitor: RedisMonitor, args: argparse.Namespace) -> int:
    limit = max(0, args.limit)
    rows: list[tuple[str, dict[str, Any]]] = []
    if limit:
        for found in monitor.iter_jobs(node=args.node, status=args.status):
            rows.append(found)
            if len(rows) >= limit:
                break
    rows.sort(key=lambda row: (float(row[1].get("run_at_ts") or 0.0), row[1]["id"]))
    total = None if args.status else monitor.count(args.node)
    if args.json:
        print(dump_json({"jobs": [{"node": n, **r} for n, r in rows], "stored": total}))
        return 0
    if not rows:
        print("no jobs" + (f" on node {args.node}" if args.node else ""))
        return 0
    cells = []
    for node, record in rows:
        status = str(record.get("status", "new"))
        cells.append(
            [
                str(record["id"]),
                node,
                str(record.get("name", "")),
                status,
                str(record.get("attempt", 0)),
                "-" if status in FINISHED_STATUSES else when(record.get("run_at_ts")),
                _short_error(record.get("last_error")),
            ]
        )
    title = f"jobs ({len(rows)} of {total})" if total is not None else f"jobs ({len(rows)} shown)"
    print_table(title, list(_LIST_COLUMNS), cells)
    return 0


def _jobs_show(monitor: RedisMonitor, args: argparse.Namespace) -> int:
    node = monitor.node_of(args.id)
    record = None if node is None else monitor.load(args.id)
    if node is None or record is None:
        print(f"no job {args.id}", file=sys.stderr)
        return EXIT_NOT_FOUND
    if args.json:
        print(dump_json({"node": node, "job": record}))
        return 0
    order = {name: i for i, name in enumerate(f.name for f in fields(JobRecord))}
    cells = []
    for key, value in sorted(record.items(), key=lambda item: order.get(item[0], len(order))):
        if key in {"run_at_ts", "run_at", "failed_at"} and value:
            cells.append([key, f"{when(value)} ({value})"])
        elif isinstance(value, dict | list):
            cells.append([key, json.dumps(value, default=repr, ensure_ascii=False)])
        else:
            cells.append([key, str(value)])
    print_table(f"job {args.id} on node {node}", ["field", "value"], cells)
    return 0


def _jobs_retry(monitor: RedisMonitor, args: argparse.Namespace) -> int:
    return _done(monitor.retry(args.id), f"retried {args.id}", f"no failed job {args.id}")


def _jobs_destroy(monitor: RedisMonitor, args: argparse.Namespace) -> int:
    return _done(monitor.destroy(args.id), f"destroyed {args.id}", f"no job {args.id}")


def _done(found: bool, done: str, missing: str) -> int:
    """Say what a command on one job did; its exit status."""
    if found:
        print(done)
        return 0
    print(missing, file=sys.stderr)
    return EXIT_NOT_FOUND


def _jobs_destroy_all(monitor: RedisMonitor, args: argparse.Namespace) -> int:
    if not args.yes:
        print(
            f"jobreactor: refusing to delete every job of node {args.node} without --yes",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    count = monitor.destroy_all_jobs_for(args.node)
    print(f"destroyed {count} job(s) of node {args.node}")
    return 0


def _jobs_stats(monitor: RedisMonitor, args: argparse.Namespace) -> int:
    stats = monitor.stats()
    if args.json:
        print(dump_json({"nodes": stats}))
        return 0
    if not stats:
        print(f"no jobs stored under prefix {args.prefix}")
        return 0
    seen = {status for counts in stats.values() for status in counts}
    columns = [s for s in _STATUSES if s in seen] + sorted(seen - set(_STATUSES))
    rows = [
        [node, *(str(counts.get(c, 0)) for c in columns), str(sum(counts.values()))]
        for node, counts in stats.items()
    ]
    if len(stats) > 1:
        totals = [sum(counts.get(column, 0) for counts in stats.values()) for column in columns]
        rows.append(["all", *map(str, totals), str(sum(totals))])
    right = {c.replace(" ", "_"): True for c in [*columns, "total"]}
    print_table("jobs per node and status", ["node", *columns, "total"], rows, **right)
    return 0


def _jobs_pending(args: argparse.Namespace) -> int:
    """Each live distributor of the group: its counts and first pending jobs (registry stats)."""
    if not args.discovery_url:
        print("jobreactor: jobs pending needs --discovery-url", file=sys.stderr)
        return EXIT_CONFIG
    from jobreactor.dashboard.registry import RegistrySource

    source = RegistrySource(args.discovery_url, args.group, prefix=args.prefix)
    try:
        found = source.queues(limit=PENDING_SAMPLE)
    except StorageUnavailable as exc:
        print(f"jobreactor: cannot reach the registry: {exc}", file=sys.stderr)
        return EXIT_REDIS
    if args.json:
        keep = ("address", "host", "pid", "pending", "in_flight", "nodes")
        brief = ("id", "name", "priority", "run_at_ts")
        out = [
            {
                **{k: d.get(k) for k in keep},
                "pending_jobs": [{k: job[k] for k in brief} for job in d["pending_jobs"]],
            }
            for d in found
        ]
        print(dump_json({"group": args.group, "distributors": out}))
        return 0
    if not found:
        print(f"no live distributor in group {args.group}")
        return 0
    rows = [
        [str(d["address"]), job["id"], job["name"], str(job["priority"]), when(job["run_at_ts"])]
        for d in found
        for job in d["pending_jobs"]
    ]
    counts = ", ".join(f"{d['address']}: {d['pending']} pending" for d in found)
    print_table(f"pending jobs ({counts})", ["distributor", "id", "name", "priority", "due"], rows)
    return 0


def _jobs_migrate(monitor: RedisMonitor, args: argparse.Namespace) -> int:
    from jobreactor.storage.migrate import migrate

    with redis_errors("migrate", redact_url(args.redis_url)):
        done = migrate(monitor.storage, args.prefix)
    indexed = monitor.reindex()  # the failed/retrying indexes of what was moved
    print(
        f"migrated prefix {args.prefix}: {done.jobs} job(s), {done.journals} journal(s), "
        f"{done.unique_keys} unique key(s), {done.locks} lock(s); "
        f"{sum(c['failed'] for c in indexed.values())} failed job(s) indexed"
    )
    return 0


_JOBS_ACTIONS: dict[str, Callable[[RedisMonitor, argparse.Namespace], int]] = {
    "list": _jobs_list,
    "show": _jobs_show,
    "retry": _jobs_retry,
    "destroy": _jobs_destroy,
    "destroy-all": _jobs_destroy_all,
    "stats": _jobs_stats,
    "migrate": _jobs_migrate,
    **OPS_ACTIONS,
}
