"""Start and stop a reactor per worker process under web servers (README: web apps).

`gunicorn.hooks()`, `asgi.lifespan()` and `JR.ensure_started()` read their settings like
`jobreactor distributor` does, through one function (jobreactor/environment.py):
`JOBREACTOR_*` environment variables (JOBREACTOR_DISCOVERY_URL, JOBREACTOR_GROUP,
JOBREACTOR_STORAGE, JOBREACTOR_REDIS_URL, JOBREACTOR_ADVERTISE, any reactor setting), then
their keyword arguments, which win. The port is 0 unless set: every worker needs its own.
They also give jobreactor's log lines a handler with time, level and pid when the app has
configured no logging (jobreactor/logs.py, `fit_host_logging`).
"""

from __future__ import annotations

from typing import Any

from jobreactor.environment import apply_environment
from jobreactor.logs import fit_host_logging
from jobreactor.reactor import Reactor


def configure(reactor: Reactor, options: dict[str, Any]) -> tuple[str, int, dict[str, Any]]:
    """Apply JOBREACTOR_* settings to `reactor`; (host, port, start_distributor keywords).

    `options` are the caller's keywords; those that are not None win over the environment.
    """
    fit_host_logging()
    return apply_environment(reactor, options)
