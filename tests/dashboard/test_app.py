"""The dashboard over real HTTP (uvicorn, httpx): escaping, headers, protection, mounting."""

from __future__ import annotations

import contextlib
import io
import json
import sys
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Mount

from jobreactor import Reactor, Registry
from jobreactor.dashboard import create_app, create_wsgi_app
from jobreactor.errors import JobCancelled
from tests.conftest import Recorder, wait_until
from tests.dashboard.conftest import Served
from tests.redis_server import RedisServer

EVIL = "<script>alert('x')</script>"


@pytest.fixture
def failed_job(reactor: Reactor) -> str:
    """A job failed for good and kept in the node's memory storage."""
    reactor.config["remove_failed_jobs"] = False
    registry = Registry()

    @registry.job("evil")
    def evil(args: dict[str, Any]) -> None:
        raise ValueError(EVIL)

    address = ("127.0.0.1", reactor.distributor.address_port())
    reactor.start_node("n", "memory", [address], registry=registry)
    errors = Recorder()
    handle = reactor.enqueue("evil", {"html": EVIL}, {"max_attempt": 1}, error=errors)
    assert handle is not None
    errors.wait(1)
    return handle.id


Serve = Callable[[Any], Served]


@contextlib.contextmanager
def http(serve: Serve, app: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=serve(app).url, timeout=20) as c:
        yield c


@pytest.fixture
def client(reactor: Reactor, serve: Serve) -> Iterator[httpx.Client]:
    with http(serve, create_app(reactor, token="tok")) as c:
        yield c


def test_user_data_is_escaped_everywhere(client: httpx.Client, failed_job: str) -> None:
    for path in ("/failed", f"/jobs/{failed_job}", "/failed?partial=1"):
        page = client.get(path)
        assert page.status_code == 200
        assert EVIL not in page.text
        assert "&lt;script&gt;" in page.text


def test_security_headers(client: httpx.Client) -> None:
    page = client.get("/")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp
    assert "default-src 'self'" in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["cache-control"] == "no-store"


def test_partial_renders_only_the_live_block(client: httpx.Client) -> None:
    page = client.get("/?partial=1")
    assert "<html" not in page.text
    assert 'data-k="succeeded"' in page.text


def test_actions_need_the_token_and_the_same_origin(
    client: httpx.Client, failed_job: str, reactor: Reactor
) -> None:
    url = f"/jobs/{failed_job}/delete"
    json = {"accept": "application/json"}
    assert client.post(url, headers=json).status_code == 403
    wrong = {**json, "x-jobreactor-token": "nope"}
    assert client.post(url, headers=wrong).status_code == 403
    cross = {**json, "x-jobreactor-token": "tok", "sec-fetch-site": "cross-site"}
    assert client.post(url, headers=cross).status_code == 403
    assert client.get(url).status_code == 405  # never a GET
    ok = {**json, "x-jobreactor-token": "tok", "sec-fetch-site": "same-origin"}
    answer = client.post(url, headers=ok)
    assert answer.json() == {"ok": True, "job_id": failed_job, "action": "delete"}
    assert client.get(f"/jobs/{failed_job}").status_code == 404
    assert client.post("/jobs/x/explode", headers=ok).status_code == 404


def test_login_sets_a_cookie_that_enables_actions(client: httpx.Client, failed_job: str) -> None:
    assert "Wrong token" in client.post("/login", data={"token": "bad"}).text
    assert "button" not in client.get("/failed").text.split("<main>")[1].split("</table>")[0]
    client.post("/login", data={"token": "tok"})
    page = client.get("/failed")
    assert 'class="btn retry"' in page.text


def test_actions_are_off_without_auth_or_token(
    reactor: Reactor, failed_job: str, serve: Serve
) -> None:
    with http(serve, create_app(reactor)) as c:
        answer = c.post(f"/jobs/{failed_job}/retry", headers={"x-jobreactor-token": ""})
        assert answer.status_code == 403
        assert "auth hook or a token" in answer.json()["error"]
        assert "are off" in c.get("/failed").text


def test_an_auth_hook_decides(reactor: Reactor, failed_job: str, serve: Serve) -> None:
    async def admins(request: Request) -> bool:
        return request.headers.get("x-user") == "admin"

    with http(serve, create_app(reactor, auth=admins)) as c:
        url, accept = f"/jobs/{failed_job}/retry", {"accept": "application/json"}
        assert c.post(url, headers={**accept, "x-user": "guest"}).status_code == 403
        answer = c.post(url, headers={**accept, "x-user": "admin"})
        assert answer.json()["ok"] is True


def test_mounted_under_a_prefix_links_stay_inside(reactor: Reactor, serve: Serve) -> None:
    outer = Starlette(routes=[Mount("/ops/jobs", app=create_app(reactor))])
    with http(serve, outer) as c:
        page = c.get("/ops/jobs/")
        assert page.status_code == 200
        assert 'href="/ops/jobs/static/app.css"' in page.text
        assert 'href="/ops/jobs/failed"' in page.text
        assert c.get("/ops/jobs/static/app.js").status_code == 200
        jump = c.get("/ops/jobs/jobs/?id=abc")
        assert jump.headers["location"].endswith("/ops/jobs/jobs/abc")


def test_metrics_and_health(client: httpx.Client) -> None:
    assert client.get("/health").json()["status"] == "ok"
    text = client.get("/metrics").text
    assert "jobreactor_distributor_pending" in text
    assert "# TYPE jobreactor_jobs_enqueued_total counter" in text


def test_wsgi_bridge_serves_the_pages(reactor: Reactor) -> None:
    app = create_wsgi_app(reactor)
    status: list[str] = []
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/health",
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
    }
    body = b"".join(app(environ, lambda s, h, e=None: status.append(s)))
    assert status == ["200 OK"]
    assert json.loads(body)["status"] == "ok"


def test_unreachable_redis_is_a_503_that_says_so(reactor: Reactor, serve: Serve) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app = create_app(reactor, redis_url=f"redis://127.0.0.1:{port}")
    with http(serve, app) as c:
        page = c.get("/failed")
        assert page.status_code == 503
        assert f"127.0.0.1:{port}" in page.text
        assert c.get("/").status_code == 200  # the live figures don't need that Redis


def test_cancel_a_scheduled_job(reactor: Reactor, serve: Serve) -> None:
    registry = Registry()
    registry.job("later")(lambda args: None)
    address = ("127.0.0.1", reactor.distributor.address_port())
    reactor.start_node("n", "memory", [address], registry=registry)
    handle = reactor.enqueue("later", {}, {"after": 600})
    assert handle is not None
    with http(serve, create_app(reactor, token="tok")) as c:
        page = c.get("/scheduled")
        assert handle.id in page.text
        headers = {"accept": "application/json", "x-jobreactor-token": "tok"}
        answer = c.post(f"/jobs/{handle.id}/cancel", headers=headers)
        assert answer.json()["ok"] is True
        with pytest.raises(JobCancelled):
            handle.result(10)
        assert handle.id not in c.get("/scheduled").text


def test_dashboard_command(redis_server: RedisServer, tmp_path: Any) -> None:
    import socket
    import subprocess

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    base = [sys.executable, "-m", "jobreactor", "dashboard"]
    refused = subprocess.run(base, capture_output=True, text=True, timeout=30, check=False)
    assert refused.returncode == 2
    assert "--discovery-url" in refused.stderr
    proc = subprocess.Popen([*base, "--redis-url", redis_server.url, "--port", str(port)])
    try:

        def up() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, 20, "the dashboard to listen")
        page = httpx.get(f"http://127.0.0.1:{port}/failed", timeout=10)
        assert page.status_code == 200
        assert "redis node storage" in page.text
    finally:
        proc.terminate()
        proc.wait(10)
