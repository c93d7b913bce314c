"""Fuzzing the wire (issue 10): every message kind round-trips; mutated frames never raise
anything but RemoteProtocolError and never allocate beyond a bound; a live distributor that
swallowed thousands of mutated frames still serves a real node.

Budget: Hypothesis examples are capped so the whole file runs in a few seconds."""

from __future__ import annotations

import asyncio
import random
import struct
import tracemalloc
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobreactor import Reactor, Registry, protocol
from jobreactor.distributor.session import PRE_AUTH_TAGS
from jobreactor.errors import RemoteProtocolError
from jobreactor.protocol import (
    ARGS_KINDS,
    DEFAULT_MAX_FRAME_BYTES,
    NONCE_BYTES,
    PRE_AUTH_MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    FrameDecoder,
    Hello,
    Message,
    decode_body,
    encode,
)
from tests.conftest import wait_until
from tests.test_protocol import ALL_MESSAGES, KIND_STRATEGIES, messages_strategy

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Allocation bound for decoding one frame: a small constant plus a multiple of its size. Kinds
# without job args stay far below it (no maps, an array budget); Jobs and Reports carry user
# data and only reach it after authentication.
_PER_BYTE = 100
_CONSTANT = 256 * 1024


def every_kind() -> set[type[Message]]:
    kinds = (getattr(protocol, name) for name in dir(protocol))
    return {k for k in kinds if isinstance(k, type) and issubclass(k, Message) and k is not Message}


def test_the_round_trip_strategies_cover_every_message_kind() -> None:
    assert set(KIND_STRATEGIES) == every_kind()
    assert {type(m) for m in ALL_MESSAGES} == every_kind()


def _tag(kind: type[Message]) -> int:
    return kind.TAG


KINDS: list[type[Message]] = sorted(KIND_STRATEGIES, key=_tag)


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: str(k.__name__))
def test_every_kind_round_trips(kind: type[Message]) -> None:
    @settings(max_examples=40, deadline=None)
    @given(KIND_STRATEGIES[kind])
    def round_trip(message: Message) -> None:
        assert type(message) is kind
        assert decode_body(encode(message)[4:]) == message

    round_trip()


# --- mutations ------------------------------------------------------------------------------------

# Byte values that make msgpack announce big things: array/map/str/bin 32-bit headers, ext.
_LOUD = [0xDD, 0xDF, 0xDB, 0xC6, 0xC9, 0xDC, 0xDE, 0x80, 0x90, 0xC1, 0xFF]


def mutate(frame: bytes, rng: random.Random) -> bytes:
    data = bytearray(frame)
    for _ in range(rng.randint(1, 4)):
        if not data:
            break
        choice = rng.random()
        spot = rng.randrange(len(data))
        if choice < 0.4:
            data[spot] = rng.randrange(256)
        elif choice < 0.7:
            data[spot : spot + 1] = (
                bytes([rng.choice(_LOUD)]) + b"\xff\xff\xff\xff"[: rng.randint(0, 4)]
            )
        elif choice < 0.85:
            del data[spot : spot + rng.randint(1, 8)]
        else:
            data[spot:spot] = data[: rng.randint(1, 16)]
    body = bytes(data[4:]) if len(data) > 4 else bytes(data)
    return struct.pack(">I", len(body)) + body


def decode_bounded(frame: bytes, *, pre_auth: bool) -> int:
    """Decode `frame`; return the peak bytes allocated. Only RemoteProtocolError may escape."""
    if pre_auth:
        decoder = FrameDecoder(PRE_AUTH_MAX_FRAME_BYTES, PRE_AUTH_TAGS)
    else:
        decoder = FrameDecoder(DEFAULT_MAX_FRAME_BYTES)
    tracemalloc.start()
    try:
        decoder.feed(frame)
        for message in decoder.messages():
            assert isinstance(message, Message)
    except RemoteProtocolError:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


@FUZZ
@given(
    message=messages_strategy,
    seed=st.integers(0, 2**32),
    pre_auth=st.booleans(),
)
def test_mutated_frames_raise_only_protocol_errors_within_an_allocation_bound(
    message: Message, seed: int, pre_auth: bool
) -> None:
    frame = mutate(encode(message), random.Random(seed))
    peak = decode_bounded(frame, pre_auth=pre_auth)
    assert peak <= _PER_BYTE * len(frame) + _CONSTANT, (peak, len(frame))


@FUZZ
@given(data=st.binary(min_size=1, max_size=4096), pre_auth=st.booleans())
def test_arbitrary_bytes_raise_only_protocol_errors_within_an_allocation_bound(
    data: bytes, pre_auth: bool
) -> None:
    frame = struct.pack(">I", len(data)) + data
    peak = decode_bounded(frame, pre_auth=pre_auth)
    assert peak <= _PER_BYTE * len(frame) + _CONSTANT


def _frame(tag: int, filler: bytes, count: int) -> bytes:
    body = bytes([0x92, tag, 0xDD]) + struct.pack(">I", count) + filler * count
    return struct.pack(">I", len(body)) + body


@pytest.mark.parametrize("tag", sorted({m.TAG for m in ALL_MESSAGES} - ARGS_KINDS))
@pytest.mark.parametrize("filler", [b"\x80", b"\x90", b"\xa2ab", b"\xcd\x01\x00"])
def test_kinds_without_args_cannot_amplify_their_size(tag: int, filler: bytes) -> None:
    """`[1, [{} x 16,777,000]]` took 75x its bytes; map-free kinds now stay under ~22x
    (the worst: 2-character strings, 3 bytes each on the wire, 59 bytes as Python objects)."""
    frame = _frame(tag, filler, 60_000 // len(filler))
    peak = decode_bounded(frame, pre_auth=False)
    assert peak <= 25 * len(frame), (peak, len(frame))


# --- live ----------------------------------------------------------------------------------------


def _hello(name: str) -> bytes:
    return encode(
        Hello(PROTOCOL_VERSION, name, ["noop"], 4, "memory", b"n" * NONCE_BYTES, [], name, False)
    )


async def _spray(port: int, frames: list[bytes], authenticate: bool) -> None:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return
    try:
        if authenticate:
            writer.write(_hello(f"fuzz-{id(frames)}"))
        for frame in frames:
            writer.write(frame)
        await asyncio.wait_for(writer.drain(), 10)
        writer.write_eof()
        await asyncio.wait_for(reader.read(), 10)
    except (OSError, TimeoutError):
        pass
    finally:
        writer.close()


@pytest.mark.timeout(120)
def test_a_distributor_serves_a_real_node_after_thousands_of_mutated_frames() -> None:
    reactor = Reactor(
        logger_method="ERROR",
        log_job_processing=False,
        handshake_timeout=1.0,
        max_frame_bytes=1 << 20,
    )
    reactor.run()
    try:
        _, port = reactor.start_distributor("127.0.0.1", 0)
        rng = random.Random(20261126)
        samples = [encode(m) for m in ALL_MESSAGES] + [_hello("x")]
        # The first bad frame closes a connection, so most connections carry one or two.
        batches = [[mutate(rng.choice(samples), rng) for _ in range(2)] for _ in range(1500)]

        async def attack() -> None:
            for start in range(0, len(batches), 50):
                await asyncio.gather(
                    *(
                        _spray(port, batch, authenticate=i % 2 == 0)
                        for i, batch in enumerate(batches[start : start + 50])
                    )
                )

        asyncio.run(attack())
        assert sum(len(b) for b in batches) == 3000
        wait_until(lambda: not reactor.nodes(), timeout=15, what="the fuzzing peers gone")
        # The distributor saw them: one rate-limited line, the rest counted as left out.
        assert reactor.distributor.peer_log.suppressed >= 1000
        registry = Registry()

        @registry.job("noop")
        def noop(args: dict[str, Any]) -> None:
            args["ran"] = True

        reactor.start_node("survivor", registry=registry)
        handle = reactor.enqueue("noop", {})
        assert handle is not None
        assert handle.result(timeout=15)["ran"] is True
        assert [n["name"] for n in reactor.nodes()] == ["survivor"]
    finally:
        reactor.stop(timeout=10)


def test_msgpack_itself_refuses_what_the_limits_say() -> None:
    """A guard on the library: the per-kind limits are enforced by msgpack before allocating."""
    body = bytes([0x92, 6, 0xDD]) + struct.pack(">I", 2**31) + b"\x01"
    with pytest.raises(ValueError, match="exceeds max_array_len"):
        msgpack.unpackb(body, max_array_len=len(body))
