"""Every page in a real browser with a realistic state: retries, failures, delayed and periodic
jobs, a batch and 50k pending, mounted in the app (this process) and from the registry. The
counts shown equal the counts produced; pagination and search work. Screenshots go to
artifacts/screenshots/ (not committed)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from jobreactor import Reactor, Registry
from jobreactor.batch import open_batch
from jobreactor.dashboard import create_app
from tests.conftest import Recorder, make_test_reactor, wait_until
from tests.dashboard.conftest import Served, screenshot
from tests.redis_server import RedisServer, unique_prefix

pytestmark = pytest.mark.timeout(240)

PENDING = 50_000
FAILED = 120
RETRYING = 7
SUCCEEDED = 40


def _int(page: Any, selector: str) -> int:
    return int(page.locator(selector).first.inner_text().strip().replace(",", ""))


@dataclass
class State:
    reactor: Reactor
    pending: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    retrying: list[str] = field(default_factory=list)
    delayed: str = ""
    periodic: str = ""
    batch: str = ""


@pytest.fixture
def busy() -> Iterator[State]:
    """One memory node (2 slots, both held by long jobs), every kind of job in sight."""
    registry = Registry()

    @registry.job("send_mail")
    def send_mail(args: dict[str, Any]) -> None:
        return None

    @registry.job("charge")
    def charge(args: dict[str, Any]) -> None:
        raise ValueError(f"card {args['card']} declined")

    @registry.job("sync")
    def sync(args: dict[str, Any]) -> None:
        raise ConnectionError("upstream down")

    @registry.job("transcode")
    async def transcode(args: dict[str, Any]) -> None:
        await asyncio.Event().wait()  # holds a slot until the reactor stops (never set)

    reactor = make_test_reactor(
        concurrency=2, prefetch=0, remove_failed_jobs=False, retry_multiplier=900
    )
    state = State(reactor)
    try:
        reactor.start_distributor("127.0.0.1", 0)
        address = ("127.0.0.1", reactor.distributor.address_port())
        node = reactor.start_node("worker-1", "memory", [address], registry=registry)
        done = Recorder()
        reactor.enqueue_many([("send_mail", {"to": f"u{i}@x"}, None) for i in range(SUCCEEDED)],
                             success=done)  # fmt: skip
        failed = reactor.enqueue_many(
            [("charge", {"card": f"4242-{i:03d}"}, {"max_attempt": 1}) for i in range(FAILED)],
            error=done,
        )
        done.wait(SUCCEEDED + FAILED, timeout=90)
        state.failed = [h.id for h in failed]
        retrying = reactor.enqueue_many([("sync", {"n": i}, None) for i in range(RETRYING)])
        state.retrying = [h.id for h in retrying]
        delayed = reactor.enqueue("send_mail", {"to": "later@x"}, {"after": 600})
        periodic = reactor.enqueue("send_mail", {"to": "digest@x"}, {"period": 3600, "after": 3600})
        assert delayed is not None
        assert periodic is not None
        state.delayed, state.periodic = delayed.id, periodic.id
        batch = open_batch()
        state.batch = batch.token
        for part_args, part in batch.push_each([{"day": d} for d in range(3)]):
            reactor.enqueue("send_mail", {**part_args, "batch": batch.token, "part": part},
                            {"after": 900})  # fmt: skip
        for name in ("a.mp4", "b.mp4"):
            reactor.enqueue("transcode", {"file": name})
        wait_until(lambda: node.running_count == 2, 60, "both slots taken")
        wait_until(lambda: len(reactor.distributor.dispatcher) == 0, 60, "the queue drained")
        for start in range(0, PENDING, 10_000):
            handles = reactor.enqueue_many(
                [("send_mail", {"to": f"bulk{start + i}@x"}, {"priority": 5})
                 for i in range(10_000)]
            )  # fmt: skip
            state.pending += [h.id for h in handles]
        yield state
    finally:
        reactor.stop(timeout=10)


def test_every_page_mounted(busy: State, serve: Callable[[Any], Served], page: Any) -> None:
    reactor = busy.reactor
    served = serve(create_app(reactor, token="tok", refresh_s=60))
    wait_until(lambda: len(reactor.distributor.dispatcher) == PENDING, 20, "every job pending")
    page.goto(served.url + "/login")
    page.fill("input[name=token]", "tok")
    page.click("button[type=submit]")

    page.goto(served.url + "/")
    assert _int(page, "[data-k=succeeded]") == SUCCEEDED
    assert _int(page, "[data-k=failed]") == FAILED
    assert _int(page, "[data-k=pending]") == PENDING
    # Out on the node: 2 running, the retrying, delayed, periodic and batch jobs it holds.
    assert _int(page, "[data-k=in_flight]") == 2 + RETRYING + 2 + 3
    screenshot(page, "state-overview")

    page.goto(served.url + "/queues")
    assert _int(page, "#total") == PENDING
    first = page.locator("table#pending tbody tr").first.get_attribute("data-job")
    assert first == busy.pending[0]
    page.click("a[rel=next]")
    page.wait_for_url("**/queues?page=2*")
    assert (
        page.locator("table#pending tbody tr").first.get_attribute("data-job") == (busy.pending[50])
    )
    screenshot(page, "state-pending")
    page.fill("#search input[name=q]", "bulk31337@")
    page.click("#search button")
    page.wait_for_url("**q=bulk31337*")
    assert _int(page, "#total") == 1
    assert page.locator("table#pending tbody tr").get_attribute("data-job") == busy.pending[31337]

    page.goto(served.url + "/retrying")
    assert _int(page, "#total") == RETRYING
    assert "upstream down" in page.locator("table#retrying").inner_text()
    screenshot(page, "state-retrying")

    page.goto(served.url + "/scheduled")
    table = page.locator("table#scheduled").inner_text()
    assert busy.delayed in table
    assert busy.periodic in table
    assert "periodic · every 60 min" in table
    screenshot(page, "state-scheduled")

    page.goto(served.url + "/failed")
    assert _int(page, "#total") == FAILED
    assert page.locator("table#failed tbody tr").count() == 50
    assert "page 1 of 3" in page.locator(".pager").inner_text()
    screenshot(page, "state-failed")
    page.click("a[rel=next]")
    page.click("a[rel=next]")
    page.wait_for_url("**page=3*")
    assert page.locator("table#failed tbody tr").count() == FAILED - 100
    page.goto(served.url + "/failed?q=4242-007")
    assert _int(page, "#total") == 1
    # Bulk: select the page, confirm, retried (they fail again at once: still 120).
    page.goto(served.url + "/failed?name=charge&per_page=5")
    page.on("dialog", lambda dialog: dialog.accept())
    page.check("table#failed input.all")
    page.click("#bulk button[data-verb=retry]")
    page.wait_for_selector("#notice.ok")
    assert "(5 of 5)" in page.locator("#notice").inner_text()
    screenshot(page, "state-failed-bulk")

    page.goto(served.url + "/nodes/worker-1")
    assert page.locator("#node-state").inner_text() == "running"
    screenshot(page, "state-node")
    page.click("form[data-action=quiet] button")
    page.wait_for_selector("#notice.ok")
    page.reload()
    assert page.locator("#node-state").inner_text() == "quiet"
    page.click("form[data-action=resume] button")
    page.wait_for_selector("#notice.ok")

    page.goto(served.url + f"/batches/{busy.batch}")
    assert _int(page, "[data-k=total]") == 3
    assert _int(page, "[data-list=scheduled]") == 3
    screenshot(page, "state-batch")

    page.goto(served.url + f"/jobs/{busy.pending[-1]}")
    assert "pending" in page.locator("dl.fields").first.inner_text()
    screenshot(page, "state-job-pending")
    page.goto(served.url + f"/jobs/{busy.failed[0]}")
    assert "declined" in page.locator("pre.error").first.inner_text()
    screenshot(page, "state-job-failed")


def test_pending_counts_and_any_job_from_the_registry(
    redis_server: RedisServer, serve: Callable[[Any], Served], page: Any
) -> None:
    """Registry mode: a Redis-backed distributor of another reactor; totals from its beat,
    any pending job's page from its journal (not only the 20 its beat lists)."""
    prefix = unique_prefix()
    app = make_test_reactor(redis_prefix=prefix, registry_beat=0.2)
    try:
        app.start_distributor("127.0.0.1", 0, storage="redis", redis_url=redis_server.url,
                              discovery_url=redis_server.url)  # fmt: skip
        handles = app.enqueue_many([("later", {"i": i}, {"priority": i % 3}) for i in range(500)])
        dash = create_app(discovery_url=redis_server.url, redis_prefix=prefix)
        served = serve(dash)
        page.goto(served.url + "/queues")
        page.wait_for_function("() => document.querySelector('#total')?.textContent === '500'")
        rows = page.locator("table#pending tbody tr")
        assert rows.count() == 20  # what the beat lists: the first 20 in dispatch order
        assert rows.first.get_attribute("data-job") == handles[0].id  # priority 0 first
        screenshot(page, "state-registry-pending")
        page.goto(served.url + f"/jobs/{handles[-1].id}")  # far outside the beat's 20
        assert "accepted" in page.locator("dl.fields").first.inner_text()
        screenshot(page, "state-registry-job")
        page.goto(served.url + "/")
        assert _int(page, "[data-k=pending]") == 500
        assert _int(page, "[data-k=enqueued]") == 500
    finally:
        app.stop(timeout=10)
