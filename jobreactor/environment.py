"""The `JOBREACTOR_*` environment: one reading for every entry point that starts a distributor
in an app (the gunicorn hooks, the ASGI lifespan, `JR.ensure_started()`), and loud mistakes.

A variable that names no key (`JOBREACTOR_DISCOVERY_ULR`) is a typo that would otherwise leave
jobs piling up with no node to run them: it is logged once per process, with the key it most
likely meant. Storage "redis" needs a Redis URL said somewhere (`redis_url`,
`JOBREACTOR_REDIS_URL`, or the `hiredis_url` setting set explicitly): the setting's documented
default (`redis://localhost:6379`) is never dialled by accident (docs/decisions.md, wave 3).
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from jobreactor.config import (
    DistributorConfig,
    NodeConfig,
    ReactorConfig,
    load_distributor_config,
)
from jobreactor.errors import ConfigError

if TYPE_CHECKING:
    from jobreactor.reactor import Reactor

__all__ = ["apply_environment", "redis_url_for", "warn_unknown_variables"]

logger = logging.getLogger("jobreactor.config")

PREFIX = "JOBREACTOR_"
# Read by the command line beside the config keys (cli.py, cli_jobs.py).
_COMMAND_LINE = {"DASHBOARD_TOKEN"}
# Distributor keys that belong to `jobreactor distributor` alone, not to start_distributor.
_COMMAND_ONLY = {"imports", "metrics_port", "metrics_host"}

_warned: set[str] = set()


def known_variables() -> set[str]:
    """Every `JOBREACTOR_*` name some entry point reads."""
    keys = set(ReactorConfig.model_fields) | set(NodeConfig.model_fields)
    keys |= set(DistributorConfig.model_fields)
    keys.discard("settings")
    return {PREFIX + key.upper() for key in keys} | {PREFIX + name for name in _COMMAND_LINE}


def warn_unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """Log each unknown `JOBREACTOR_*` variable once per process; return the ones logged now."""
    environ = os.environ if environ is None else environ
    known = known_variables()
    fresh: list[str] = []
    for name in sorted(environ):
        if not name.startswith(PREFIX) or name in known or name in _warned:
            continue
        _warned.add(name)
        fresh.append(name)
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
        hint = f"did you mean {close[0]}?" if close else "no jobreactor setting has that name"
        logger.warning(
            "environment variable %s is not a jobreactor setting and is ignored: %s "
            "(docs/reference/configuration.md lists every setting)",
            name,
            hint,
        )
    return fresh


def apply_environment(
    reactor: Reactor, options: Mapping[str, Any]
) -> tuple[str, int, dict[str, Any]]:
    """Apply `JOBREACTOR_*` settings to `reactor`; (host, port, start_distributor keywords).

    `options` are the caller's keywords; those that are not None win over the environment.
    The port is 0 unless set: every web worker needs its own.
    """
    warn_unknown_variables()
    env = load_distributor_config(None, partial=True)
    reactor.config.update(env.settings.model_dump(exclude_unset=True))
    merged = {
        **env.model_dump(exclude_unset=True, exclude={"settings", *_COMMAND_ONLY}),
        **{k: v for k, v in options.items() if v is not None},
    }
    host = str(merged.pop("host", "127.0.0.1"))
    port = int(merged.pop("port", 0))
    return host, port, merged


def redis_url_for(storage: str, redis_url: str | None, settings: ReactorConfig, who: str) -> str:
    """The Redis URL `who` uses for `storage` "redis": said explicitly, or a ConfigError."""
    if redis_url:
        return redis_url
    said = settings.redis_url_said()  # hiredis_url, or redis_host/redis_port, set on purpose
    if said is not None:
        return said
    raise ConfigError(
        f'{who}: storage {storage!r} needs a Redis URL: pass redis_url="redis://host:6379/0", '
        "set JOBREACTOR_REDIS_URL (or redis_url in the .toml), or the hiredis_url (or "
        "redis_host/redis_port) setting; "
        "nothing is assumed (not even localhost:6379)"
    )
