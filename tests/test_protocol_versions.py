"""Peers of another protocol version get "upgrade the node / the app", not "malformed frame"
(issue 20). The version is read before the rest of a hello, so a hello of another layout
(an older or a newer one) still gets the upgrade error."""

from __future__ import annotations

import logging
import socket
import struct

import msgpack
import pytest

from jobreactor import Reactor
from jobreactor.errors import HandshakeFailed, MalformedFrame, ProtocolVersionMismatch
from jobreactor.protocol import (
    PROTOCOL_VERSION,
    Bye,
    FrameDecoder,
    Hello,
    Message,
    Welcome,
    decode_body,
)
from tests.conftest import make_test_reactor, noop_registry, wait_until

UPGRADE_NODE = "upgrade the node"
UPGRADE_APP = "upgrade the app (jobreactor on the distributor side)"
# What jobreactor with protocol version 2 (before issue 20) sent, byte for byte.
V2_HELLO = bytes.fromhex(
    "9b0102a36f6c6491a46e6f6f7004a66d656d6f7279c4100101010101010101010101010101010190a5692d6f"
    "6c64c204"
)
V2_WELCOME = bytes.fromhex("950402ab3132372e302e302e313a3190a7643a313a6f6c64")


def newer_hello(version: int) -> bytes:
    """A hello of a later version with another layout: a map where the name was, more fields,
    a byte string over the current Hello's bound. Only its tag and version can be read."""
    body = [Hello.TAG, version, {"name": "n9"}, b"x" * 500, *range(12)]
    return msgpack.packb(body, use_bin_type=True)  # type: ignore[no-any-return]


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


@pytest.mark.parametrize(
    ("body", "advice"),
    [
        (V2_HELLO, UPGRADE_NODE),  # an older node
        (newer_hello(PROTOCOL_VERSION + 1), UPGRADE_APP),  # a newer node
        (newer_hello(1), UPGRADE_NODE),
        (V2_WELCOME, UPGRADE_APP),  # an older distributor
        (msgpack.packb([Welcome.TAG, PROTOCOL_VERSION + 1, {"x": 1}]), UPGRADE_NODE),
    ],
    ids=["older node", "newer node", "v1 node", "older distributor", "newer distributor"],
)
def test_another_version_is_an_upgrade_error_not_a_malformed_frame(
    body: bytes, advice: str
) -> None:
    with pytest.raises(ProtocolVersionMismatch, match="upgrade") as info:
        decode_body(body)
    assert advice in str(info.value)
    assert not isinstance(info.value, MalformedFrame)
    assert isinstance(info.value, HandshakeFailed)


def test_the_version_is_read_before_the_rest_of_the_frame() -> None:
    old = bytearray(V2_HELLO)
    old[3:] = b"\xc1" * (len(old) - 3)  # 0xc1: a byte msgpack never uses
    with pytest.raises(ProtocolVersionMismatch, match=UPGRADE_NODE):
        decode_body(bytes(old))
    current = bytearray(old)
    current[2] = PROTOCOL_VERSION  # the same garbage at our version is malformed
    with pytest.raises(MalformedFrame):
        decode_body(bytes(current))


def _received(sock: socket.socket) -> list[Message]:
    """Every message until the peer closes."""
    decoder = FrameDecoder()
    sock.settimeout(10)
    messages: list[Message] = []
    while chunk := sock.recv(65536):
        decoder.feed(chunk)
        messages.extend(decoder.messages())
    return messages


def _logged(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    return any(text in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize(
    ("body", "advice"),
    [(V2_HELLO, UPGRADE_NODE), (newer_hello(PROTOCOL_VERSION + 1), UPGRADE_APP)],
    ids=["older node", "newer node"],
)
def test_a_distributor_tells_a_node_of_another_version_which_side_to_upgrade(
    reactor: Reactor, caplog: pytest.LogCaptureFixture, body: bytes, advice: str
) -> None:
    port = reactor.distributor.address_port()
    with (
        caplog.at_level(logging.WARNING, logger="jobreactor"),
        socket.create_connection(("127.0.0.1", port), timeout=10) as sock,
    ):
        sock.sendall(frame(body))
        said = _received(sock)
        # Its side of it: a log line with the advice.
        wait_until(lambda: _logged(caplog, advice), timeout=10, what="the distributor's log")
    assert len(said) == 1
    assert isinstance(said[0], Bye)
    assert advice in said[0].reason  # what the node logs (an older node: as a refusal)
    assert not _logged(caplog, "malformed")
    assert reactor.nodes() == []


def test_a_node_tells_a_distributor_of_another_version_which_side_to_upgrade(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A real node dials a raw peer that answers its Hello like a version-2 distributor."""
    reactor = make_test_reactor()
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(10)
        port = server.getsockname()[1]
        try:
            with caplog.at_level(logging.WARNING, logger="jobreactor"):
                reactor.start_node(
                    "n-new",
                    distributors=[("127.0.0.1", port)],
                    registry=noop_registry(),
                    wait=False,
                )
                conn, _ = server.accept()
                with conn:
                    conn.settimeout(10)
                    decoder = FrameDecoder()
                    hello: list[Message] = []
                    while not hello:
                        decoder.feed(conn.recv(65536))
                        hello.extend(decoder.messages())
                    assert isinstance(hello[0], Hello)
                    assert hello[0].version == PROTOCOL_VERSION
                    conn.sendall(frame(V2_WELCOME))
                    said = _received(conn)
                wait_until(lambda: _logged(caplog, UPGRADE_APP), timeout=10, what="node's log")
        finally:
            reactor.stop(timeout=10)
    assert [type(m) for m in said] == [Bye]
    assert isinstance(said[0], Bye)
    assert UPGRADE_APP in said[0].reason
