"""The dashboard's Starlette app: pages, their live fragments, JSON, /metrics, /health, actions.

Pages render on the server (Jinja2, autoescaped: args are user data). `static/app.js` fetches
the page again with `?partial=1` every `refresh_s` seconds and swaps the `#live` block (one
request at a time, paused while the tab is hidden). No CDN, no build step.
"""

from __future__ import annotations

import collections
import hmac
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from jobreactor import joblists as listing
from jobreactor.dashboard import actions, api, views
from jobreactor.dashboard.actions import TOKEN_COOKIE
from jobreactor.dashboard.batches import BatchReader
from jobreactor.dashboard.sources import Source, StoredJobs
from jobreactor.errors import ReactorClosed, StorageError
from jobreactor.health import source_health
from jobreactor.metrics import metrics_registry

logger = logging.getLogger("jobreactor.dashboard")

AuthHook = Callable[[Request], bool | Awaitable[bool]]
TOKEN_HEADER = "x-jobreactor-token"
IN_FLIGHT_LIMIT = 50  # in-flight jobs listed per distributor on the pending page
HISTORY_S = views.HISTORY_WINDOW_S

_SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "object-src 'none'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


class _Headers(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        response = await call_next(request)
        for key, value in _SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        return response


class History:
    """Totals sampled when pages are read (≥ 1 s apart), kept `HISTORY_S`: the jobs/s chart."""

    def __init__(self) -> None:
        self.samples: collections.deque[tuple[float, dict[str, int]]] = collections.deque()

    def add(self, at: float, totals: dict[str, int]) -> None:
        if self.samples and at - self.samples[-1][0] < 1.0:
            return
        self.samples.append((at, totals))
        while self.samples and at - self.samples[0][0] > HISTORY_S:
            self.samples.popleft()

    def rates(self, event: str) -> list[tuple[float, float, float]]:
        """(from, to, per second) between consecutive samples; a counter that went down (a
        process left) counts as a restart from zero, as Prometheus' rate() does."""
        out: list[tuple[float, float, float]] = []
        pairs = zip(self.samples, list(self.samples)[1:], strict=False)
        for (t0, a), (t1, b) in pairs:
            before, after = a.get(event, 0), b.get(event, 0)
            delta = after - before if after >= before else after
            out.append((t0, t1, delta / max(t1 - t0, 1e-9)))
        return out


class Dashboard:
    """State of one mounted dashboard (no module globals: several can live in one process)."""

    def __init__(
        self,
        source: Source,
        stored: StoredJobs | None,
        auth: AuthHook | None,
        token: str | None,
        refresh_s: float,
        batches: BatchReader | None = None,
    ) -> None:
        self.source = source
        self.stored = stored
        self.auth = auth
        self.token = token
        self.refresh_s = refresh_s
        self.batches = batches
        self.history = History()
        self.env = Environment(
            loader=PackageLoader("jobreactor.dashboard", "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
        )
        views.install_filters(self.env)

    @property
    def actions_configured(self) -> bool:
        return self.auth is not None or self.token is not None

    async def may_act(self, request: Request) -> bool:
        if self.auth is not None:
            allowed = self.auth(request)
            if inspect.isawaitable(allowed):
                allowed = await allowed
            return bool(allowed)
        if self.token is not None:
            given = request.headers.get(TOKEN_HEADER) or request.cookies.get(TOKEN_COOKIE) or ""
            return hmac.compare_digest(given.encode(), self.token.encode())
        return False

    async def snapshot(self) -> dict[str, Any]:
        snap: dict[str, Any] = await run_in_threadpool(self.source.snapshot)
        snap["totals"] = views.totals_of(snap)
        # The chart's clock is when the figures were taken (a registry beat), not when read:
        # reads between two beats add no sample, so no 0 then a burst (metrics.py).
        self.history.add(float(snap.get("metrics_at") or time.time()), snap["totals"])
        return snap

    def list_jobs_sync(self, query: listing.Query) -> dict[str, Any]:
        """Failed and retrying from Redis node storage when given, else from the source;
        pending from the source; scheduled from the source, else from Redis node storage."""
        readers: list[Any] = [self.source, self.stored]
        if query.status in ("failed", "retrying"):
            readers.reverse()
        for reader in readers:
            if reader is None:
                continue
            found = reader.list_jobs(query)
            if found is not None and (found["total"] or reader is readers[-1]):
                return dict(found)
        return listing.answer(query, 0, [])

    async def list_jobs(self, query: listing.Query) -> dict[str, Any]:
        return await run_in_threadpool(self.list_jobs_sync, query)

    def act(self, verb: str, job_id: str) -> bool | None:
        """retry / delete in Redis node storage when given (else the source), cancel through
        the source's distributors; None: not possible from here."""
        if verb == "cancel":
            return self.source.cancel(job_id) if self.source.can_cancel else None
        target: Any = self.stored if self.stored is not None else self.source
        done: bool = target.retry(job_id) if verb == "retry" else target.delete(job_id)
        return done

    def control_node(self, name: str, op: str, who: str) -> tuple[str | None, str]:
        """quiet / resume / drain: through the source's distributors, else on the node's
        Redis commands channel (a node with Redis storage listens there)."""
        state, error = self.source.control_node(name, op, who)
        if state is None and self.stored is not None:
            heard = self.stored.monitor.control(name, op, who)
            if heard:
                return f"{op} sent", ""
            error = f"node {name!r} is not connected here and not listening on Redis"
        return state, error

    async def render(self, request: Request, name: str, **context: Any) -> HTMLResponse:
        template = self.env.get_template(name)
        context.update(
            request=request,
            root=str(request.scope.get("root_path", "")).rstrip("/"),
            source_label=self.source.label,
            can_act=await self.may_act(request),
            can_cancel=self.source.can_cancel,
            actions_configured=self.actions_configured,
            token_login=self.token is not None,
            refresh_ms=int(self.refresh_s * 1000),
            now=time.time(),
        )
        if request.query_params.get("partial"):
            html = "".join(template.blocks["live"](template.new_context(context)))
        else:
            html = template.render(context)
        return HTMLResponse(html)


def _dashboard(request: Request) -> Dashboard:
    dashboard: Dashboard = request.app.state.dashboard
    return dashboard


async def overview(request: Request) -> Response:
    d = _dashboard(request)
    snap = await d.snapshot()
    return await d.render(
        request,
        "overview.html",
        snap=snap,
        stats=api.stats_of(snap),
        chart=views.chart(d.history),
        rows=views.job_rows(snap),
        page="overview",
    )


LIST_TITLES = {
    "pending": "Pending",
    "retrying": "Retrying",
    "scheduled": "Scheduled & periodic",
    "failed": "Failed",
}


async def _list_page(request: Request, status: str, **context: Any) -> Response:
    d = _dashboard(request)
    try:
        query = listing.Query.from_params(request.query_params, status)
    except listing.BadQuery as exc:
        response = await d.render(request, "unavailable.html", page="error", error=str(exc))
        response.status_code = 400
        return response
    found = await d.list_jobs(query)
    return await d.render(
        request,
        "list.html",
        found=found,
        query=query,
        status=status,
        title=LIST_TITLES[status],
        page=status,
        stored=d.stored is not None,
        **context,
    )


async def queues(request: Request) -> Response:
    d = _dashboard(request)
    distributors = await run_in_threadpool(d.source.queues, IN_FLIGHT_LIMIT)
    return await _list_page(request, "pending", distributors=distributors)


async def retrying(request: Request) -> Response:
    return await _list_page(request, "retrying")


async def scheduled(request: Request) -> Response:
    return await _list_page(request, "scheduled")


async def failed(request: Request) -> Response:
    return await _list_page(request, "failed")


async def _job_page(request: Request, job_id: str) -> Response:
    d = _dashboard(request)
    found = await run_in_threadpool(d.source.job, job_id)
    if found is None and d.stored is not None:
        found = await run_in_threadpool(d.stored.job, job_id)
    if found is None:
        response = await d.render(request, "missing.html", job_id=job_id, page="job")
        response.status_code = 404
        return response
    chain = await run_in_threadpool(d.source.chain, found["name"])
    return await d.render(request, "job.html", job=found, chain=chain, page="job")


async def job_detail(request: Request) -> Response:
    return await _job_page(request, request.path_params["job_id"])


async def jump(request: Request) -> Response:
    """The header's job-id box without JavaScript: /jobs/?id=... → /jobs/<id>; an id that a
    path segment can't carry as is (views.path_safe) is shown right here."""
    job_id = request.query_params.get("id", "").strip()
    if not job_id:
        return RedirectResponse(str(request.url_for("overview")), status_code=303)
    if not views.path_safe(job_id):
        return await _job_page(request, job_id)
    return RedirectResponse(str(request.url_for("job", job_id=job_id)), status_code=303)


async def node_page(request: Request) -> Response:
    d = _dashboard(request)
    name = request.path_params["name"]
    snap = await d.snapshot()
    node = next((n for n in snap.get("nodes", []) if n.get("name") == name), None)
    links = [
        {**n, "distributor": dist.get("address")}
        for dist in snap.get("distributors", [])
        for n in dist.get("nodes", [])
        if n.get("name") == name
    ]
    lists = {}
    for status in ("retrying", "failed"):
        query = listing.Query(status=status, node=name, per_page=20)
        lists[status] = await d.list_jobs(query)
    return await d.render(
        request, "node.html", node_name=name, node=node, links=links, lists=lists, page="node"
    )


async def batch_page(request: Request) -> Response:
    d = _dashboard(request)
    token = request.path_params["token"]
    batch = None if d.batches is None else await run_in_threadpool(d.batches.read, token)
    lists = {}
    for status in ("pending", "scheduled", "retrying", "failed"):
        query = listing.Query(status=status, q=token, per_page=20)
        lists[status] = await d.list_jobs(query)
    return await d.render(
        request, "batch.html", token=token, batch=batch, lists=lists, page="batch"
    )


async def api_snapshot(request: Request) -> Response:
    d = _dashboard(request)
    snap = await d.snapshot()
    snap["rates"] = {e: [r[2] for r in d.history.rates(e)[-1:]] for e in ("succeeded", "failed")}
    return api.JSON(snap)


async def metrics(request: Request) -> Response:
    d = _dashboard(request)
    snap = await d.snapshot()
    registry = metrics_registry(
        views.merged_metrics(snap), gauge_reader=lambda: views.snapshot_gauges(snap)
    )
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


async def health(request: Request) -> Response:
    """jobreactor/health.py: storage, loop and backlog checks; 503 unless all pass."""
    code, body = await run_in_threadpool(source_health, _dashboard(request).source)
    return JSONResponse(body, code)


async def unavailable(request: Request, exc: Exception) -> Response:
    """Redis (storage or registry) or the reactor not answering: a 503 that says which."""
    logger.warning("dashboard: %s", exc)
    d = _dashboard(request)
    response = await d.render(request, "unavailable.html", page="error", error=str(exc))
    response.status_code = 503
    return response


def build_app(dashboard: Dashboard, debug: bool = False) -> Starlette:
    from importlib.resources import files

    static = str(files("jobreactor.dashboard") / "static")
    routes = [
        Route("/", overview, name="overview"),
        Route("/queues", queues, name="queues"),
        Route("/retrying", retrying, name="retrying"),
        Route("/scheduled", scheduled, name="scheduled"),
        Route("/failed", failed, name="failed"),
        Route("/jobs/", jump, name="jump"),
        Route("/jobs/", actions.job_action, methods=["POST"], name="action_by_query"),
        Route("/jobs/{job_id}", job_detail, name="job"),
        Route("/jobs/{job_id}/{verb:str}", actions.job_action, methods=["POST"], name="action"),
        Route("/bulk/{verb:str}", actions.bulk_action, methods=["POST"], name="bulk"),
        Route("/nodes/{name}", node_page, name="node"),
        Route("/nodes/{name}/{op:str}", actions.node_action, methods=["POST"], name="node_op"),
        Route("/batches/{token}", batch_page, name="batch"),
        Route("/login", actions.login, methods=["GET", "POST"], name="login"),
        Route("/api/stats", api.api_stats, name="api_stats"),
        Route("/api/jobs", api.api_jobs, name="api_jobs"),
        Route("/api/snapshot", api_snapshot, name="api_snapshot"),
        Route("/metrics", metrics, name="metrics"),
        Route("/health", health, name="health"),
        Mount("/static", StaticFiles(directory=static), name="static"),
    ]
    handlers = {StorageError: unavailable, ReactorClosed: unavailable}
    app = Starlette(
        debug=debug,
        routes=routes,
        middleware=[Middleware(_Headers)],
        exception_handlers=handlers,
    )
    app.state.dashboard = dashboard
    return app
