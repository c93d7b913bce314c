"""Limits on the dashboard's overview and in the Prometheus text (issue 21)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import httpx
from prometheus_client import generate_latest

from jobreactor import Limit, Reactor, Registry
from jobreactor.dashboard import create_app
from jobreactor.metrics import metrics_registry
from tests.conftest import wait_until
from tests.dashboard.conftest import Served


def test_waiting_jobs_show_per_key_on_the_overview_and_as_a_gauge(
    reactor: Reactor, serve: Callable[[Any], Served]
) -> None:
    registry, opened, started = Registry(), threading.Event(), threading.Event()

    @registry.job("export", limits=[Limit(concurrency=1, key="{customer}")])
    async def export(args: dict[str, Any]) -> None:
        started.set()
        await asyncio.to_thread(opened.wait, 30)

    reactor.start_node(
        "w1", "memory", [("127.0.0.1", reactor.distributor.address_port())], registry=registry
    )
    handles = [reactor.enqueue("export", {"customer": "acme<b>"}) for _ in range(3)]
    assert started.wait(20)
    try:
        with httpx.Client(base_url=serve(create_app(reactor)).url, timeout=20) as client:
            wait_until(lambda: "Waiting for limits" in client.get("/").text, 20, "the table")
            page = client.get("/").text
            assert "concurrency:acme&lt;b&gt;" in page  # escaped like every user value
        text = generate_latest(metrics_registry()).decode()
        assert (
            'jobreactor_limit_waiting{job_name="export",limit_key="concurrency:acme<b>",'
            'node="w1"} 2.0' in text
        )
    finally:
        opened.set()
    for handle in handles:
        handle.result(20)  # type: ignore[union-attr]
