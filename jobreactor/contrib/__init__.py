"""Start and stop a reactor per worker process under web servers (README: web apps).

`gunicorn.hooks()` and `asgi.lifespan()` read their settings like `jobreactor distributor`
does: `JOBREACTOR_*` environment variables (JOBREACTOR_DISCOVERY_URL, JOBREACTOR_GROUP,
JOBREACTOR_STORAGE, JOBREACTOR_REDIS_URL, JOBREACTOR_ADVERTISE, any reactor setting), then
their keyword arguments, which win. The port is 0 unless set: every worker needs its own.
"""

from __future__ import annotations

from typing import Any

from jobreactor.config import load_distributor_config
from jobreactor.reactor import Reactor


def configure(reactor: Reactor, options: dict[str, Any]) -> tuple[str, int, dict[str, Any]]:
    """Apply JOBREACTOR_* settings to `reactor`; (host, port, start_distributor keywords).

    `options` are the caller's keywords; those that are not None win over the environment.
    """
    env = load_distributor_config(None)
    reactor.config.update(env.settings.model_dump(exclude_unset=True))
    merged = {
        **env.model_dump(exclude_unset=True, exclude={"settings"}),
        **{k: v for k, v in options.items() if v is not None},
    }
    host = str(merged.pop("host", "127.0.0.1"))
    port = int(merged.pop("port", 0))
    return host, port, merged
