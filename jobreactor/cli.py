"""`jobreactor`: run a node or a standalone distributor from a TOML file, the dashboard, or the
demo; inspect the jobs stored in Redis (`jobreactor jobs list|show|retry|destroy|...`, cli_jobs).

Signals and argv live here: the first SIGTERM/SIGINT drains, a second stops now.
Exit codes: 0 clean stop (or done), 1 `jobs`: no such job / `node --check`: a probe failed,
2 bad configuration or usage, 3 `jobs`: Redis unreachable.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from typing import Any

from jobreactor import __version__
from jobreactor.apppath import prepare_app
from jobreactor.cli_guard import (
    check_distributor_config,
    check_node_config,
    load_config,
    tcp_port,
)
from jobreactor.cli_jobs import add_jobs_parser, run_jobs
from jobreactor.config import (
    DistributorConfig,
    NodeConfig,
    client_ssl_context,
    load_distributor_config,
    load_node_config,
    server_ssl_context,
)
from jobreactor.environment import warn_unknown_variables
from jobreactor.errors import ConfigError, StorageError
from jobreactor.logs import setup_logging
from jobreactor.nodehandle import engine_of
from jobreactor.reactor import Reactor

EXIT_CONFIG = 2


def _setup_logging(settings: Any) -> None:
    setup_logging(settings.logger_method, settings.log_format)
    warn_unknown_variables()


def _reactor_for(settings: Any) -> Reactor:
    return Reactor(**settings.model_dump(exclude_unset=True))


def _serve_metrics(reactor: Reactor, host: str, port: int | None) -> None:
    """The opt-in `metrics_port`: /metrics of this process and /health (health.py)."""
    if port is None:
        return
    from jobreactor.metrics import Gauge, member_gauges, process_metrics
    from jobreactor.metrics_server import MetricsServer

    def gauges() -> list[Gauge]:
        async def read() -> list[Gauge]:
            return member_gauges(process_metrics().members)

        return reactor.call(read, timeout=5.0)

    from jobreactor.health import reactor_health

    def health() -> tuple[int, dict[str, Any]]:
        return reactor_health(reactor)  # storage, loop, backlog (jobreactor/health.py)

    server = MetricsServer(host, port, gauge_reader=gauges, health=health).start()
    logging.getLogger("jobreactor").info("metrics on http://%s:%d/metrics", host, server.port)


def run_node(config: NodeConfig, child_of: int | None = None) -> None:
    """One node process; `child_of`: the pid of the supervisor that started it."""
    settings = config.settings
    prepare_app(config.app_dir, config.imports)
    reactor = _reactor_for(settings)
    ssl_context = client_ssl_context(settings)

    def setup() -> None:
        _serve_metrics(reactor, config.metrics_host, config.metrics_port)
        handle = reactor.start_node(
            config.name,
            config.storage,
            [(d.host, d.port) for d in config.distributors],
            job_directory=settings.job_directory,
            redis_url=config.redis_url,
            secret=config.secret,
            ssl=ssl_context,
            wait=False,
        )
        node = engine_of(handle)
        node.control.stop_hook = reactor.request_stop  # `drain` ends this process
        if child_of is not None:
            from jobreactor.node.supervisor import supervised_child

            reactor.call(lambda: supervised_child(node, config, child_of))
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


def run_distributor(config: DistributorConfig) -> None:
    """A distributor on `JR` (imported modules register their named feedbacks on it)."""
    from jobreactor.reactor import JR

    JR.config.update(config.settings.model_dump(exclude_unset=True))
    prepare_app(None, config.imports)  # `--import myapp.feedbacks` from the project's root

    def setup() -> None:
        _serve_metrics(JR, config.metrics_host, config.metrics_port)
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
    node.add_argument(
        "--app-dir",
        help="your project's root, first on sys.path so job files can import your app "
        "(default: the working directory)",
    )
    node.add_argument(
        "--import",
        dest="imports",
        action="append",
        metavar="MODULE",
        help="import MODULE before the jobs load, e.g. jobreactor.contrib.django (repeatable)",
    )
    node.add_argument("--discovery-url", help="redis where it finds its group's distributors")
    node.add_argument("--group", help="discovery group (default 'default')")
    node.add_argument(
        "--processes",
        type=int,
        metavar="N",
        help="run N node processes under a supervisor, named <name>-1 … <name>-N",
    )
    node.add_argument("--child-of", type=int, help=argparse.SUPPRESS)  # set by the supervisor
    node.add_argument(
        "--check",
        action="store_true",
        help="validate the config and load the jobs, then exit (0 ok, 2 not); no node starts",
    )
    node.add_argument(
        "--probe",
        action="store_true",
        help="with --check: also connect to each distributor and to Redis (exit 1 if one fails)",
    )

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

    _add_dashboard_parser(commands)
    add_jobs_parser(commands)
    return parser


def _add_dashboard_parser(commands: Any) -> None:
    dash = commands.add_parser(
        "dashboard",
        help="serve the web dashboard (and /metrics) on its own",
        description="The dashboard of every distributor and node that heartbeats into the "
        "discovery registry; failed jobs and records from Redis node storage.",
    )
    dash.add_argument("--discovery-url", help="the registry's Redis (discovery_url)")
    dash.add_argument("--group", help="only this group of the registry")
    dash.add_argument(
        "--redis-url", help="Redis node storage: failed jobs, job records, retry and delete"
    )
    dash.add_argument("--prefix", default=os.environ.get("JOBREACTOR_REDIS_PREFIX") or "jr")
    dash.add_argument("--host", default="127.0.0.1")
    dash.add_argument("--port", type=tcp_port, default=8181)
    dash.add_argument(
        "--token",
        default=os.environ.get("JOBREACTOR_DASHBOARD_TOKEN"),
        help="enables retry/delete/cancel for who signs in with it "
        "(default: $JOBREACTOR_DASHBOARD_TOKEN; none: actions off)",
    )


def run_dashboard(args: argparse.Namespace) -> int:
    if not args.discovery_url and not args.redis_url:
        raise ConfigError("jobreactor dashboard needs --discovery-url and/or --redis-url")
    import uvicorn

    from jobreactor.dashboard import create_app
    from jobreactor.dashboard.sources import NoLiveSource

    app = create_app(
        source=None if args.discovery_url else NoLiveSource(),
        discovery_url=args.discovery_url,
        group=args.group,
        redis_url=args.redis_url,
        redis_prefix=args.prefix,
        token=args.token or None,
    )
    # uvicorn stops gracefully on SIGTERM, then raises the signal again under the handler it
    # found: with this no-op one there, a clean stop exits 0 like every jobreactor command.
    signal.signal(signal.SIGTERM, lambda *_: None)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "node":
            node_config = load_config(
                load_node_config,
                args.config,
                name=args.name,
                storage=args.storage,
                distributors=args.distributor,
                job_directory=args.job_directory,
                discovery_url=args.discovery_url,
                group=args.group,
                processes=args.processes,
                app_dir=args.app_dir,
                imports=args.imports,
            )
            check_node_config(node_config)
            if args.check:
                from jobreactor.check import check_node

                return check_node(node_config, probe=args.probe)
            _setup_logging(node_config.settings)
            if node_config.supervised and args.child_of is None:
                from jobreactor.node.supervisor import run_supervisor

                argv_now = sys.argv[1:] if argv is None else argv
                return run_supervisor(node_config, argv_now)
            run_node(node_config, child_of=args.child_of)
        elif args.command == "jobs":
            return run_jobs(args)
        elif args.command == "dashboard":
            setup_logging("INFO")
            return run_dashboard(args)
        elif args.command == "distributor":
            dist_config = load_config(
                load_distributor_config,
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
            check_distributor_config(dist_config)
            _setup_logging(dist_config.settings)
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
