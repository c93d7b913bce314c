"""`jobreactor`: run a node or a standalone distributor from a TOML file, or the demo.

Signals and argv live here (practice 9): the first SIGTERM/SIGINT drains, a second stops now.
Exit codes: 0 clean stop, 2 bad configuration.
"""

from __future__ import annotations

import argparse
import logging
import sys
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
from jobreactor.errors import ConfigError
from jobreactor.reactor import Reactor

EXIT_CONFIG = 2


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
        reactor.start_node(
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
            "node %s started (%s storage, jobs from %s)",
            config.name,
            config.storage,
            settings.job_directory,
        )

    reactor.run_forever(setup)


def run_distributor(config: DistributorConfig) -> None:
    reactor = _reactor_for(config.settings)

    def setup() -> None:
        reactor.start_distributor(
            config.host,
            config.port,
            secret=config.secret,
            ssl=server_ssl_context(config.settings),
            storage=config.storage,
            redis_url=config.redis_url,
            advertise=config.advertise,
        )

    reactor.run_forever(setup)


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

    dist = commands.add_parser("distributor", help="run a standalone distributor")
    dist.add_argument("--config", "-c", help="distributor.toml (keys: host, port, ...)")
    dist.add_argument("--host")
    dist.add_argument("--port", type=int)

    demo = commands.add_parser("demo", help="distributor + memory node in one process")
    demo.add_argument("--jobs", type=int, default=20_000, help="how many jobs (default 20000)")
    demo.add_argument("--nodes", type=int, default=1, help="in-process nodes (default 1)")
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
            )
            _setup_logging(node_config.settings.logger_method)
            run_node(node_config)
        elif args.command == "distributor":
            dist_config = load_distributor_config(args.config, host=args.host, port=args.port)
            _setup_logging(dist_config.settings.logger_method)
            run_distributor(dist_config)
        else:
            from jobreactor.demo import run_demo

            run_demo(args.jobs, args.nodes)
    except ConfigError as exc:
        print(f"jobreactor: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
    return 0
