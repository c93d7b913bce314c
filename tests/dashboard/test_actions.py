"""Ops actions: each logged with who and what, same-origin enforced, bulk needs a confirmation,
a quiet node takes no new jobs and resume restores it (in this process, over the node's link,
and on the node's Redis commands channel), Cancel not offered where it can't work."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from jobreactor import Reactor, Registry
from jobreactor.dashboard import create_app
from jobreactor.monitor import RedisMonitor
from tests.conftest import CliNode, Recorder, make_test_reactor, wait_until
from tests.dashboard.test_app import Serve, http
from tests.redis_server import RedisServer, unique_prefix

pytestmark = pytest.mark.timeout(120)

OK = {"accept": "application/json", "x-jobreactor-token": "tok"}
FORM = {**OK, "content-type": "application/x-www-form-urlencoded"}


def _actions(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("action ")]


def _failing(reactor: Reactor, count: int) -> list[str]:
    reactor.config["remove_failed_jobs"] = False
    registry = Registry()

    @registry.job("bad")
    def bad(args: dict[str, Any]) -> None:
        raise ValueError("bad input")

    address = ("127.0.0.1", reactor.distributor.address_port())
    reactor.start_node("n", "memory", [address], registry=registry)
    errors = Recorder()
    handles = reactor.enqueue_many(
        [("bad", {"i": i}, {"max_attempt": 1}) for i in range(count)], error=errors
    )
    errors.wait(count)
    return [h.id for h in handles]


def test_bulk_actions_need_confirmation_and_are_logged(
    reactor: Reactor, serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "jobreactor.dashboard")
    ids = _failing(reactor, 6)
    with http(serve, create_app(reactor, token="tok")) as c:
        assert c.get("/api/jobs", params={"status": "failed"}).json()["total"] == 6
        body = "&".join(f"id={i}" for i in ids[:4])
        assert c.post("/bulk/delete", content=body, headers=FORM).status_code == 400  # no confirm
        cross = {**FORM, "sec-fetch-site": "cross-site"}
        assert (
            c.post("/bulk/delete", content=body + "&confirm=yes", headers=cross).status_code == 403
        )
        no_token = {"content-type": FORM["content-type"]}
        assert (
            c.post("/bulk/delete", content=body + "&confirm=yes", headers=no_token).status_code
            == 403
        )
        answer = c.post("/bulk/delete", content=body + "&confirm=yes", headers=FORM).json()
        assert (answer["done"], answer["asked"], answer["ok"]) == (4, 4, True)
        left = c.get("/api/jobs", params={"status": "failed"}).json()
        assert {j["id"] for j in left["jobs"]} == set(ids[4:])
        one = c.post(f"/jobs/{ids[4]}/delete", headers=OK)
        assert one.json()["ok"] is True
        huge = c.post("/bulk/retry", content=b"id=" + b"x" * 100_000, headers=FORM)
        assert huge.status_code == 413
    logged = _actions(caplog)
    assert any("bulk delete of 4 job(s) by 127.0.0.1 (token): 4 done" in m for m in logged)
    assert any(f"delete job {ids[4]} by 127.0.0.1 (token): True" in m for m in logged)


def test_quiet_node_takes_no_new_jobs_and_resume_restores_it(
    reactor: Reactor, serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "jobreactor")
    ran: dict[str, list[int]] = {"a": [], "b": []}
    address = ("127.0.0.1", reactor.distributor.address_port())
    for name in ("a", "b"):
        registry = Registry()

        def work(args: dict[str, Any], _name: str = name) -> None:
            ran[_name].append(args["i"])

        registry.job("work")(work)
        reactor.start_node(name, "memory", [address], registry=registry)
    reactor.wait_for_node("a")
    reactor.wait_for_node("b")
    with http(serve, create_app(reactor, token="tok")) as c:
        assert c.post("/nodes/a/quiet", headers={**OK, "origin": "http://evil"}).status_code == 403
        answer = c.post("/nodes/a/quiet", headers=OK).json()
        assert answer == {"ok": True, "node": "a", "action": "quiet", "state": "quiet"}
        credit = {n["name"]: n["free_credit"] for n in reactor.nodes()}
        wait_until(lambda: {n["name"]: n["free_credit"] for n in reactor.nodes()}["a"] == 0, 10)
        assert credit["b"] > 0
        done = Recorder()
        reactor.enqueue_many([("work", {"i": i}, None) for i in range(30)], success=done)
        done.wait(30)
        assert (len(ran["a"]), len(ran["b"])) == (0, 30)  # the quiet node took none
        assert "quiet" in c.get("/nodes/a").text
        assert c.post("/nodes/a/resume", headers=OK).json()["state"] == "running"
        assert c.post("/nodes/b/quiet", headers=OK).json()["state"] == "quiet"
        wait_until(lambda: {n["name"]: n["free_credit"] for n in reactor.nodes()}["b"] == 0, 10)
        reactor.enqueue_many([("work", {"i": i}, None) for i in range(30, 50)], success=done)
        done.wait(50)
        assert (len(ran["a"]), len(ran["b"])) == (20, 30)  # resumed: a takes jobs again
        refused = c.post("/nodes/nobody/quiet", headers=OK)
        assert refused.status_code == 409
        assert "not connected" in refused.json()["error"]
    logged = _actions(caplog)
    assert any(m.startswith("action quiet node a by 127.0.0.1 (token): quiet") for m in logged)
    assert any(m.startswith("action resume node a by") for m in logged)


def test_quiet_reaches_a_cli_node_through_its_distributor(
    reactor: Reactor, cli_node: Callable[..., CliNode], serve: Serve, tmp_path: Path
) -> None:
    address = ("127.0.0.1", reactor.distributor.address_port())
    far = cli_node("far", address)
    reactor.wait_for_node("far", timeout=20)
    with http(serve, create_app(reactor, token="tok")) as c:
        quiet = c.post("/nodes/far/quiet", headers=OK).json()
        assert quiet["state"] == "quiet", (quiet, far.log_text())
        wait_until(lambda: reactor.nodes()[0]["free_credit"] == 0, 10, "far's credit to go")
        handle = reactor.enqueue("simple", {"out": str(tmp_path / "out.jsonl")})
        assert handle is not None
        wait_until(lambda: reactor.distributor.stats()["pending"] == 1, 10, "the job to wait")
        assert c.post("/nodes/far/resume", headers=OK).json()["state"] == "running"
        handle.result(20)  # resumed: it runs
        drained = c.post("/nodes/far/drain", headers=OK).json()
        assert drained["state"] == "draining"
        assert far.wait(20) == 0  # a `jobreactor node` process exits once drained
    assert "quiet requested by 127.0.0.1 (token)" in far.log_text()


def test_quiet_on_the_redis_commands_channel(redis_server: RedisServer) -> None:
    prefix = unique_prefix()
    reactor = make_test_reactor(redis_prefix=prefix)
    try:
        reactor.start_distributor("127.0.0.1", 0)
        address = ("127.0.0.1", reactor.distributor.address_port())
        registry = Registry()
        registry.job("noop")(lambda args: None)
        node = reactor.start_node(
            "rn", "redis", [address], redis_url=redis_server.url, registry=registry
        )
        with RedisMonitor(redis_server.url, prefix=prefix) as monitor:
            wait_until(lambda: monitor.control("rn", "quiet", "test") == 1, 10, "a listener")
            wait_until(lambda: node._node.control.state == "quiet", 10, "the node to go quiet")
            wait_until(lambda: reactor.nodes()[0]["free_credit"] == 0, 10)
            assert monitor.control("rn", "resume", "test") == 1
            wait_until(lambda: node._node.control.state == "running", 10)
            with pytest.raises(ValueError, match="unknown node op"):
                monitor.control("rn", "explode")
    finally:
        reactor.stop(timeout=10)


def test_cancel_is_not_offered_where_it_cannot_work(
    redis_server: RedisServer, serve: Serve
) -> None:
    prefix = unique_prefix()
    app_reactor = make_test_reactor(redis_prefix=prefix, registry_beat=0.2)
    try:
        app_reactor.start_distributor("127.0.0.1", 0, discovery_url=redis_server.url)
        handle = app_reactor.enqueue("later", {"n": 1})  # no node: it waits
        assert handle is not None
        dash = create_app(discovery_url=redis_server.url, redis_prefix=prefix, token="tok")
        with http(serve, dash) as c:
            wait_until(lambda: handle.id in c.get("/queues").text, 10, "the registry beat")
            page = c.get("/queues", headers={"x-jobreactor-token": "tok"}).text
            assert "btn cancel" not in page
            refused = c.post(f"/jobs/{handle.id}/cancel", headers=OK)
            assert refused.status_code == 409
            assert "distributor this dashboard can reach" in refused.json()["error"]
            job = c.get(f"/jobs/{handle.id}", headers={"x-jobreactor-token": "tok"})
            assert job.status_code == 200
            assert "btn cancel" not in job.text
    finally:
        app_reactor.stop(timeout=10)


def test_same_origin_from_a_browser_form(reactor: Reactor, serve: Serve) -> None:
    ids = _failing(reactor, 1)
    with http(serve, create_app(reactor, token="tok")) as c:
        headers = {"x-jobreactor-token": "tok", "sec-fetch-site": "same-site"}
        assert c.post(f"/jobs/{ids[0]}/retry", headers=headers).status_code == 403
        headers["sec-fetch-site"] = "same-origin"
        answer = c.post(f"/jobs/{ids[0]}/retry", headers=headers)
        assert answer.status_code == 303  # back to the page it came from
        assert isinstance(answer, httpx.Response)
