"""`jobreactor jobs failed|retrying|reindex|quiet|resume|drain`: the dashboard's lists and ops
actions on the command line (RedisMonitor; cli_jobs.py has the rest of `jobreactor jobs`).

    jobreactor jobs failed [--node N] [--page P] [--per-page K] [--search TEXT] [--json]
    jobreactor jobs retrying ...           (status `error`: the next attempt is due later)
    jobreactor jobs reindex [--node N]     (build the failed/retrying indexes of an old store)
    jobreactor jobs quiet|resume|drain NODE  (node/control.py, on the node's commands channel)
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from jobreactor.joblists import PER_PAGE, BadQuery, MonitorIndex, Query, indexed
from jobreactor.monitor import RedisMonitor
from jobreactor.storage.codec import dump_json
from jobreactor.storage.status_index import IndexKind

EXIT_NOT_FOUND = 1
EXIT_CONFIG = 2


def add_ops_parsers(actions: Any) -> None:
    for status, text in (
        ("failed", "failed jobs, newest first, a page at a time (exact total, from the index)"),
        ("retrying", "jobs waiting for a retry, next attempt first (from the index)"),
    ):
        lister = actions.add_parser(status, help=text)
        lister.add_argument("--node", default="", help="only this node's jobs")
        lister.add_argument("--page", type=int, default=1)
        lister.add_argument("--per-page", type=int, default=PER_PAGE)
        lister.add_argument("--search", default="", help="id, name or args contain this")
        lister.add_argument("--name", default="", help="only jobs of this name")
        lister.add_argument("--json", action="store_true", help="one JSON document")
    reindex = actions.add_parser(
        "reindex", help="build the failed/retrying indexes from the stored records (idempotent)"
    )
    reindex.add_argument("--node", help="only this node (default: every node)")
    for op, text in (
        ("quiet", "the node finishes what it holds and takes no new jobs"),
        ("resume", "a quiet node takes jobs again"),
        ("drain", "quiet, then stop (a `jobreactor node` process exits)"),
    ):
        control = actions.add_parser(op, help=text + " (nodes with Redis storage)")
        control.add_argument("node")


def _listing(monitor: RedisMonitor, args: argparse.Namespace) -> int:
    params = {
        "page": str(args.page),
        "per_page": str(args.per_page),
        "q": args.search,
        "name": args.name,
        "node": args.node,
    }
    try:
        query = Query.from_params(params, args.jobs_command)
    except BadQuery as exc:
        print(f"jobreactor: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    kind: IndexKind = "failed" if args.jobs_command == "failed" else "retrying"
    found = indexed(MonitorIndex(monitor), kind, query)
    jobs = [{k: v for k, v in job.items() if k != "record"} for job in found["jobs"]]
    if args.json:
        print(dump_json({**found, "jobs": jobs}))
        return 0
    from jobreactor.cli_jobs import print_table, when

    stamp = "failed_at" if kind == "failed" else "run_at_ts"
    rows = [
        [j["id"], str(j["node"]), j["name"], str(j["attempt"]), when(j[stamp]),
         str(j.get("last_error") or "").strip().splitlines()[-1:][0][:60]
         if j.get("last_error") else ""]
        for j in jobs
    ]  # fmt: skip
    title = f"{kind} jobs: {found['total']} (page {query.page} of {found['pages']})"
    when_column = "failed" if kind == "failed" else "next attempt"
    print_table(title, ["id", "node", "name", "attempt", when_column, "last error"], rows)
    return 0


def _reindex(monitor: RedisMonitor, args: argparse.Namespace) -> int:
    for node, counts in monitor.reindex(args.node).items():
        print(f"node {node}: {counts['failed']} failed, {counts['retrying']} retrying indexed")
    return 0


def _control(monitor: RedisMonitor, args: argparse.Namespace) -> int:
    heard = monitor.control(args.node, args.jobs_command, who="cli")
    if not heard:
        print(
            f"jobreactor: node {args.node} is not listening (down, or not on Redis storage "
            "with this --redis-url and --prefix); use the dashboard of its app instead",
            file=sys.stderr,
        )
        return EXIT_NOT_FOUND
    print(f"{args.jobs_command} sent to node {args.node}")
    return 0


OPS_ACTIONS = {
    "failed": _listing,
    "retrying": _listing,
    "reindex": _reindex,
    "quiet": _control,
    "resume": _control,
    "drain": _control,
}
