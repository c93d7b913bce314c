"""The JSON API (`/api/stats`, `/api/jobs`) and what it finds: counters equal to the jobs run,
retrying jobs, pending jobs in dispatch order (any of 50k openable), the failed index exact over
100k stored records, search and filters; bad input refused with a 4xx, never a 500."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from jobreactor import Reactor, Registry
from jobreactor.dashboard import create_app
from jobreactor.job import JobRecord, JobStatus
from jobreactor.storage.redis import RedisStorage
from tests.conftest import Recorder, wait_until
from tests.dashboard.test_app import Serve, http
from tests.redis_server import RedisServer, unique_prefix

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def api(reactor: Reactor, serve: Serve) -> Iterator[httpx.Client]:
    with http(serve, create_app(reactor, token="tok")) as c:
        yield c


def _jobs(client: httpx.Client, **params: Any) -> dict[str, Any]:
    answer = client.get("/api/jobs", params=params)
    assert answer.status_code == 200, answer.text
    found: dict[str, Any] = answer.json()
    return found


def test_stats_count_the_jobs_run_through_a_node(reactor: Reactor, api: httpx.Client) -> None:
    registry = Registry()

    @registry.job("ok")
    def ok(args: dict[str, Any]) -> None:
        return None

    @registry.job("boom")
    def boom(args: dict[str, Any]) -> None:
        raise RuntimeError("boom")

    reactor.start_node("n1", "memory", [("127.0.0.1", reactor.distributor.address_port())],
                       registry=registry)  # fmt: skip
    done = Recorder()
    reactor.enqueue_many([("ok", {"i": i}, None) for i in range(37)], success=done)
    reactor.enqueue_many([("boom", {"i": i}, {"max_attempt": 2}) for i in range(3)], error=done)
    done.wait(40, timeout=30)
    reactor.wait_idle(10)
    stats = api.get("/api/stats").json()
    assert set(stats) >= {"succeeded", "failed", "retried", "enqueued", "pending", "in_flight",
                          "oldest_pending_s", "jobs"}  # fmt: skip
    assert (stats["succeeded"], stats["failed"], stats["retried"]) == (37, 3, 3)
    assert stats["enqueued"] == 40
    assert (stats["pending"], stats["in_flight"]) == (0, 0)
    assert stats["jobs"]["ok"]["succeeded"] == 37
    assert stats["jobs"]["boom"] == {
        "succeeded": 0, "failed": 3, "retried": 3, "enqueued": 3, "pending": 0, "in_flight": 0,
        "oldest_pending_s": 0.0,
    }  # fmt: skip


def test_retrying_jobs_are_listed_with_next_attempt_and_error(
    reactor: Reactor, api: httpx.Client
) -> None:
    reactor.config.update(retry_multiplier=600)  # the retry waits 10 min
    registry = Registry()

    @registry.job("flaky")
    def flaky(args: dict[str, Any]) -> None:
        raise ConnectionError(f"upstream {args['n']} down")

    reactor.start_node("r1", "memory", [("127.0.0.1", reactor.distributor.address_port())],
                       registry=registry)  # fmt: skip
    handles = [reactor.enqueue("flaky", {"n": n}, {"max_attempt": 5}) for n in range(3)]
    wait_until(lambda: _jobs(api, status="retrying")["total"] == 3, 20, "3 retrying jobs")
    found = _jobs(api, status="retrying")
    assert {j["id"] for j in found["jobs"]} == {h.id for h in handles if h is not None}
    for job in found["jobs"]:
        assert job["status"] == "error"
        assert job["run_at_ts"] > time.time() + 300  # the next attempt
        assert "upstream" in job["last_error"]
        assert job["node"] == "r1"
    # The args hold the error the attempt raised: a search finds it.
    assert [j["id"] for j in _jobs(api, status="retrying", q="upstream 1 ")["jobs"]] == [
        h.id for h in handles[1:2] if h is not None
    ]
    assert _jobs(api, status="retrying", name="other")["total"] == 0
    assert _jobs(api, status="failed")["total"] == 0
    page = api.get("/retrying")
    assert page.status_code == 200
    assert all(h is not None and h.id in page.text for h in handles)
    # "Retry now": the next attempt runs at once (and fails again: attempt 2, retrying).
    first = handles[0]
    assert first is not None
    headers = {"accept": "application/json", "x-jobreactor-token": "tok"}
    assert api.post(f"/jobs/{first.id}/retry", headers=headers).json()["ok"] is True

    def attempts() -> int:
        jobs = _jobs(api, status="retrying", q=first.id)["jobs"]
        return int(jobs[0]["attempt"]) if jobs else 0

    wait_until(lambda: attempts() == 2, 20, "the retried attempt")


def test_pending_in_dispatch_order_and_every_one_openable(
    reactor: Reactor, api: httpx.Client
) -> None:
    """50k pending jobs (no node): priority −5 ones first, exact total, any id has a page."""
    jobs: list[tuple[str, dict[str, Any] | None, dict[str, Any] | None]] = [
        ("bulk", {"i": i}, None) for i in range(50_000)
    ]
    jobs[49_990:] = [("urgent", {"i": i}, {"priority": -5}) for i in range(10)]
    handles = reactor.enqueue_many(jobs)
    first = _jobs(api, status="pending", per_page=20)
    assert first["total"] == 50_000
    assert [j["name"] for j in first["jobs"][:10]] == ["urgent"] * 10
    assert [j["id"] for j in first["jobs"][:10]] == [h.id for h in handles[49_990:]]
    assert [j["id"] for j in first["jobs"][10:]] == [h.id for h in handles[:10]]
    deep = _jobs(api, status="pending", page=2499, per_page=20)  # past the heap walk: a sort
    assert [j["id"] for j in deep["jobs"]] == [h.id for h in handles[49_950:49_970]]
    assert _jobs(api, status="pending", name="urgent")["total"] == 10
    assert _jobs(api, status="pending", q=handles[12_345].id)["jobs"][0]["id"] == handles[12_345].id
    for handle in (handles[0], handles[31_337], handles[49_989]):
        page = api.get(f"/jobs/{handle.id}")
        assert page.status_code == 200
        assert "pending" in page.text
    assert api.get("/queues", params={"page": 3}).status_code == 200


def _stored(i: int, node: str, status: JobStatus) -> JobRecord:
    job = JobRecord(id=f"{node}-{i:06d}", name="import" if i % 2 else "export", args={"row": i})
    job.status = status
    if status == JobStatus.FAILED:
        job.failed_at = 1_700_000_000.0 + i
        job.last_error = f"ValueError: row {i} is bad"
    return job


async def _fill(url: str, prefix: str, count: int, every: int) -> None:
    """`count` records on two nodes; every `every`-th one failed, the rest complete."""
    store = RedisStorage(url, prefix=prefix)
    try:
        for node in ("n1", "n2"):
            batch = [
                _stored(i, node, JobStatus.FAILED if i % every == 0 else JobStatus.COMPLETE)
                for i in range(count // 2)
            ]
            for start in range(0, len(batch), 10_000):
                await store.save_many(node, batch[start : start + 10_000])
    finally:
        await store.aclose()


@pytest.mark.timeout(300)
def test_failed_index_is_exact_over_100k_stored_records(
    reactor: Reactor, redis_server: RedisServer, serve: Serve
) -> None:
    prefix = unique_prefix()
    asyncio.run(_fill(redis_server.url, prefix, 100_000, every=97))
    expected = {f"{node}-{i:06d}" for node in ("n1", "n2") for i in range(0, 50_000, 97)}
    app = create_app(reactor, redis_url=redis_server.url, redis_prefix=prefix)
    with http(serve, app) as c:
        first = _jobs(c, status="failed", per_page=100)
        assert first["total"] == len(expected) == 1032
        assert first["by_node"] == {"n1": 516, "n2": 516}
        seen: list[dict[str, Any]] = []
        for page in range(1, first["pages"] + 1):
            seen += _jobs(c, status="failed", per_page=100, page=page)["jobs"]
        assert {j["id"] for j in seen} == expected
        assert len(seen) == len(expected)
        stamps = [j["failed_at"] for j in seen]
        assert stamps == sorted(stamps, reverse=True)  # newest failure first, across nodes
        only = _jobs(c, status="failed", node="n2", page=3)
        assert only["total"] == 516
        assert {j["node"] for j in only["jobs"]} == {"n2"}
        found = _jobs(c, status="failed", q="row 9700 is")  # last_error is not searched...
        assert found["total"] == 0
        by_args = _jobs(c, status="failed", q='"row": 9700')  # ...args are
        assert [j["id"] for j in by_args["jobs"]] == ["n1-009700", "n2-009700"]
        assert _jobs(c, status="failed", name="export")["total"] == 1032 - 516
        html = c.get("/failed", params={"page": 2})
        assert html.status_code == 200
        assert 'data-total="1032"' in html.text


def test_bad_queries_are_4xx_not_500(api: httpx.Client) -> None:
    assert api.get("/api/jobs", params={"status": "nope"}).status_code == 400
    assert api.get("/api/jobs", params={"status": "failed", "page": "0"}).status_code == 400
    assert api.get("/api/jobs", params={"status": "failed", "page": "x"}).status_code == 400
    assert api.get("/api/jobs", params={"status": "failed", "per_page": 10**6}).status_code == 400
    assert api.get("/api/jobs", params={"status": "failed", "q": "x" * 500}).status_code == 400
    assert api.get("/failed", params={"page": "-1"}).status_code == 400
    for odd in ("a/b", "a?b", "a#b", "a b", "a%2Fb", "é", "..", "<x>"):
        answer = api.get("/jobs/", params={"id": odd})  # shown in place: never a 500 or a 405
        assert answer.status_code == 404, odd
        assert "<x>" not in answer.text
    assert "a/b" in api.get("/jobs/", params={"id": "a/b"}).text
    token = {"accept": "application/json", "x-jobreactor-token": "tok"}
    action = api.post("/jobs/", params={"id": "a/b", "verb": "delete"}, headers=token)
    assert action.json() == {"ok": False, "job_id": "a/b", "action": "delete"}
    big = api.post("/login", content=b"token=" + b"x" * 300_000,
                   headers={"content-type": "application/x-www-form-urlencoded"})  # fmt: skip
    assert big.status_code == 413
