"""The jobreactor dashboard: an ASGI app to mount in your app, or `jobreactor dashboard`.

    from jobreactor.dashboard import create_app
    app.mount("/jobs", create_app(token=os.environ["DASHBOARD_TOKEN"]))      # Starlette/FastAPI

    from jobreactor.dashboard import create_wsgi_app                          # Flask, Django
    app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {"/jobs": create_wsgi_app(auth=...)})

Mounted in a single-process app it reads the reactor (`JR` unless given another); with
`discovery_url` it reads what every distributor and node publishes with its registry
heartbeat. `redis_url` adds failed jobs and stored records from Redis node storage.

Job lists (pending, retrying, scheduled, failed) page through `GET <mount>/api/jobs`, the
counters through `GET <mount>/api/stats` (api.py; README "Seeing what it does").
Actions (retry, delete, cancel, bulk retry/delete, node quiet/resume/drain) are OFF unless
`auth` (a callable taking the Starlette request, returning a bool or an awaitable bool) or
`token` is given; each is logged with who asked. Reading is not
protected: mount it behind your app's own login when the data is private.
Needs the `dashboard` extra: `pip install 'jobreactor[dashboard]'`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jobreactor.dashboard.app import AuthHook, Dashboard, build_app
from jobreactor.dashboard.batches import BatchReader
from jobreactor.dashboard.sources import LocalSource, Source, StoredJobs
from jobreactor.errors import ConfigError

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from jobreactor.reactor import Reactor

__all__ = ["AuthHook", "LocalSource", "Source", "create_app", "create_wsgi_app"]


def create_app(  # noqa: PLR0913 (keyword-only options of one constructor)
    reactor: Reactor | None = None,
    *,
    source: Source | None = None,
    discovery_url: str | None = None,
    group: str | None = None,
    redis_url: str | None = None,
    redis_prefix: str = "jr",
    auth: AuthHook | None = None,
    token: str | None = None,
    refresh_s: float = 2.0,
    batch_namespace: str | None = None,
) -> Starlette:
    """The dashboard as a Starlette (ASGI) app; mount it under any path.

    `batch_namespace`: the namespace the app's `open_batch` calls use (batch pages read the
    batches in `redis_url`'s Redis, or in this process's memory without one)."""
    if source is None:
        if discovery_url is not None:
            from jobreactor.dashboard.registry import RegistrySource

            source = RegistrySource(discovery_url, group, prefix=redis_prefix)
        else:
            if reactor is None:
                from jobreactor.reactor import JR

                reactor = JR
            source = LocalSource(reactor)
    stored = None
    if redis_url is not None:
        from jobreactor.monitor import RedisMonitor

        stored = StoredJobs(RedisMonitor(redis_url, prefix=redis_prefix))
    if token is not None and not token:
        raise ConfigError("the dashboard's token must not be empty (None: no token)")
    batches = BatchReader(redis_url, batch_namespace)
    return build_app(Dashboard(source, stored, auth, token, refresh_s, batches))


def create_wsgi_app(*args: Any, **kwargs: Any) -> Any:
    """`create_app(...)` behind a WSGI bridge (a2wsgi), for Flask and Django."""
    from a2wsgi import ASGIMiddleware

    return ASGIMiddleware(create_app(*args, **kwargs))  # type: ignore[arg-type]
