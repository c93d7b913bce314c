"""FastAPI recipes (examples/web/fastapi_app.py, lifespan + aenqueue) under the real servers."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.web.servers import WebNode, WebServer, request_all
from tests.web.test_gunicorn import check_every_job_ran_once_and_fed_back_home


@pytest.mark.timeout(120)
def test_uvicorn_two_workers_2000_requests_with_aenqueue(
    web: Callable[..., WebServer], nodes: Callable[..., list[WebNode]]
) -> None:
    server = web(
        "uvicorn", "fastapi_app:app", "--workers", "2", "--port", "{port}", "--no-access-log"
    )
    server.wait_serving()
    nodes(2, server.out)
    answers, failed = request_all(server.url, range(2000))
    assert failed == []
    # Which worker accepts a connection is the kernel's choice (one may take them all under
    # load); what we own is that each answer's feedback comes home to the worker that sent it.
    assert {answer["pid"] for answer in answers.values()} <= server.workers()
    check_every_job_ran_once_and_fed_back_home(server.out, answers)
    assert server.stop() == 0, server.log_text()[-4000:]


@pytest.mark.parametrize("path", ["/enqueue/{n}", "/enqueue-sync/{n}"], ids=["async", "sync"])
def test_gunicorn_uvicorn_worker(
    web: Callable[..., WebServer], nodes: Callable[..., list[WebNode]], path: str
) -> None:
    server = web(
        "gunicorn", "-c", "/dev/null", "-k", "uvicorn_worker.UvicornWorker", "-w", "2",
        "-b", "127.0.0.1:{port}", "--no-control-socket", "fastapi_app:app",
    )  # fmt: skip
    server.wait_serving()
    nodes(1, server.out)
    answers, failed = request_all(server.url, range(300), path=path)
    assert failed == []
    assert {answer["pid"] for answer in answers.values()} <= server.workers()
    check_every_job_ran_once_and_fed_back_home(server.out, answers)
    assert server.stop() == 0, server.log_text()[-4000:]
