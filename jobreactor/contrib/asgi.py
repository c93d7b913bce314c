"""ASGI lifespan (FastAPI, Starlette): the reactor lives on the server's loop, per worker.

    from fastapi import FastAPI
    from jobreactor.contrib.asgi import lifespan

    app = FastAPI(lifespan=lifespan())  # settings from JOBREACTOR_* or keywords

Lifespan startup runs in every worker process (uvicorn `--workers N` spawns them; gunicorn's
UvicornWorker forks them), after the fork and on the loop that serves requests. The reactor
attaches to that loop (no extra thread): `await JR.aenqueue(...)` in async endpoints,
`JR.enqueue(...)` in sync ones (they run in a thread pool). Shutdown stops it gracefully.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from jobreactor.contrib import configure
from jobreactor.reactor import JR, Reactor, Setup

Lifespan = Callable[[Any], contextlib.AbstractAsyncContextManager[None]]


def lifespan(
    host: str | None = None,
    port: int | None = None,
    *,
    reactor: Reactor | None = None,
    setup: Setup | None = None,
    **distributor_options: Any,
) -> Lifespan:
    """A lifespan for `reactor` (default `JR`); `distributor_options` as in `gunicorn.hooks`.

    To combine it with a lifespan of your own, enter it from yours:
    `async with jobreactor_lifespan(app): yield`.
    """
    target = JR if reactor is None else reactor

    @contextlib.asynccontextmanager
    async def span(app: Any) -> AsyncIterator[None]:
        bind_host, bind_port, options = configure(
            target, {"host": host, "port": port, **distributor_options}
        )
        target.attach(asyncio.get_running_loop(), setup)
        try:
            await target.astart_distributor(bind_host, bind_port, **options)
            yield
        finally:
            await target.astop(handover=True)  # a recycling worker hands over (gunicorn.py)

    return span
