"""The distributor over real sockets: handshake, auth, bad frames, a silent client, input errors."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import struct
from collections.abc import AsyncIterator

import pytest

from jobreactor import InvalidOptions, Reactor, Registry
from jobreactor.config import ReactorConfig
from jobreactor.distributor import Distributor
from jobreactor.protocol import (
    DISTRIBUTOR_TO_NODE,
    PROTOCOL_VERSION,
    Auth,
    Challenge,
    FrameDecoder,
    FrameOpener,
    Hello,
    Message,
    Welcome,
    encode,
    handshake_proof,
    session_key,
)
from tests.conftest import wait_until

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def server() -> AsyncIterator[tuple[Distributor, int]]:
    distributor = Distributor(ReactorConfig(handshake_timeout=0.3, logger_method="WARNING"))
    _, port = await distributor.start("127.0.0.1", 0)
    yield distributor, port
    await distributor.stop(timeout=1)


@pytest.fixture
async def secret_server() -> AsyncIterator[tuple[Distributor, int]]:
    distributor = Distributor(ReactorConfig(handshake_timeout=0.5), secret="s3cret")
    _, port = await distributor.start("127.0.0.1", 0)
    yield distributor, port
    await distributor.stop(timeout=1)


@pytest.fixture
async def connect() -> AsyncIterator[object]:
    writers: list[asyncio.StreamWriter] = []

    async def open_(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writers.append(writer)
        return reader, writer

    yield open_
    for writer in writers:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def hello(name: str = "w1", nonce: bytes | None = None) -> Hello:
    return Hello(
        PROTOCOL_VERSION, name, ["simple"], 10, "memory", nonce or secrets.token_bytes(16), []
    )


async def read_message(reader: asyncio.StreamReader, opener: FrameOpener | None = None) -> Message:
    decoder = FrameDecoder()
    if opener is not None:
        decoder.authenticate(opener)
    async with asyncio.timeout(5):
        while True:
            data = await reader.read(65536)
            assert data, "connection closed"
            decoder.feed(data)
            for message in decoder.messages():
                return message


async def closed_by_peer(reader: asyncio.StreamReader) -> bool:
    async with asyncio.timeout(5):
        while await reader.read(65536):
            pass
    return True


async def test_garbage_closes_that_connection_and_others_keep_working(server, connect) -> None:
    distributor, port = server
    bad_reader, bad_writer = await connect(port)
    bad_writer.write(struct.pack(">I", 5) + b"\xc1\xc1\xc1\xc1\xc1")  # 0xc1 is never valid
    assert await closed_by_peer(bad_reader)
    reader, writer = await connect(port)
    writer.write(encode(hello()))
    assert isinstance(await read_message(reader), Welcome)
    await distributor.wait_for_node("w1", timeout=5)


async def test_oversized_frame_is_refused_from_its_header(server, connect) -> None:
    _, port = server
    reader, writer = await connect(port)
    writer.write(b"\xff\xff\xff\xff")  # announces a 4 GiB frame
    assert await closed_by_peer(reader)


async def test_silent_client_is_closed_after_the_handshake_deadline(server, connect) -> None:
    _, port = server
    reader, _writer = await connect(port)
    assert await closed_by_peer(reader)


async def test_a_job_message_before_hello_is_a_violation(server, connect) -> None:
    _, port = server
    reader, writer = await connect(port)
    writer.write(encode(Auth(b"x" * 32)))
    assert await closed_by_peer(reader)


async def test_wrong_protocol_version_is_refused(server, connect) -> None:
    _, port = server
    reader, writer = await connect(port)
    writer.write(encode(Hello(99, "w1", [], 1, "memory", b"n" * 16, [])))
    assert await closed_by_peer(reader)


async def test_secret_admits_only_nodes_that_prove_it(secret_server, connect) -> None:
    distributor, port = secret_server
    # wrong secret: refused
    reader, writer = await connect(port)
    nonce = secrets.token_bytes(16)
    writer.write(encode(hello("bad", nonce)))
    challenge = await read_message(reader)
    assert isinstance(challenge, Challenge)
    writer.write(encode(Auth(handshake_proof(b"wrong", "node", "bad", nonce, challenge.nonce))))
    assert await closed_by_peer(reader)
    # right secret: admitted, and the distributor proved it knows the secret too
    reader, writer = await connect(port)
    nonce = secrets.token_bytes(16)
    writer.write(encode(hello("good", nonce)))
    challenge = await read_message(reader)
    assert isinstance(challenge, Challenge)
    assert challenge.proof == handshake_proof(
        b"s3cret", "distributor", "good", nonce, challenge.nonce
    )
    writer.write(encode(Auth(handshake_proof(b"s3cret", "node", "good", nonce, challenge.nonce))))
    # From the frame after its Challenge on, the distributor's frames carry MACs (issue 18).
    key = session_key(b"s3cret", "good", nonce, challenge.nonce, DISTRIBUTOR_TO_NODE)
    assert isinstance(await read_message(reader, FrameOpener(key)), Welcome)
    await distributor.wait_for_node("good", timeout=5)
    assert [n["name"] for n in distributor.nodes()] == ["good"]


def test_nodes_with_and_without_the_secret(
    reactor: Reactor, caplog: pytest.LogCaptureFixture
) -> None:
    host, port = reactor.start_distributor("127.0.0.1", 0, secret="shh")
    registry = Registry()
    registry.job("simple")(lambda args: None)
    reactor.start_node("good", "memory", [(host, port)], registry=registry, secret="shh")
    bad = reactor.start_node("nosecret", "memory", [(host, port)], registry=registry, wait=False)
    wait_for_secret_refusal(caplog)  # an event, not start_node's whole link timeout
    assert not any(link.is_ready for link in bad._node.links)
    names = {n["name"] for n in reactor.call(lambda: _nodes(reactor, 1))}
    assert names == {"good"}


def wait_for_secret_refusal(caplog: pytest.LogCaptureFixture) -> None:
    def refused() -> bool:
        return any(
            r.name.startswith("jobreactor.")
            and r.levelno >= logging.WARNING
            and "secret" in r.getMessage()
            for r in caplog.records
        )

    wait_until(refused, timeout=20, what="a log line saying the secrets differ")


async def _nodes(reactor: Reactor, index: int) -> list[dict[str, object]]:
    return reactor.members.distributors[index].nodes()


def test_a_node_with_a_secret_refuses_an_open_distributor(
    reactor: Reactor, caplog: pytest.LogCaptureFixture
) -> None:
    registry = Registry()
    registry.job("simple")(lambda args: None)
    node = reactor.start_node(
        "careful", "memory", None, registry=registry, secret="shh", wait=False
    )
    wait_for_secret_refusal(caplog)
    assert not any(link.is_ready for link in node._node.links)


def test_bad_input_raises_before_anything_is_sent(reactor: Reactor) -> None:
    with pytest.raises(TypeError):
        reactor.enqueue("simple", {"x": object()})
    with pytest.raises(TypeError):
        reactor.enqueue("simple", [1, 2])  # type: ignore[arg-type]
    with pytest.raises(InvalidOptions):
        reactor.enqueue("simple", {}, {"aftr": 1})
    with pytest.raises(ValueError, match="negative"):
        reactor.enqueue("simple", {}, {"after": -1})
    with pytest.raises(ValueError, match="max_frame_bytes"):
        reactor.enqueue("simple", {"blob": b"x" * (17 * 1024 * 1024)})
    assert reactor.distributor.pending_count == 0


def test_args_are_copied_at_enqueue(reactor: Reactor) -> None:
    registry = Registry()
    registry.job("simple")(lambda args: None)
    args = {"items": [1]}
    h = reactor.enqueue("simple", args)
    args["items"].append(2)
    reactor.start_node("w1", "memory", None, registry=registry)
    assert h.result(10) == {"items": [1]}  # type: ignore[union-attr]
