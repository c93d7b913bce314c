"""Node identity (issue 10, defect 1): a second process under a live node's name is refused,
never the live one kicked; the refused node backs off instead of flapping; names can carry
`{hostname}`/`{pid}` so replicas of one node.toml differ. Also the secret mismatches (defect 5)."""

from __future__ import annotations

import collections
import itertools
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

import pytest

from jobreactor import InvalidOptions, Reactor
from jobreactor.node.identity import expand_node_name
from jobreactor.protocol import NONCE_BYTES, PROTOCOL_VERSION, Bye, FrameDecoder, Hello, encode
from tests.conftest import make_test_reactor, noop_registry, wait_until


def messages(caplog: pytest.LogCaptureFixture, level: int, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level and text in r.getMessage()]


def wait_for_error(
    caplog: pytest.LogCaptureFixture, text: str, count: int = 1, timeout: float = 10.0
) -> None:
    """Wait until `count` ERROR records contain `text`."""
    wait_until(
        lambda: len(messages(caplog, logging.ERROR, text)) >= count,
        timeout=timeout,
        what=f"{count} error(s) saying {text!r}",
    )


# --- names ----------------------------------------------------------------------------------------


def test_name_fields_are_filled_in() -> None:
    host = socket.gethostname().split(".")[0]
    assert expand_node_name("w-{hostname}") == f"w-{host}"
    assert expand_node_name("w-{pid}") == f"w-{os.getpid()}"
    assert expand_node_name("plain") == "plain"
    assert expand_node_name("a{{b}}") == "a{b}"


@pytest.mark.parametrize("template", ["w-{host}", "w-{", "w-{0}", "w-{pid!r}", "w-{pid:>9}"])
def test_unknown_name_fields_are_refused(template: str) -> None:
    with pytest.raises(InvalidOptions, match="node name"):
        expand_node_name(template)


def test_start_node_expands_the_name(reactor: Reactor) -> None:
    node = reactor.start_node("w-{pid}", registry=noop_registry())
    assert node.name == f"w-{os.getpid()}"
    reactor.wait_for_node(f"w-{os.getpid()}", timeout=10)


def test_cli_node_name_from_a_template(cli_node: Any, reactor: Reactor, tmp_path: Path) -> None:
    host = socket.gethostname().split(".")[0]
    cli_node("w-{hostname}", ("127.0.0.1", reactor.distributor.address_port()))
    reactor.wait_for_node(f"w-{host}", timeout=20)


# --- namesakes ------------------------------------------------------------------------------------


def test_a_second_instance_is_refused_and_the_first_keeps_its_jobs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reactor = make_test_reactor(reconnect_interval=0.05)
    try:
        reactor.start_distributor("127.0.0.1", 0)
        first = reactor.start_node("w1", registry=noop_registry())
        with caplog.at_level(logging.INFO, logger="jobreactor"):
            second = reactor.start_node("w1", registry=noop_registry(), wait=False)
            wait_until(
                lambda: (
                    bool(messages(caplog, logging.ERROR, "refused node 'w1'"))
                    and bool(messages(caplog, logging.ERROR, "distributor 127.0.0.1"))
                ),
                timeout=10,
                what="the refusal logged on both sides",
            )
            handles = [reactor.enqueue("noop", {"i": i}) for i in range(50)]
            for handle in handles:
                assert handle is not None
                handle.result(timeout=10)
        dist_side = messages(caplog, logging.ERROR, "refused node 'w1'")[0]
        assert "duplicate node name 'w1'" in dist_side
        assert "{hostname}" in dist_side
        node_side = messages(caplog, logging.ERROR, "refused node 'w1'")
        assert any("distributor 127.0.0.1" in m for m in node_side)
        assert first._node.links[0].is_ready
        assert not second._node.links[0].is_ready
        assert not messages(caplog, logging.INFO, "replaced by a new connection")
        assert [n["name"] for n in reactor.nodes()] == ["w1"]
        assert first._node.instance != second._node.instance
    finally:
        reactor.stop(timeout=10)


@pytest.mark.timeout(90)
def test_two_cli_nodes_with_one_name_run_every_job_once_and_do_not_flap(
    cli_node: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 10's loop, in miniature: it made 475,660 executions of 3,000 jobs in 2.5 min."""
    reactor = make_test_reactor()
    try:
        address = reactor.start_distributor("127.0.0.1", 0)
        with caplog.at_level(logging.ERROR, logger="jobreactor"):
            nodes = [cli_node("dup", address, concurrency=100, prefetch=0) for _ in range(2)]
            reactor.wait_for_node("dup", timeout=20)
            out = tmp_path / "out.jsonl"
            handles = [
                reactor.enqueue("slow", {"out": str(out), "i": i, "s": 0.3}) for i in range(600)
            ]
            for handle in handles:
                assert handle is not None
                handle.result(timeout=60)
        runs = collections.Counter(json.loads(line)["i"] for line in out.read_text().splitlines())
        assert sorted(runs) == list(range(600))
        assert set(runs.values()) == {1}
        clash = messages(caplog, logging.ERROR, "duplicate node name 'dup'")
        assert clash, "the distributor names the clash"
        refused = [n for n in nodes if "duplicate node name 'dup'" in n.log_text()]
        assert len(refused) == 1, "exactly one of the two is refused, and says why"
        # No flapping: the refused one backs off (0.1 s doubling to 30 s), so a handful of tries
        # over the whole run, not hundreds; the live one was never replaced.
        tries = refused[0].log_text().count("duplicate node name 'dup'")
        assert 1 <= tries <= 12, tries
        assert all("replaced by a new connection" not in n.log_text() for n in nodes)
    finally:
        reactor.stop(timeout=10)


# --- secrets --------------------------------------------------------------------------------------


def test_wrong_secret_is_logged_on_both_sides_blaming_the_right_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reactor = make_test_reactor()
    try:
        reactor.start_distributor("127.0.0.1", 0, secret="right")
        with caplog.at_level(logging.INFO, logger="jobreactor"):
            reactor.start_node("w1", registry=noop_registry(), secret="wrong", wait=False)
            wait_for_error(caplog, "refused our proof")
        dist_side = messages(caplog, logging.WARNING, "bad secret")
        assert dist_side
        assert "'w1'" in dist_side[0]
        assert "127.0.0.1:" in dist_side[0]
        node_side = messages(caplog, logging.ERROR, "refused our proof")[0]
        assert "check that both sides have the same secret" in node_side
        assert not messages(caplog, logging.INFO, "ready to work")
        assert reactor.nodes() == []
    finally:
        reactor.stop(timeout=10)


def test_a_node_with_a_secret_is_refused_by_a_distributor_without_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 12: the app side logged "ready to work" before the node refused the distributor."""
    reactor = make_test_reactor()
    try:
        reactor.start_distributor("127.0.0.1", 0)
        with caplog.at_level(logging.INFO, logger="jobreactor"):
            reactor.start_node("w1", registry=noop_registry(), secret="s3cret", wait=False)
            wait_for_error(caplog, "has no secret but the node has")
        assert not messages(caplog, logging.INFO, "ready to work")
        assert reactor.nodes() == []
    finally:
        reactor.stop(timeout=10)


def test_bad_secret_warnings_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    reactor = make_test_reactor(reconnect_interval=0.01)
    try:
        reactor.start_distributor("127.0.0.1", 0, secret="right")
        with caplog.at_level(logging.WARNING, logger="jobreactor.distributor"):
            nodes = [
                reactor.start_node(f"w{i}", registry=noop_registry(), secret="wrong", wait=False)
                for i in range(20)
            ]
            wait_for_error(caplog, "refused our proof", count=20, timeout=15)
        dist_side = [
            r for r in caplog.records if r.name == "jobreactor.distributor" and "secret" in r.msg
        ]
        assert 1 <= len(dist_side) <= 2, [r.getMessage() for r in dist_side]
        assert all(not n._node.links[0].is_ready for n in nodes)
    finally:
        reactor.stop(timeout=10)


def test_refused_handshakes_do_not_reset_the_backoff(caplog: pytest.LogCaptureFixture) -> None:
    reactor = make_test_reactor(reconnect_interval=0.05)
    try:
        reactor.start_distributor("127.0.0.1", 0, secret="right")
        with caplog.at_level(logging.ERROR, logger="jobreactor.node"):
            reactor.start_node("w1", registry=noop_registry(), secret="wrong", wait=False)
            wait_for_error(caplog, "refused our proof", count=5, timeout=15)
        times = [r.created for r in caplog.records if "refused our proof" in r.getMessage()][:5]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        # 0.05, 0.1, 0.2, 0.4 s: each gap about twice the one before (a reset would keep 0.05).
        assert gaps[-1] >= 0.3, gaps
    finally:
        reactor.stop(timeout=10)


def test_node_ready_to_work_is_not_logged_by_refused_nodes(
    reactor: Reactor, caplog: pytest.LogCaptureFixture
) -> None:
    reactor.start_node("w1", registry=noop_registry())
    with caplog.at_level(logging.INFO, logger="jobreactor"):
        reactor.start_node("w1", registry=noop_registry(), wait=False)
        wait_for_error(caplog, "duplicate node name")
    assert not messages(caplog, logging.INFO, "ready to work")


def _raw_hello(port: int, name: str, instance: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(
        encode(Hello(PROTOCOL_VERSION, name, [], 1, "memory", b"n" * NONCE_BYTES, [], instance))
    )
    return sock


def _received(sock: socket.socket) -> list[Any]:
    decoder = FrameDecoder()
    sock.settimeout(10)
    while chunk := sock.recv(65536):
        decoder.feed(chunk)
    return list(decoder.messages())


def test_the_same_instance_reconnecting_replaces_its_old_connection(reactor: Reactor) -> None:
    port = reactor.distributor.address_port()
    with _raw_hello(port, "w1", "instance-a") as first:
        wait_until(lambda: [n["name"] for n in reactor.nodes()] == ["w1"], timeout=10)
        with _raw_hello(port, "w1", "instance-a") as second:
            said = _received(first)  # the old connection is closed, with the reason
            assert any(isinstance(m, Bye) and "replaced" in m.reason for m in said)
            wait_until(
                lambda: (
                    reactor.nodes()[0]["address"]
                    == second.getsockname()[0] + ":" + str(second.getsockname()[1])
                ),
                timeout=10,
            )


def test_another_instance_is_refused_with_a_bye_naming_the_clash(reactor: Reactor) -> None:
    port = reactor.distributor.address_port()
    with _raw_hello(port, "w1", "instance-a") as first:
        wait_until(lambda: [n["name"] for n in reactor.nodes()] == ["w1"], timeout=10)
        assert first.recv(65536)  # its Welcome
        with _raw_hello(port, "w1", "instance-b") as second:
            said = _received(second)
            assert [type(m) for m in said] == [Bye]
            assert "duplicate node name 'w1'" in said[0].reason
        first.settimeout(0.5)
        with pytest.raises(TimeoutError):
            first.recv(1)  # the live one is untouched (no Bye, not closed)
        assert [n["name"] for n in reactor.nodes()] == ["w1"]
