"""Anonymous peers (issue 10, defect 2): secure by default, small pre-auth frames, a cap on
unauthenticated connections, per-kind msgpack limits, rate-limited warnings."""

from __future__ import annotations

import logging
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import pytest

from jobreactor import ConfigError, InsecureBind, Reactor, Registry
from jobreactor.errors import MalformedFrame
from jobreactor.node.handshake import hello_frame
from jobreactor.protocol import (
    NONCE_BYTES,
    PRE_AUTH_MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    FrameDecoder,
    Hello,
    decode_body,
    encode,
)
from tests.conftest import make_test_reactor, noop_registry, wait_until


def closed_by_peer(sock: socket.socket, timeout: float = 10.0) -> bool:
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


# --- secure by default ---------------------------------------------------------------------------


def test_a_public_bind_without_a_secret_is_refused() -> None:
    reactor = make_test_reactor()
    try:
        with pytest.raises(InsecureBind, match="insecure = true") as info:
            reactor.start_distributor("0.0.0.0", 0)
        assert isinstance(info.value, ConfigError)
        reactor.start_distributor("0.0.0.0", 0, secret="s3cret")
        reactor.start_distributor("0.0.0.0", 0, insecure=True)
        reactor.start_distributor("localhost", 0)
        reactor.start_distributor("::1", 0)
    finally:
        reactor.stop(timeout=10)


def test_the_insecure_setting_allows_a_public_bind() -> None:
    reactor = make_test_reactor(insecure=True)
    try:
        reactor.start_distributor("0.0.0.0", 0)
        with pytest.raises(InsecureBind):
            reactor.start_distributor("0.0.0.0", 0, insecure=False)
    finally:
        reactor.stop(timeout=10)


def test_cli_distributor_refuses_a_public_bind_until_told(tmp_path: Path) -> None:
    refused = subprocess.run(
        [sys.executable, "-m", "jobreactor", "distributor", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert refused.returncode == 2, refused.stderr
    assert "without a secret" in refused.stderr
    assert "insecure" in refused.stderr
    config = tmp_path / "dist.toml"
    config.write_text('host = "0.0.0.0"\nport = 0\ninsecure = true\n')
    allowed = subprocess.Popen(
        [sys.executable, "-m", "jobreactor", "distributor", "--config", str(config)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert allowed.stderr is not None
        deadline = time.monotonic() + 20
        line = ""
        while "listens" not in line and time.monotonic() < deadline:
            line = allowed.stderr.readline()
        assert "listens" in line
    finally:
        allowed.terminate()
        allowed.wait(10)
        assert allowed.stderr is not None
        allowed.stderr.close()


# --- bounded pre-auth input -----------------------------------------------------------------


def test_an_anonymous_peer_announcing_a_big_frame_is_closed_at_the_header(
    reactor: Reactor,
) -> None:
    """Before: the distributor buffered 16 MiB - 1 from each of 150 anonymous sockets."""
    port = reactor.distributor.address_port()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(struct.pack(">I", 16 * 1024 * 1024 - 1) + b"\x00" * 1000)
        assert closed_by_peer(sock, timeout=5)


def test_an_anonymous_peer_may_send_only_handshake_kinds(reactor: Reactor) -> None:
    port = reactor.distributor.address_port()
    body = msgpack.packb([8, 1, [["j", 1, "success", True, {}, ""]]])  # Reports before Hello
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(struct.pack(">I", len(body)) + body)
        assert closed_by_peer(sock, timeout=5)


def test_a_hello_of_empty_maps_is_refused_without_unpacking_them() -> None:
    """`[1, [{} x n]]`: before, each byte became a 64-byte dict (75x) and 1.1 s of decoding."""
    count = PRE_AUTH_MAX_FRAME_BYTES - 16
    body = b"\x92\x01\xdd" + struct.pack(">I", count) + b"\x80" * count
    started = time.perf_counter()
    with pytest.raises(MalformedFrame):
        decode_body(body, frozenset({1}))
    assert time.perf_counter() - started < 1.0  # generous; the real figure is in bench/


def test_held_jobs_beyond_the_hello_go_after_authentication(reactor: Reactor) -> None:
    """The Hello must fit PRE_AUTH_MAX_FRAME_BYTES whatever the node holds."""
    node = reactor.start_node("w1", registry=noop_registry())
    link = node._node.links[0]
    held = [(f"job-{i:010d}", i) for i in range(5000)]
    frame, more_held = hello_frame(node._node.hello(link, b"n" * NONCE_BYTES), held)
    assert len(frame) <= PRE_AUTH_MAX_FRAME_BYTES
    decoder = FrameDecoder(PRE_AUTH_MAX_FRAME_BYTES)
    decoder.feed(frame)
    (hello,) = list(decoder.messages())
    assert isinstance(hello, Hello)
    assert hello.held + more_held == held


def test_unauthenticated_connections_are_capped(caplog: pytest.LogCaptureFixture) -> None:
    """Issue 18: the newest is admitted and the oldest of its source makes room (a quarter of
    the slots per source address), so a flood competes only with itself."""
    reactor = make_test_reactor(max_unauthenticated=8, handshake_timeout=5.0)
    try:
        _, port = reactor.start_distributor("127.0.0.1", 0)
        with caplog.at_level(logging.WARNING, logger="jobreactor.distributor"):
            socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(40)]
            kept = [s for s in socks if not closed_by_peer(s, timeout=0.5)]
        assert kept == socks[-2:]
        refusals = [r for r in caplog.records if "max_unauthenticated" in r.getMessage()]
        assert 1 <= len(refusals) <= 2, "rate-limited: not one line per connection"
        for sock in socks:
            sock.close()
        # The cap counts handshakes in progress only: a real node still gets in after.
        reactor.start_node("w1", registry=noop_registry())
        handle = reactor.enqueue("noop", {})
        assert handle is not None
        handle.result(timeout=10)
    finally:
        reactor.stop(timeout=10)


def test_handshake_timeout_warnings_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    """Before: one WARNING per idle connection (2,000 lines for 2,000 connections)."""
    reactor = make_test_reactor(handshake_timeout=0.2)
    try:
        _, port = reactor.start_distributor("127.0.0.1", 0)
        with caplog.at_level(logging.WARNING, logger="jobreactor"):
            socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(60)]
            for sock in socks:
                assert closed_by_peer(sock, timeout=10)
                sock.close()
        lines = [r for r in caplog.records if "handshake" in r.getMessage()]
        assert 1 <= len(lines) <= 2, len(lines)
    finally:
        reactor.stop(timeout=10)


def test_a_real_node_joins_while_garbage_peers_are_refused(reactor: Reactor) -> None:
    port = reactor.distributor.address_port()
    hello = encode(
        Hello(PROTOCOL_VERSION, "x", [], 0, "memory", b"n" * NONCE_BYTES, [], "i", False)
    )
    for junk in (b"\xff" * 64, struct.pack(">I", 10**8), hello[:-3] + b"\xc1\xc1\xc1"):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(junk)
            sock.shutdown(socket.SHUT_WR)
            assert closed_by_peer(sock)
    reactor.start_node("w1", registry=noop_registry())
    handle = reactor.enqueue("noop", {})
    assert handle is not None
    handle.result(timeout=10)
    wait_until(lambda: len(reactor.nodes()) == 1, timeout=5)


def test_a_node_whose_hello_cannot_fit_says_so_and_keeps_trying(
    reactor: Reactor, caplog: pytest.LogCaptureFixture
) -> None:
    registry = Registry()
    for i in range(700):  # ~70 KiB of job names: over what an anonymous peer may send
        registry.job(f"job_{i:03d}_" + "x" * 90)(lambda args: None)
    with caplog.at_level(logging.ERROR, logger="jobreactor.node"):
        node = reactor.start_node("w1", registry=registry, wait=False)
        wait_until(
            lambda: any("its Hello needs" in r.getMessage() for r in caplog.records),
            timeout=10,
            what="the error",
        )
    assert not node._node.links[0].is_ready
    assert all(not task.done() for task in node._node.members.tasks), "the link keeps trying"
