"""The dashboard's actions: POST only, same-origin, with `auth` or `token`, each one logged.

    POST <mount>/jobs/<id>/retry|delete|cancel     one job (or POST <mount>/jobs/?id=&verb=)
    POST <mount>/bulk/retry|delete                 form fields `id` (repeated), `confirm=yes`
    POST <mount>/nodes/<name>/quiet|resume|drain   a node (node/control.py)
    POST <mount>/login                             the token, as a cookie

Every action is logged at INFO on `jobreactor.dashboard` as
`action <verb> <target> by <who>: <result>`: who is the client address and how it was allowed
(token or auth hook, and the hook's `request.state.user` / `request.user` when it sets one).
A refusal (409) says why, and the pages show it.
"""

from __future__ import annotations

import hmac
import logging
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from jobreactor.node.control import OPS

if TYPE_CHECKING:
    from jobreactor.dashboard.app import Dashboard

logger = logging.getLogger("jobreactor.dashboard")

BODY_MAX: Final = 64 * 1024  # bytes of a form read at most (login, bulk)
LOGIN_MAX: Final = 4096
BULK_MAX: Final = 500  # jobs per bulk action
JOB_VERBS: Final = ("retry", "delete", "cancel")
TOKEN_COOKIE = "jobreactor_token"


class TooLarge(Exception):
    pass


def same_origin(request: Request) -> bool:
    """CSRF: browsers say where a request comes from (Sec-Fetch-Site, else Origin)."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = request.headers.get("origin")
    return origin is None or origin.split("://", 1)[-1] == request.headers.get("host")


async def read_form(request: Request, limit: int = BODY_MAX) -> dict[str, list[str]]:
    """A urlencoded body, refused past `limit` bytes before more is read (Content-Length
    first, then while streaming)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise TooLarge
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise TooLarge
    return parse_qs(body.decode("utf-8", "replace"))


def who(request: Request, d: Dashboard) -> str:
    client = request.client.host if request.client else "?"
    user = getattr(request.state, "user", None)
    if user is None and "user" in request.scope:
        user = getattr(request.scope["user"], "display_name", None) or request.scope["user"]
    how = "auth hook" if d.auth is not None else "token"
    return f"{client} ({how}{f', {user}' if user else ''})"


async def _refusal(request: Request, d: Dashboard) -> Response | None:
    if not d.actions_configured:
        return JSONResponse(
            {"error": "actions are off: mount the dashboard with an auth hook or a token"}, 403
        )
    if not same_origin(request) or not await d.may_act(request):
        logger.warning("action refused at %s: not allowed (%s)", request.url.path, who(request, d))
        return JSONResponse({"error": "not allowed"}, 403)
    return None


def _done(request: Request, answer: dict[str, Any], status: int = 200) -> Response:
    if "application/json" in request.headers.get("accept", "") or status != 200:
        return JSONResponse(answer, status)
    back = request.headers.get("referer") or ""
    if not back.startswith(str(request.base_url)):  # only ever back into this site
        back = str(request.url_for("overview"))
    return RedirectResponse(back, status_code=303)


async def job_action(request: Request) -> Response:
    d: Dashboard = request.app.state.dashboard
    refused = await _refusal(request, d)
    if refused is not None:
        return refused
    job_id = request.path_params.get("job_id") or request.query_params.get("id", "")
    verb = request.path_params.get("verb") or request.query_params.get("verb", "")
    if verb not in JOB_VERBS or not job_id:
        return JSONResponse({"error": f"unknown action {verb!r}"}, 404)
    done = await run_in_threadpool(d.act, verb, job_id)
    logger.info("action %s job %s by %s: %s", verb, job_id, who(request, d), done)
    if done is None:
        why = "cancel needs a distributor this dashboard can reach" if verb == "cancel" else ""
        error = f"{verb}: not possible from this dashboard" + (f" ({why})" if why else "")
        return JSONResponse({"error": error, "ok": False}, 409)
    return _done(request, {"ok": bool(done), "job_id": job_id, "action": verb})


async def bulk_action(request: Request) -> Response:
    d: Dashboard = request.app.state.dashboard
    refused = await _refusal(request, d)
    if refused is not None:
        return refused
    verb = request.path_params["verb"]
    if verb not in ("retry", "delete"):
        return JSONResponse({"error": f"unknown bulk action {verb!r}"}, 404)
    try:
        form = await read_form(request)
    except TooLarge:
        return JSONResponse({"error": f"body over {BODY_MAX} bytes"}, 413)
    ids = list(dict.fromkeys(form.get("id", [])))
    if form.get("confirm") != ["yes"]:
        return JSONResponse({"error": "bulk actions need confirm=yes"}, 400)
    if not ids or len(ids) > BULK_MAX:
        return JSONResponse({"error": f"give 1 to {BULK_MAX} ids"}, 400)
    results = {job_id: await run_in_threadpool(d.act, verb, job_id) for job_id in ids}
    done = sum(1 for ok in results.values() if ok)
    logger.info("action bulk %s of %d job(s) by %s: %d done", verb, len(ids), who(request, d), done)
    return _done(request, {"ok": done == len(ids), "action": verb, "done": done, "asked": len(ids)})


async def node_action(request: Request) -> Response:
    d: Dashboard = request.app.state.dashboard
    refused = await _refusal(request, d)
    if refused is not None:
        return refused
    name, op = request.path_params["name"], request.path_params["op"]
    if op not in OPS:
        return JSONResponse({"error": f"unknown node action {op!r}"}, 404)
    actor = who(request, d)
    state, error = await run_in_threadpool(d.control_node, name, op, actor)
    logger.info(
        "action %s node %s by %s: %s%s", op, name, actor, state, f" ({error})" if error else ""
    )
    if state is None or error:
        return JSONResponse({"ok": False, "error": error, "state": state}, 409)
    return _done(request, {"ok": True, "node": name, "action": op, "state": state})


async def login(request: Request) -> Response:
    d: Dashboard = request.app.state.dashboard
    if request.method == "POST" and d.token is not None and same_origin(request):
        try:
            form = await read_form(request, LOGIN_MAX)  # one field: no multipart parser
        except TooLarge:
            return JSONResponse({"error": f"body over {LOGIN_MAX} bytes"}, 413)
        given = form.get("token", [""])[0]
        if hmac.compare_digest(given.encode(), d.token.encode()):
            logger.info("login by %s", who(request, d))
            response = RedirectResponse(str(request.url_for("overview")), status_code=303)
            root = str(request.scope.get("root_path", "")) or "/"
            response.set_cookie(TOKEN_COOKIE, given, httponly=True, samesite="strict", path=root)
            return response
        logger.warning("login refused: wrong token (%s)", who(request, d))
        return await d.render(request, "login.html", page="login", wrong=True)
    return await d.render(request, "login.html", page="login", wrong=False)
