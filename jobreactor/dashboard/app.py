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
from urllib.parse import parse_qs

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

from jobreactor.dashboard import views
from jobreactor.dashboard.sources import Source, StoredJobs
from jobreactor.errors import ReactorClosed, StorageError
from jobreactor.health import source_health
from jobreactor.metrics import metrics_registry

logger = logging.getLogger("jobreactor.dashboard")

AuthHook = Callable[[Request], bool | Awaitable[bool]]
TOKEN_COOKIE = "jobreactor_token"
TOKEN_HEADER = "x-jobreactor-token"
PAGE_LIMIT = 100
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
    ) -> None:
        self.source = source
        self.stored = stored
        self.auth = auth
        self.token = token
        self.refresh_s = refresh_s
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

    async def render(self, request: Request, name: str, **context: Any) -> HTMLResponse:
        template = self.env.get_template(name)
        context.update(
            request=request,
            root=str(request.scope.get("root_path", "")).rstrip("/"),
            source_label=self.source.label,
            can_act=await self.may_act(request),
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
        chart=views.chart(d.history),
        rows=views.job_rows(snap),
        page="overview",
    )


async def queues(request: Request) -> Response:
    d = _dashboard(request)
    found = await run_in_threadpool(d.source.queues, PAGE_LIMIT)
    return await d.render(request, "queues.html", distributors=found, page="queues")


async def scheduled(request: Request) -> Response:
    d = _dashboard(request)
    found = await run_in_threadpool(d.source.scheduled, PAGE_LIMIT)
    if not found and d.stored is not None:
        found = await run_in_threadpool(d.stored.scheduled, PAGE_LIMIT)
    return await d.render(request, "scheduled.html", jobs=found, page="scheduled")


async def failed(request: Request) -> Response:
    d = _dashboard(request)
    reader = d.stored if d.stored is not None else d.source
    found = await run_in_threadpool(reader.failed, PAGE_LIMIT)
    return await d.render(
        request, "failed.html", jobs=found, page="failed", limit=PAGE_LIMIT, stored=d.stored
    )


async def job_detail(request: Request) -> Response:
    d = _dashboard(request)
    job_id = request.path_params["job_id"]
    found = await run_in_threadpool(d.source.job, job_id)
    if found is None and d.stored is not None:
        found = await run_in_threadpool(d.stored.job, job_id)
    if found is None:
        response = await d.render(request, "missing.html", job_id=job_id, page="job")
        response.status_code = 404
        return response
    chain = await run_in_threadpool(d.source.chain, found["name"])
    return await d.render(request, "job.html", job=found, chain=chain, page="job")


async def jump(request: Request) -> Response:
    """The header's job-id box without JavaScript: /jobs/?id=... → /jobs/<id>."""
    job_id = request.query_params.get("id", "").strip()
    if not job_id:
        return RedirectResponse(str(request.url_for("overview")), status_code=303)
    return RedirectResponse(str(request.url_for("job", job_id=job_id)), status_code=303)


async def api_snapshot(request: Request) -> Response:
    d = _dashboard(request)
    snap = await d.snapshot()
    snap["rates"] = {e: [r[2] for r in d.history.rates(e)[-1:]] for e in ("succeeded", "failed")}
    return JSONResponse(snap)


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


def _same_origin(request: Request) -> bool:
    """CSRF: browsers say where a request comes from (Sec-Fetch-Site, else Origin)."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = request.headers.get("origin")
    return origin is None or origin.split("://", 1)[-1] == request.headers.get("host")


async def action(request: Request) -> Response:
    d = _dashboard(request)
    if not d.actions_configured:
        return JSONResponse(
            {"error": "actions are off: mount the dashboard with an auth hook or a token"}, 403
        )
    if not _same_origin(request) or not await d.may_act(request):
        return JSONResponse({"error": "not allowed"}, 403)
    job_id, verb = request.path_params["job_id"], request.path_params["verb"]
    if verb not in ("retry", "delete", "cancel"):
        return JSONResponse({"error": f"unknown action {verb!r}"}, 404)
    target: Any = d.stored if d.stored is not None and verb != "cancel" else d.source
    method = {"retry": target.retry, "delete": target.delete, "cancel": d.source.cancel}[verb]
    done = await run_in_threadpool(method, job_id)
    if done is None:
        return JSONResponse({"error": f"{verb}: not possible from this dashboard"}, 409)
    if "application/json" in request.headers.get("accept", ""):
        return JSONResponse({"ok": bool(done), "job_id": job_id, "action": verb})
    back = request.headers.get("referer") or ""
    if not back.startswith(str(request.base_url)):  # only ever back into this site
        back = str(request.url_for("overview"))
    return RedirectResponse(back, status_code=303)


async def login(request: Request) -> Response:
    d = _dashboard(request)
    if request.method == "POST" and d.token is not None and _same_origin(request):
        body = await request.body()  # one urlencoded field: no multipart parser needed
        given = parse_qs(body[:4096].decode("utf-8", "replace")).get("token", [""])[0]
        if hmac.compare_digest(given.encode(), d.token.encode()):
            response = RedirectResponse(str(request.url_for("overview")), status_code=303)
            root = str(request.scope.get("root_path", "")) or "/"
            response.set_cookie(TOKEN_COOKIE, given, httponly=True, samesite="strict", path=root)
            return response
        return await d.render(request, "login.html", page="login", wrong=True)
    return await d.render(request, "login.html", page="login", wrong=False)


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
        Route("/scheduled", scheduled, name="scheduled"),
        Route("/failed", failed, name="failed"),
        Route("/jobs/", jump, name="jump"),
        Route("/jobs/{job_id}", job_detail, name="job"),
        Route(
            "/jobs/{job_id}/{verb:str}",
            action,
            methods=["POST"],
            name="action",
        ),
        Route("/login", login, methods=["GET", "POST"], name="login"),
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
