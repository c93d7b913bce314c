"""Golden bytes: the exact msgpack body of one instance of every message (issue 20).

A change to any message's layout (a field added, moved, retyped) fails here, even when it is
made consistently on both sides: older peers would read the new layout wrong. Such a change
needs a PROTOCOL_VERSION bump (and new golden bytes); see docs/decisions.md.
"""

from __future__ import annotations

import pytest

from jobreactor.protocol import (
    MESSAGES,
    PROTOCOL_VERSION,
    Ack,
    Auth,
    Bye,
    Cancel,
    Challenge,
    Command,
    CommandResult,
    Dropped,
    HeldJobs,
    Hello,
    Jobs,
    Message,
    Nack,
    Ping,
    Pong,
    ReportItem,
    Reports,
    ReportsAck,
    Return,
    Welcome,
    decode_body,
    encode,
)

RECORD = {"id": "h:1:0a", "name": "echo", "args": {"n": 1}}
NODE_NONCE = b"\x01" * 16

SAMPLES: dict[str, Message] = {
    "Hello": Hello(
        PROTOCOL_VERSION, "n1", ["echo"], 8, "memory", NODE_NONCE, [("h:1:0a", 7)], "i1", True, 12
    ),
    "Challenge": Challenge(b"\x02" * 16, b"\x03" * 32),
    "Auth": Auth(b"\x04" * 32),
    "Welcome": Welcome(PROTOCOL_VERSION, "127.0.0.1:5000", ["h:1:0b"], "d:1:ff"),
    "Jobs": Jobs([(7, RECORD)]),
    "Ack": Ack([7, 8], 2),
    "Nack": Nack(9, "storage unavailable"),
    "Reports": Reports(3, [ReportItem("h:1:0a", 7, "success", True, {"r": 2}, "b:1")]),
    "ReportsAck": ReportsAck(3),
    "Cancel": Cancel("h:1:0a"),
    "Return": Return(["h:1:0a"]),
    "Ping": Ping(),
    "Pong": Pong(),
    "Bye": Bye("stopping"),
    "HeldJobs": HeldJobs([("h:1:0a", 7)], True, "d:1:ff"),
    "Dropped": Dropped(["h:1:0a"], True),
    "Command": Command(4, "retry", "h:1:0a"),
    "CommandResult": CommandResult(4, True, RECORD, ""),
}

# Protocol version 3. Hex of the frame body (the 4-byte length header is not included).
GOLDEN: dict[str, str] = {
    "Hello": "9b0103a26e3191a46563686f08a66d656d6f7279c4100101010101010101010101010101010191"
    "92a6683a313a306107a26931c30c",
    "Challenge": "9302c41002020202020202020202020202020202c4200303030303030303030303030303"
    "030303030303030303030303030303030303",
    "Auth": "9203c4200404040404040404040404040404040404040404040404040404040404040404",
    "Welcome": "950403ae3132372e302e302e313a3530303091a6683a313a3062a6643a313a6666",
    "Jobs": "920591920783a26964a6683a313a3061a46e616d65a46563686fa46172677381a16e01",
    "Ack": "930692070802",
    "Nack": "930709b373746f7261676520756e617661696c61626c65",
    "Reports": "9308039196a6683a313a306107a773756363657373c381a17202a3623a31",
    "ReportsAck": "920903",
    "Cancel": "920aa6683a313a3061",
    "Return": "920b91a6683a313a3061",
    "Ping": "910c",
    "Pong": "910d",
    "Bye": "920ea873746f7070696e67",
    "HeldJobs": "940f9192a6683a313a306107c3a6643a313a6666",
    "Dropped": "931091a6683a313a3061c3",
    "Command": "941404a57265747279a6683a313a3061",
    "CommandResult": "951504c383a26964a6683a313a3061a46e616d65a46563686fa46172677381a16e01a0",
}


def test_every_message_kind_has_golden_bytes() -> None:
    kinds = {cls.__name__ for cls in MESSAGES}
    assert set(SAMPLES) == kinds
    assert set(GOLDEN) == kinds
    assert {type(message).__name__ for message in SAMPLES.values()} == kinds


@pytest.mark.parametrize("kind", sorted(GOLDEN))
def test_encoding_gives_the_golden_bytes(kind: str) -> None:
    frame = encode(SAMPLES[kind])
    assert frame[4:].hex() == GOLDEN[kind]
    assert int.from_bytes(frame[:4], "big") == len(GOLDEN[kind]) // 2


@pytest.mark.parametrize("kind", sorted(GOLDEN))
def test_the_golden_bytes_decode_to_the_sample(kind: str) -> None:
    assert decode_body(bytes.fromhex(GOLDEN[kind])) == SAMPLES[kind]


def test_both_hellos_start_with_tag_then_version() -> None:
    """The one layout rule no version may break: the version is read before the rest."""
    for kind in ("Hello", "Welcome"):
        body = bytes.fromhex(GOLDEN[kind])
        assert body[1] == SAMPLES[kind].TAG
        assert body[2] == PROTOCOL_VERSION
