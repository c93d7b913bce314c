"""`jobreactor`: run a node or a standalone distributor from a TOML file, or the demo; inspect
the jobs stored in Redis (`jobreactor jobs list|show|retry|destroy|destroy-all|stats`).

Signals and argv live here (practice 9): the first SIGTERM/SIGINT drains, a second stops now.
Exit codes: 0 clean stop (or done), 1 `jobs`: no such job, 2 bad configuration or usage,
3 `jobs`: Redis unreachable.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import fields
from typing import Any

from jobreactor import __version__
from jobreactor.config import (
    DistributorConfig,
    NodeConfig,
    client_ssl_context,
    load_distributor_config,
    load_node_config,
    server_ssl_context,
)
from jobreactor.errors import ConfigError, StorageError, StorageUnavailable
from jobreactor.job import FINISHED_STATUSES, JobRecord, JobStatus
from jobreactor.monitor import RedisMonitor
from jobreactor.reactor import Reactor
from jobreactor.storage.codec import dump_json, redact_url
from jobreactor.storage.connect import DEFAULT_REDIS_URL, redis_errors

EXIT_NOT_FOUND = 1
EXIT_CONFIG = 2
EXIT_REDIS = 3


def _setup_logging(level: str | None) -> None:
    logging.basicConfig(
        level=(level or "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _reactor_for(settings: Any) -> Reactor:
    return Reactor(**settings.model_dump())


def run_node(config: NodeConfig) -> None:
    settings = config.settings
    reactor = _reactor_for(settings)
    ssl_context = client_ssl_context(settings)

    def setup() -> None:
        node = reactor.start_node(
            config.name,
            config.storage,
            [(d.host, d.port) for d in config.distributors],
            job_directory=settings.job_directory,
            redis_url=config.redis_url,
            secret=config.secret,
            ssl=ssl_context,
            wait=False,
        )
        logging.getLogger("jobreactor").info(
            "node %s started (%s storage, jobs from %s%s)",
            node.name,
            config.storage,
            settings.job_directory,
            f", distributors of group {settings.group!r} by discovery"
            if settings.discovery_url
            else "",
        )

    reactor.run_forever(setup)


def _import_all(modules: tuple[str, ...]) -> None:
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # `--import myapp.feedbacks` from the project's root
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(f"--import {module}: {exc}") from exc


def run_distributor(config: DistributorConfig) -> None:
    """A distributor on `JR` (imported modules register their named feedbacks on it)."""
    from jobreactor.reactor import JR

    JR.config.update(config.settings.model_dump())
    _import_all(config.imports)

    def setup() -> None:
        JR.start_distributor(
            config.host,
            config.port,
            secret=config.secret,
            ssl=server_ssl_context(config.settings),
            storage=config.storage,
            redis_url=config.redis_url,
            advertise=config.advertise,
        )
        settings = config.settings
        logging.getLogger("jobreactor").info(
            "distributor %s: %s storage, %s",
            JR.distributor.address,
            config.storage,
            f"group {settings.group!r} (discovery on)"
            if settings.discovery_url
            else "no discovery",
        )

    JR.run_forever(setup)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jobreactor", description="Asyncio client-server background jobs."
    )
    parser.add_argument("--version", action="version", version=f"jobreactor {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    node = commands.add_parser("node", help="run a worker node")
    node.add_argument("--config", "-c", help="node.toml (keys: name, storage, distributors, ...)")
    node.add_argument("--name", help="node name (overrides the file)")
    node.add_argument("--storage", choices=["memory", "redis"], help="job storage")
    node.add_argument(
        "--distributor",
        action="append",
        metavar="HOST:PORT",
        help="a distributor to connect to (repeatable; overrides the file)",
    )
    node.add_argument("--job-directory", help="where job definitions live")
    node.add_argument("--discovery-url", help="redis where it finds its group's distributors")
    node.add_argument("--group", help="discovery group (default 'default')")

    dist = commands.add_parser(
        "distributor",
        help="run a standalone distributor (e.g. a redis-backed member of a discovery group "
        "that adopts the jobs of dead web workers)",
    )
    dist.add_argument("--config", "-c", help="distributor.toml (keys: host, port, ...)")
    dist.add_argument("--host", help="address to bind (default 127.0.0.1)")
    dist.add_argument("--port", type=int, help="port to bind; 0 picks a free one (default 5000)")
    dist.add_argument("--advertise", metavar="HOST:PORT", help="the address nodes should dial")
    dist.add_argument("--storage", choices=["memory", "redis"], help="journal storage")
    dist.add_argument("--redis-url", help="redis for the journal (storage = redis)")
    dist.add_argument("--discovery-url", help="redis where it registers for nodes to find")
    dist.add_argument("--group", help="discovery group (default 'default')")
    dist.add_argument(
        "--import",
        dest="imports",
        action="append",
        metavar="MODULE",
        help="import MODULE first, e.g. where JR.register_feedback calls live (repeatable)",
    )
    dist.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="allow a non-loopback --host without a secret (a trusted network only)",
    )

    demo = commands.add_parser("demo", help="distributor + memory node in one process")
    demo.add_argument("--jobs", type=int, default=20_000, help="how many jobs (default 20000)")
    demo.add_argument("--nodes", type=int, default=1, help="in-process nodes (default 1)")

    _add_jobs_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "node":
            node_config = load_node_config(
                args.config,
                name=args.name,
                storage=args.storage,
                distributors=args.distributor,
                job_directory=args.job_directory,
                discovery_url=args.discovery_url,
                group=args.group,
            )
            _setup_logging(node_config.settings.logger_method)
            run_node(node_config)
        elif args.command == "jobs":
            return run_jobs(args)
        elif args.command == "distributor":
            dist_config = load_distributor_config(
                args.config,
                host=args.host,
                port=args.port,
                advertise=args.advertise,
                storage=args.storage,
                redis_url=args.redis_url,
                discovery_url=args.discovery_url,
                group=args.group,
                imports=args.imports,
                insecure=args.insecure,
            )
            _setup_logging(dist_config.settings.logger_method)
            run_distributor(dist_config)
        else:
            from jobreactor.demo import run_demo

            run_demo(args.jobs, args.nodes)
    except ConfigError as exc:
        print(f"jobreactor: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (OSError, StorageError) as exc:  # a port in use, Redis away at start
        print(f"jobreactor: cannot start: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
    return 0


# --- `jobreactor jobs`: the jobs stored in Redis (RedisMonitor on the command line) ---------------

_STATUSES = [status.value for status in JobStatus]
_ERROR_WIDTH = 60


def _add_jobs_parser(commands: Any) -> None:
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

    listing = actions.add_parser("list", help="a table of stored jobs, soonest due first")
    listing.add_argument("--node", help="only this node's jobs")
    listing.add_argument("--status", type=_status, help=f"only this status: {', '.join(_STATUSES)}")
    listing.add_argument("--limit", type=int, default=50, help="rows at most (default 50)")

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

    actions.add_parser("stats", help="jobs per node and status")

    actions.add_parser(
        "migrate",
        help="move data of the old single-tag key layout to per-owner tags (once, nodes stopped)",
    )


def _status(text: str) -> str:
    status = text.replace("_", " ").replace("-", " ").strip().lower()
    if status not in _STATUSES:
        raise argparse.ArgumentTypeError(f"unknown status {text!r}; one of {', '.join(_STATUSES)}")
    return status


def run_jobs(args: argparse.Namespace) -> int:
    """`jobreactor jobs ...`; returns the exit code."""
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


def _console() -> Any:
    from rich.console import Console

    # Piped output (scripts, tests) gets wide lines rather than wrapped ids.
    return Console(width=None if sys.stdout.isatty() else 200, highlight=False)


def _when(epoch: Any) -> str:
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
    from rich.table import Table

    nodes = [args.node] if args.node else monitor.nodes()
    rows: list[tuple[str, dict[str, Any]]] = []
    for node in nodes:
        for record in monitor.jobs_for(node).values():
            if args.status is None or record.get("status", "new") == args.status:
                rows.append((node, record))
    console = _console()
    if not rows:
        console.print("no jobs" + (f" on node {args.node}" if args.node else ""))
        return 0
    rows.sort(key=lambda row: (float(row[1].get("run_at_ts") or 0.0), row[1]["id"]))
    shown = rows[: max(0, args.limit)]
    table = Table(title=f"jobs ({len(shown)} of {len(rows)})", title_justify="left")
    for column in ("id", "node", "name", "status", "attempt", "next run", "last error"):
        table.add_column(column, no_wrap=column != "last error")
    for node, record in shown:
        status = str(record.get("status", "new"))
        table.add_row(
            str(record["id"]),
            node,
            str(record.get("name", "")),
            status,
            str(record.get("attempt", 0)),
            "-" if status in FINISHED_STATUSES else _when(record.get("run_at_ts")),
            _short_error(record.get("last_error")),
        )
    console.print(table)
    return 0


def _jobs_show(monitor: RedisMonitor, args: argparse.Namespace) -> int:
    from rich.pretty import Pretty
    from rich.table import Table

    node = monitor.node_of(args.id)
    record = None if node is None else monitor.load(args.id)
    if node is None or record is None:
        print(f"no job {args.id}", file=sys.stderr)
        return EXIT_NOT_FOUND
    if args.json:
        print(dump_json({"node": node, "job": record}))
        return 0
    table = Table(title=f"job {args.id} on node {node}", title_justify="left", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    order = {name: i for i, name in enumerate(f.name for f in fields(JobRecord))}
    for key, value in sorted(record.items(), key=lambda item: order.get(item[0], len(order))):
        if key in {"run_at_ts", "run_at", "failed_at"} and value:
            table.add_row(key, f"{_when(value)} ({value})")
        elif isinstance(value, dict | list):
            table.add_row(key, Pretty(value))
        else:
            table.add_row(key, str(value))
    _console().print(table)
    return 0


def _jobs_retry(monitor: RedisMonitor, args: argparse.Namespace) -> int:
    if monitor.retry(args.id):
        print(f"retried {args.id}")
        return 0
    print(f"no failed job {args.id}", file=sys.stderr)
    return EXIT_NOT_FOUND


def _jobs_destroy(monitor: RedisMonitor, args: argparse.Namespace) -> int:
    if monitor.destroy(args.id):
        print(f"destroyed {args.id}")
        return 0
    print(f"no job {args.id}", file=sys.stderr)
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
    from rich.table import Table

    stats = monitor.stats()
    console = _console()
    if not stats:
        console.print(f"no jobs stored under prefix {args.prefix}")
        return 0
    seen = {status for counts in stats.values() for status in counts}
    columns = [s for s in _STATUSES if s in seen] + sorted(seen - set(_STATUSES))
    table = Table(title="jobs per node and status", title_justify="left")
    table.add_column("node")
    for column in [*columns, "total"]:
        table.add_column(column, justify="right")
    for node, counts in stats.items():
        cells = [str(counts.get(column, 0)) for column in columns]
        table.add_row(node, *cells, str(sum(counts.values())))
    if len(stats) > 1:
        totals = [sum(counts.get(column, 0) for counts in stats.values()) for column in columns]
        table.add_row("all", *map(str, totals), str(sum(totals)), style="bold")
    console.print(table)
    return 0


def _jobs_migrate(monitor: RedisMonitor, args: argparse.Namespace) -> int:
    from jobreactor.storage.migrate import migrate

    with redis_errors("migrate", redact_url(args.redis_url)):
        done = migrate(monitor.storage, args.prefix)
    print(
        f"migrated prefix {args.prefix}: {done.jobs} job(s), {done.journals} journal(s), "
        f"{done.unique_keys} unique key(s), {done.locks} lock(s)"
    )
    return 0


_JOBS_ACTIONS: dict[str, Callable[[RedisMonitor, argparse.Namespace], int]] = {
    "list": _jobs_list,
    "show": _jobs_show,
    "retry": _jobs_retry,
    "destroy": _jobs_destroy,
    "destroy-all": _jobs_destroy_all,
    "migrate": _jobs_migrate,
    "stats": _jobs_stats,
}
