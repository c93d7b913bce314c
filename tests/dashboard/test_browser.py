"""The dashboard in a real browser (Playwright driving Debian's headless chromium).

Each test saves screenshots of what it saw under artifacts/screenshots/ (not committed).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from jobreactor import Reactor, Registry
from jobreactor.dashboard import create_app
from tests.conftest import CliNode, make_test_reactor, wait_until
from tests.dashboard.conftest import Served, screenshot
from tests.redis_server import RedisServer, unique_prefix

pytestmark = pytest.mark.timeout(120)


def _int(page: Any, selector: str) -> int:
    return int(page.locator(selector).inner_text().strip())


@pytest.fixture
def flowing() -> Iterator[tuple[Reactor, threading.Event]]:
    """A reactor with a memory node and an app thread enqueuing jobs until told to stop."""
    registry = Registry()

    @registry.job("send_mail")
    def send_mail(args: dict[str, Any]) -> None:
        return None

    @registry.job("transcode")
    async def transcode(args: dict[str, Any]) -> None:
        await asyncio.Event().wait()  # in flight until the reactor stops (shutdown_timeout 2 s)

    # Two run slots, no prefetch: two long jobs fill the node and what follows waits.
    reactor = make_test_reactor(concurrency=2, prefetch=0)
    reactor.start_distributor("127.0.0.1", 0)
    address = ("127.0.0.1", reactor.distributor.address_port())
    reactor.start_node("mailer", "memory", [address], registry=registry)
    stop = threading.Event()

    def produce() -> None:
        while not stop.wait(0.05):
            reactor.enqueue_many([("send_mail", {"to": "<b>x</b>@example.com"}, None)] * 20)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    yield reactor, stop
    stop.set()
    thread.join(5)
    reactor.stop(timeout=10)


def test_overview_counters_move_while_jobs_flow(
    flowing: tuple[Reactor, threading.Event], serve: Callable[[Any], Served], page: Any
) -> None:
    reactor, producing = flowing
    served = serve(create_app(reactor, refresh_s=0.5))
    page.goto(served.url + "/")
    first = _int(page, "[data-k=succeeded]")
    # No reload: the live refresh swaps the numbers in place.
    page.wait_for_function(
        "n => parseInt(document.querySelector('[data-k=succeeded]').textContent) > n + 40",
        arg=first,
    )
    assert page.locator("#nodes [data-node=mailer]").count() == 1
    assert "send_mail" in page.locator("#by-job").inner_text()
    # The chart: a step line over three or more sampled intervals.
    page.wait_for_function(
        "() => (document.querySelector('.chart polyline.ok')?.getAttribute('points') || '')"
        ".split(' ').length >= 6"
    )
    screenshot(page, "overview")
    # Two long jobs fill the node's two slots: what comes next waits in the distributor.
    producing.set()
    for name in ("talk.mp4", "demo.mp4"):
        reactor.enqueue("transcode", {"file": name})
    wait_until(lambda: reactor.nodes()[0]["in_flight"] == 2, 10, "both slots taken")
    waiting = [reactor.enqueue("send_mail", {"to": f"later{i}@example.com"}) for i in range(3)]
    page.goto(served.url + "/queues")
    page.wait_for_selector("table.in-flight >> text=transcode")
    for handle in waiting:
        assert handle is not None
        assert page.locator(f"table#pending >> text={handle.id}").count() == 1
    screenshot(page, "queues")


def test_scheduled_page_lists_delayed_and_periodic_jobs(
    reactor: Reactor, serve: Callable[[Any], Served], page: Any
) -> None:
    registry = Registry()

    @registry.job("report")
    def report(args: dict[str, Any]) -> None:
        return None

    address = ("127.0.0.1", reactor.distributor.address_port())
    reactor.start_node("clock", "memory", [address], registry=registry)
    later = reactor.enqueue("report", {"what": "<img src=x onerror=alert(1)>"}, {"after": 600})
    tick = reactor.enqueue("report", {"what": "hourly"}, {"period": 3600, "after": 3600})
    assert later is not None
    assert tick is not None
    served = serve(create_app(reactor))
    page.goto(served.url + "/scheduled")
    page.wait_for_selector(f"text={later.id}")
    table = page.locator("#scheduled").inner_text()
    assert "periodic" in table
    assert "delayed" in table
    assert "<img src=x onerror=alert(1)>" in table  # shown as text: escaped
    assert page.locator("#scheduled img").count() == 0
    screenshot(page, "scheduled")
    page.click(f"text={later.id}")
    page.wait_for_selector("pre.args")
    assert "onerror" in page.locator("pre.args").inner_text()
    screenshot(page, "job-scheduled")


def test_fail_a_job_then_retry_it_from_the_failed_page(
    redis_server: RedisServer, serve: Callable[[Any], Served], page: Any
) -> None:
    url = redis_server.url
    prefix = unique_prefix()
    healed = threading.Event()
    done: list[dict[str, Any]] = []
    registry = Registry()

    @registry.job("charge")
    def charge(args: dict[str, Any]) -> None:
        if not healed.is_set():
            raise RuntimeError(f"card {args['card']} declined <script>alert(1)</script>")

    @registry.job_callback("charge", "charge_receipt")
    def receipt(args: dict[str, Any]) -> None:
        done.append(args)

    reactor = make_test_reactor(max_attempt=2, redis_prefix=prefix, remove_failed_jobs=False)
    try:
        reactor.start_distributor("127.0.0.1", 0)
        address = ("127.0.0.1", reactor.distributor.address_port())
        reactor.start_node("billing", "redis", [address], redis_url=url, registry=registry)
        handle = reactor.enqueue("charge", {"card": "4242"})
        assert handle is not None
        app = create_app(reactor, redis_url=url, redis_prefix=prefix, token="s3cret")
        served = serve(app)
        page.goto(served.url + "/failed")
        page.wait_for_selector(f"tr[data-job='{handle.id}']")
        assert "declined" in page.locator("#failed").inner_text()
        assert page.locator("button.retry").count() == 0  # actions need the token first
        screenshot(page, "failed-signed-out")
        page.goto(served.url + "/login")
        page.fill("input[name=token]", "s3cret")
        page.click("button[type=submit]")
        page.goto(served.url + "/jobs/" + handle.id)
        assert "charge_receipt" in page.locator("ol.chain").inner_text()
        screenshot(page, "job-failed")
        page.goto(served.url + "/failed")
        screenshot(page, "failed")
        healed.set()
        page.click(f"tr[data-job='{handle.id}'] button.retry")
        wait_until(lambda: len(done) == 1, 15.0, "the retried job to succeed")
        page.wait_for_selector(f"tr[data-job='{handle.id}']", state="detached")
        assert done[0]["card"] == "4242"
    finally:
        reactor.stop(timeout=10)


def test_a_stopped_node_disappears(
    reactor: Reactor,
    cli_node: Callable[..., CliNode],
    serve: Callable[[Any], Served],
    page: Any,
) -> None:
    address = ("127.0.0.1", reactor.distributor.address_port())
    far = cli_node("far", address)
    reactor.wait_for_node("far", timeout=20)
    served = serve(create_app(reactor, refresh_s=0.5))
    page.goto(served.url + "/")
    page.wait_for_selector("#distributors [data-node=far]")
    screenshot(page, "node-connected")
    far.stop()
    page.wait_for_selector("#distributors [data-node=far]", state="detached")
    screenshot(page, "node-gone")


def test_actions_are_refused_without_auth_or_token(
    reactor: Reactor, serve: Callable[[Any], Served], page: Any
) -> None:
    served = serve(create_app(reactor))
    page.goto(served.url + "/failed")
    answer = page.evaluate(
        "url => fetch(url, {method: 'POST'}).then(r => r.status)", served.url + "/jobs/x/retry"
    )
    assert answer == 403
    assert "Actions (retry, delete, cancel) are off" in page.content()
