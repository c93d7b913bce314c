"""`jobreactor node --check [--probe]`: is this node ready to start? (a deploy-time health check)

Validates the configuration (already done by the caller: a bad key exits 2 before this runs),
loads the job directory into a fresh registry, and with `--probe` opens a TCP connection to
each distributor and pings Redis when the node stores there. Prints one line per check;
returns 0 when all pass, 2 when the jobs don't load, 1 when a probe fails.
"""

from __future__ import annotations

import socket

from jobreactor.apppath import prepare_app
from jobreactor.config import NodeConfig
from jobreactor.definitions import Registry
from jobreactor.errors import ConfigError, StorageError
from jobreactor.storage.redis import redact_url

EXIT_PROBE = 1
EXIT_CONFIG = 2
PROBE_TIMEOUT_S = 3.0


def check_node(config: NodeConfig, *, probe: bool = False) -> int:
    settings = config.settings
    print(f"ok   config: node {config.name}, {config.storage} storage")
    registry = Registry()
    try:
        prepare_app(config.app_dir, config.imports)
        files = registry.load_directory(settings.job_directory)
    except ConfigError as exc:
        print(f"FAIL jobs: {exc}")
        return EXIT_CONFIG
    names = registry.names()
    if not names:
        print(f"FAIL jobs: no job defined in {settings.job_directory} ({len(files)} file(s))")
        return EXIT_CONFIG
    print(f"ok   jobs: {len(names)} from {settings.job_directory}: {', '.join(sorted(names))}")
    if not probe:
        return 0
    failed = False
    for d in config.distributors:
        try:
            with socket.create_connection((d.host, d.port), timeout=PROBE_TIMEOUT_S):
                print(f"ok   distributor {d.host}:{d.port} accepts connections")
        except OSError as exc:
            failed = True
            print(f"FAIL distributor {d.host}:{d.port}: {exc.strerror or exc}")
    if config.storage == "redis":
        url = config.redis_url or settings.redis_url_said() or settings.hiredis_url
        failed = not _probe_redis(url) or failed
    if settings.discovery_url:
        failed = not _probe_redis(settings.discovery_url) or failed
    return EXIT_PROBE if failed else 0


def _probe_redis(url: str) -> bool:
    from jobreactor.monitor import RedisMonitor

    where = redact_url(url)
    try:
        with RedisMonitor(url, socket_timeout=PROBE_TIMEOUT_S) as monitor:
            monitor.nodes()  # one round trip; errors come back as StorageError
    except (StorageError, ConfigError) as exc:
        print(f"FAIL redis {where}: {exc.__cause__ or exc}")
        return False
    print(f"ok   redis {where} answers")
    return True
