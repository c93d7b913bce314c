"""Frame MACs after the handshake (issue 18): round trip, and any change is refused."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobreactor.errors import RemoteProtocolError
from jobreactor.protocol import (
    DISTRIBUTOR_TO_NODE,
    NODE_TO_DISTRIBUTOR,
    Ack,
    FrameDecoder,
    FrameOpener,
    FrameSealer,
    Jobs,
    Message,
    ReportItem,
    Reports,
    encode,
    session_key,
)
from jobreactor.protocol.mac import hkdf_sha256

KEY = session_key(b"s3cret", "w1", b"n" * 16, b"d" * 16, DISTRIBUTOR_TO_NODE)


def sealed(messages: list[Message], key: bytes = KEY) -> list[bytes]:
    sealer = FrameSealer(key)
    return [sealer.seal(encode(m)) for m in messages]


def opened(stream: bytes, key: bytes = KEY) -> list[Message]:
    decoder = FrameDecoder()
    decoder.authenticate(FrameOpener(key))
    decoder.feed(stream)
    return list(decoder.messages())


MESSAGES: list[Message] = [
    Jobs([(7, {"id": "j1", "name": "echo", "args": {"a": 1}})]),
    Ack([7], 1),
    Reports(0, [ReportItem("j1", 7, "success", True, {"a": 2})]),
]


def test_hkdf_matches_rfc_5869_test_case_1() -> None:
    ikm = bytes.fromhex("0b" * 22)
    salt = bytes.fromhex("000102030405060708090a0b0c")
    info = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9")
    okm = hkdf_sha256(ikm, salt, info, 42)
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )


def test_keys_differ_by_direction_session_and_secret() -> None:
    keys = {
        session_key(b"s3cret", "w1", b"n" * 16, b"d" * 16, NODE_TO_DISTRIBUTOR),
        KEY,
        session_key(b"s3cret", "w1", b"m" * 16, b"d" * 16, DISTRIBUTOR_TO_NODE),
        session_key(b"other", "w1", b"n" * 16, b"d" * 16, DISTRIBUTOR_TO_NODE),
    }
    assert len(keys) == 4


def test_sealed_frames_round_trip() -> None:
    assert opened(b"".join(sealed(MESSAGES))) == MESSAGES


@pytest.mark.parametrize(
    "tamper",
    [
        lambda f: [f[1], f[0], f[2]],  # reordered
        lambda f: [f[0], f[2]],  # one dropped
        lambda f: [f[0], f[0], f[1]],  # one replayed
    ],
    ids=["reordered", "dropped", "replayed"],
)
def test_reordered_dropped_or_replayed_frames_are_refused(tamper: object) -> None:
    frames = sealed(MESSAGES)
    with pytest.raises(RemoteProtocolError, match="integrity"):
        opened(b"".join(tamper(frames)))  # type: ignore[operator]


def test_a_frame_from_another_session_is_refused() -> None:
    other = session_key(b"s3cret", "w1", b"x" * 16, b"d" * 16, DISTRIBUTOR_TO_NODE)
    with pytest.raises(RemoteProtocolError, match="integrity"):
        opened(b"".join(sealed(MESSAGES, other)))


def test_an_injected_unsealed_frame_is_refused() -> None:
    frames = sealed(MESSAGES[:1])
    with pytest.raises(RemoteProtocolError):
        opened(frames[0] + encode(MESSAGES[1]))


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.integers(0, 2**40), min_size=1, max_size=20),
    st.dictionaries(st.text(max_size=8), st.integers(-(2**63), 2**63 - 1), max_size=5),
    st.data(),
)
def test_any_flipped_bit_is_refused(
    leases: list[int], args: dict[str, int], data: st.DataObject
) -> None:
    messages: list[Message] = [
        Ack(leases, len(leases)),
        Reports(1, [ReportItem("j", leases[0], "success", True, args)]),
    ]
    frames = sealed(messages)
    stream = b"".join(frames)
    assert opened(stream) == messages
    bit = data.draw(st.integers(0, len(stream) * 8 - 1))
    flipped = bytearray(stream)
    flipped[bit // 8] ^= 1 << (bit % 8)
    try:
        got = opened(bytes(flipped))
    except RemoteProtocolError:
        return  # refused
    # A flipped length header can only make the decoder wait for bytes that never come: it
    # never hands out a message that was not sent.
    headers = {*range(4), *range(len(frames[0]), len(frames[0]) + 4)}
    assert bit // 8 in headers, bit
    assert len(got) < len(messages)
    assert all(message == messages[i] for i, message in enumerate(got))
