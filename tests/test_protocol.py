"""The wire protocol, byte by byte, without an event loop (STYLE practice 21)."""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobreactor.errors import (
    FrameTooLarge,
    LocalProtocolError,
    MalformedFrame,
    ProtocolError,
    RemoteProtocolError,
)
from jobreactor.protocol import (
    DEFAULT_MAX_FRAME_BYTES,
    NONCE_BYTES,
    PROTOCOL_VERSION,
    Ack,
    Auth,
    Bye,
    Cancel,
    Challenge,
    Command,
    CommandResult,
    Dropped,
    FrameDecoder,
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
    handshake_proof,
    pack_args,
    proof_matches,
)

RECORD = {
    "id": "j1",
    "name": "echo",
    "args": {"a": 1, "nested": {"list": [1, 2.5, None, True, False, b"\x00raw", "é"]}},
    "attempt": 0,
    "run_at_ts": 1_700_000_000.25,
    "period": 5.0,
}

# One of every message type, with non-trivial field values.
ALL_MESSAGES: list[Message] = [
    Hello(PROTOCOL_VERSION, "w1", ["echo", "add"], 8, "memory", b"\x01" * NONCE_BYTES, []),
    Hello(PROTOCOL_VERSION, "w-2", [], 0, "redis", b"\x00" * NONCE_BYTES, [("j1", 3), ("j2", 9)]),
    Challenge(b"\x02" * NONCE_BYTES, b"\x03" * 32),
    Auth(b"\x04" * 32),
    Welcome(PROTOCOL_VERSION, "127.0.0.1:5000", []),
    Welcome(PROTOCOL_VERSION, "dist:5000", ["j7", "j8"]),
    Jobs([]),
    Jobs([(1, RECORD), (2, {"id": "j2", "name": "add", "args": {}})]),
    Ack([], 0),
    Ack([1, 2, 3], 4),
    Nack(5, "storage unavailable"),
    Reports(0, []),
    Reports(
        10,
        [
            ReportItem("j1", 1, "success", True, {"result": "ok"}),
            ReportItem("j2", 2, "error", False, {"error": {"class": "E", "message": "m"}}),
            ReportItem("j3", 3, "cancelled", True, {}),
        ],
    ),
    ReportsAck(11),
    Cancel("j1"),
    Return([]),
    Return(["j1", "j2"]),
    Ping(),
    Pong(),
    Bye("shutting down"),
    HeldJobs([("j3", 4), ("j4", 5)], False),
    HeldJobs([], True),
    Dropped(["j3"], False),
    Dropped([], True),
    Command(1, "release_lock", "lock:nightly"),
    Command(2, "retry", "j9"),
    CommandResult(1, True, {}, ""),
    CommandResult(2, True, RECORD, ""),
    CommandResult(3, False, {}, "storage unavailable"),
]


def body_of(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def frame_of(obj: Any) -> bytes:
    body = body_of(obj)
    return len(body).to_bytes(4, "big") + body


def wire_fields(message: Message) -> list[Any]:
    """The message as the array that goes on the wire: [tag, *fields]."""
    return [message.TAG, *message.fields()]


def decode_all(wire: bytes, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> list[Message]:
    decoder = FrameDecoder(max_frame_bytes)
    decoder.feed(wire)
    return list(decoder.messages())


# --- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("message", ALL_MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_type_round_trips(message: Message) -> None:
    assert decode_all(encode(message)) == [message]


def message_classes() -> dict[str, int]:
    """Name -> tag of every message class (slots dataclasses leave a twin subclass behind)."""
    return {cls.__name__: cls.TAG for cls in Message.__subclasses__()}


def test_the_samples_cover_every_message_type() -> None:
    assert {type(m).__name__ for m in ALL_MESSAGES} == set(message_classes())


def test_tags_are_unique() -> None:
    tags = list(message_classes().values())
    assert len(tags) == len(set(tags))


@pytest.mark.parametrize("message", ALL_MESSAGES, ids=lambda m: type(m).__name__)
def test_decode_body_matches_frame_decoder(message: Message) -> None:
    frame = encode(message)
    assert int.from_bytes(frame[:4], "big") == len(frame) - 4
    assert decode_body(frame[4:]) == message


def test_frames_split_at_every_byte_decode_identically() -> None:
    wire = b"".join(encode(m) for m in ALL_MESSAGES)
    decoder = FrameDecoder()
    received: list[Message] = []
    for i in range(len(wire)):  # worst case: one byte per read
        decoder.feed(wire[i : i + 1])
        received.extend(decoder.messages())
    assert received == ALL_MESSAGES
    assert decoder.buffered_bytes == 0


@pytest.mark.parametrize("message", ALL_MESSAGES, ids=lambda m: type(m).__name__)
def test_a_frame_split_at_any_point_decodes_identically(message: Message) -> None:
    wire = encode(message)
    for cut in range(len(wire) + 1):
        decoder = FrameDecoder()
        decoder.feed(wire[:cut])
        first = list(decoder.messages())
        decoder.feed(wire[cut:])
        assert first + list(decoder.messages()) == [message], cut


def test_partial_frame_stays_buffered_until_complete() -> None:
    wire = encode(Bye("bye"))
    decoder = FrameDecoder()
    decoder.feed(wire[:3])  # not even a whole header
    assert list(decoder.messages()) == []
    assert decoder.buffered_bytes == 3
    decoder.feed(wire[3:-1])  # header but not the whole body
    assert list(decoder.messages()) == []
    assert decoder.buffered_bytes == len(wire) - 1
    decoder.feed(wire[-1:])
    assert list(decoder.messages()) == [Bye("bye")]
    assert decoder.buffered_bytes == 0


def test_many_frames_in_one_read_come_out_in_order_and_keep_the_remainder() -> None:
    messages = [Cancel(f"j{i}") for i in range(50)]
    tail = encode(Ping())[:2]
    decoder = FrameDecoder()
    decoder.feed(b"".join(encode(m) for m in messages) + tail)
    assert list(decoder.messages()) == messages
    assert decoder.buffered_bytes == len(tail)


def test_decoder_keeps_working_across_many_feeds() -> None:
    decoder = FrameDecoder()
    for i in range(100):
        decoder.feed(encode(ReportsAck(i)))
        assert list(decoder.messages()) == [ReportsAck(i)]
    assert decoder.buffered_bytes == 0


def test_report_items_and_job_entries_decode_to_their_types() -> None:
    [jobs] = decode_all(encode(Jobs([(7, RECORD)])))
    assert isinstance(jobs, Jobs)
    assert jobs.jobs == [(7, RECORD)]
    assert isinstance(jobs.jobs[0], tuple)
    [reports] = decode_all(encode(Reports(1, [ReportItem("j", 1, "success", True, {})])))
    assert isinstance(reports, Reports)
    assert isinstance(reports.items[0], ReportItem)
    [hello] = decode_all(encode(ALL_MESSAGES[1]))
    assert isinstance(hello, Hello)
    assert hello.held == [("j1", 3), ("j2", 9)]


def test_bytes_and_text_stay_distinct_on_the_wire() -> None:
    record = {"id": "j", "name": "n", "args": {"b": b"abc", "s": "abc"}}
    [jobs] = decode_all(encode(Jobs([(1, record)])))
    assert isinstance(jobs, Jobs)
    args = jobs.jobs[0][1]["args"]
    assert args == {"b": b"abc", "s": "abc"}
    assert type(args["b"]) is bytes
    assert type(args["s"]) is str


def test_encode_refuses_what_msgpack_cannot_carry() -> None:
    with pytest.raises(LocalProtocolError):
        encode(Bye(object()))  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        encode(Jobs([(1, {"id": "j", "name": "n", "args": {"s": {1, 2}}})]))


# --- frame size limits -----------------------------------------------------------------------


def test_oversized_frame_is_rejected_from_the_header_alone() -> None:
    decoder = FrameDecoder(max_frame_bytes=10)
    decoder.feed((11).to_bytes(4, "big"))  # header only; the body never arrives
    with pytest.raises(FrameTooLarge) as info:
        list(decoder.messages())
    assert info.value.size == 11
    assert info.value.limit == 10
    assert isinstance(info.value, RemoteProtocolError)


def test_a_four_gib_header_is_rejected_without_waiting_for_the_body() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"\xff\xff\xff\xff")
    with pytest.raises(FrameTooLarge) as info:
        list(decoder.messages())
    assert info.value.size == 2**32 - 1
    assert info.value.limit == DEFAULT_MAX_FRAME_BYTES


def test_default_limit_is_16_mib() -> None:
    assert DEFAULT_MAX_FRAME_BYTES == 16 * 1024 * 1024
    decoder = FrameDecoder()
    decoder.feed((DEFAULT_MAX_FRAME_BYTES + 1).to_bytes(4, "big"))
    with pytest.raises(FrameTooLarge):
        list(decoder.messages())
    ok = FrameDecoder()
    ok.feed(DEFAULT_MAX_FRAME_BYTES.to_bytes(4, "big"))
    assert list(ok.messages()) == []  # at the limit: wait for the body


def test_frame_exactly_at_the_limit_is_accepted() -> None:
    frame = encode(Bye("x" * 100))
    size = len(frame) - 4
    assert decode_all(frame, max_frame_bytes=size) == [Bye("x" * 100)]
    with pytest.raises(FrameTooLarge):
        decode_all(frame, max_frame_bytes=size - 1)


def test_messages_before_an_oversized_frame_are_still_delivered() -> None:
    decoder = FrameDecoder(max_frame_bytes=64)
    decoder.feed(encode(Ping()) + encode(Pong()) + (65).to_bytes(4, "big"))
    stream = decoder.messages()
    assert next(stream) == Ping()
    assert next(stream) == Pong()
    with pytest.raises(FrameTooLarge):
        next(stream)


# --- malformed bodies --------------------------------------------------------------------------

NOT_AN_ARRAY = [
    {"tag": 12},
    12,
    "ping",
    b"\x0c",
    None,
    True,
    1.5,
    [],  # an array, but without a tag
    ["12"],  # tag is not an int
    [None],
    [1.0],
    [[12]],
]


@pytest.mark.parametrize("obj", NOT_AN_ARRAY, ids=repr)
def test_body_that_is_not_a_tagged_array_is_malformed(obj: Any) -> None:
    with pytest.raises(MalformedFrame):
        decode_body(body_of(obj))


@pytest.mark.parametrize("tag", [0, 22, 99, -1, 2**40])
def test_unknown_tag_is_malformed(tag: int) -> None:
    with pytest.raises(MalformedFrame, match="unknown message tag"):
        decode_body(body_of([tag]))


def test_boolean_tag_is_malformed() -> None:
    # True == 1 in Python; a bool is still not a message tag (the fields reject bools too).
    hello = wire_fields(ALL_MESSAGES[0])
    with pytest.raises(MalformedFrame):
        decode_body(body_of([True, *hello[1:]]))
    with pytest.raises(MalformedFrame):
        decode_body(body_of([False]))


@pytest.mark.parametrize("message", ALL_MESSAGES, ids=lambda m: type(m).__name__)
def test_one_field_too_many_is_malformed(message: Message) -> None:
    with pytest.raises(MalformedFrame):
        decode_body(body_of([*wire_fields(message), "extra"]))


@pytest.mark.parametrize(
    "message",
    [m for m in ALL_MESSAGES if m.fields()],
    ids=lambda m: type(m).__name__,
)
def test_one_field_too_few_is_malformed(message: Message) -> None:
    with pytest.raises(MalformedFrame):
        decode_body(body_of(wire_fields(message)[:-1]))


def _field_cases() -> list[tuple[Message, int]]:
    return [(m, i) for m in ALL_MESSAGES for i in range(len(m.fields()))]


def _wrong_value_for(value: Any) -> list[Any]:
    """Values of other types than `value` (no field of any message is optional)."""
    candidates: list[Any] = [None, "text", 7, 1.5, b"bytes", [], {}, True]
    if isinstance(value, bool):
        return [c for c in candidates if not isinstance(c, bool)]
    if isinstance(value, int):
        return [c for c in candidates if not isinstance(c, int) or isinstance(c, bool)]
    if isinstance(value, str):
        return [c for c in candidates if not isinstance(c, str)]
    if isinstance(value, bytes):
        return [c for c in candidates if not isinstance(c, bytes)]
    if isinstance(value, list):
        return [c for c in candidates if not isinstance(c, list)]
    if isinstance(value, dict):
        return [c for c in candidates if not isinstance(c, dict)]
    raise AssertionError(f"no wrong values for {value!r}")


@pytest.mark.parametrize(
    ("message", "index"),
    _field_cases(),
    ids=lambda v: type(v).__name__ if not isinstance(v, int) else str(v),
)
def test_every_field_of_the_wrong_type_is_malformed(message: Message, index: int) -> None:
    for wrong in _wrong_value_for(message.fields()[index]):
        fields = wire_fields(message)
        fields[index + 1] = wrong
        with pytest.raises(MalformedFrame):
            decode_body(body_of(fields))


HELLO = ALL_MESSAGES[0]
NONCE = b"\x01" * NONCE_BYTES
GOOD_JOB = {"id": "j", "name": "n", "args": {}}
GOOD_REPORT = ["j", 1, "success", True, {}, ""]

NESTED_WRONG_TYPES = {
    "job names with an int": [1, PROTOCOL_VERSION, "w", ["a", 2], 1, "memory", NONCE, []],
    "held entry not a pair": [1, PROTOCOL_VERSION, "w", [], 1, "memory", NONCE, [["j1"]]],
    "held entry of three": [1, PROTOCOL_VERSION, "w", [], 1, "memory", NONCE, [["j1", 1, 2]]],
    "held entry a string": [1, PROTOCOL_VERSION, "w", [], 1, "memory", NONCE, ["j1"]],
    "held lease a string": [1, PROTOCOL_VERSION, "w", [], 1, "memory", NONCE, [["j1", "1"]]],
    "held lease a bool": [1, PROTOCOL_VERSION, "w", [], 1, "memory", NONCE, [["j1", True]]],
    "held job id an int": [1, PROTOCOL_VERSION, "w", [], 1, "memory", NONCE, [[1, 1]]],
    "version a bool": [1, True, "w", [], 1, "memory", NONCE, []],
    "credits a float": [1, PROTOCOL_VERSION, "w", [], 1.0, "memory", NONCE, []],
    "nonce as text": [1, PROTOCOL_VERSION, "w", [], 1, "memory", "nonce", []],
    "welcome drop with an int": [4, PROTOCOL_VERSION, "d:1", [1]],
    "command op unknown": [20, 1, "flushall", "x"],
    "command result job without id": [21, 1, True, {"name": "n", "args": {}}, ""],
    "job entry not a pair": [5, [[1]]],
    "job entry a dict": [5, [GOOD_JOB]],
    "job lease a string": [5, [["1", GOOD_JOB]]],
    "job lease a bool": [5, [[True, GOOD_JOB]]],
    "job record a list": [5, [[1, ["j", "n", {}]]]],
    "job record without id": [5, [[1, {"name": "n", "args": {}}]]],
    "job record int id": [5, [[1, {"id": 1, "name": "n", "args": {}}]]],
    "job record without name": [5, [[1, {"id": "j", "args": {}}]]],
    "job record bytes name": [5, [[1, {"id": "j", "name": b"n", "args": {}}]]],
    "job record without args": [5, [[1, {"id": "j", "name": "n"}]]],
    "job record list args": [5, [[1, {"id": "j", "name": "n", "args": []}]]],
    "jobs not a list": [5, {"1": GOOD_JOB}],
    "ack leases with a str": [6, [1, "2"], 1],
    "ack leases with a bool": [6, [1, True], 1],
    "ack leases with a float": [6, [1.0], 1],
    "ack credits a bool": [6, [], False],
    "report of five": [8, 0, [GOOD_REPORT[:5]]],
    "report of seven": [8, 0, [[*GOOD_REPORT, None]]],
    "report completes_batch an int": [8, 0, [["j", 1, "success", True, {}, 1]]],
    "report a dict": [8, 0, [{"job_id": "j"}]],
    "report unknown outcome": [8, 0, [["j", 1, "done", True, {}, ""]]],
    "report outcome an int": [8, 0, [["j", 1, 1, True, {}, ""]]],
    "report outcome a list": [8, 0, [["j", 1, ["success"], True, {}, ""]]],
    "report outcome a map": [8, 0, [["j", 1, {"success": 1}, True, {}, ""]]],
    "report job id an int": [8, 0, [[1, 1, "success", True, {}, ""]]],
    "report lease a bool": [8, 0, [["j", True, "success", True, {}, ""]]],
    "report final an int": [8, 0, [["j", 1, "success", 1, {}, ""]]],
    "report args a list": [8, 0, [["j", 1, "success", True, [], ""]]],
    "reports not a list": [8, 0, {"j": GOOD_REPORT}],
    "return ids with an int": [11, ["j1", 2]],
}


@pytest.mark.parametrize("obj", NESTED_WRONG_TYPES.values(), ids=NESTED_WRONG_TYPES.keys())
def test_nested_wrong_types_are_malformed(obj: list[Any]) -> None:
    with pytest.raises(MalformedFrame):
        decode_body(body_of(obj))


def test_malformed_body_inside_a_frame_raises_from_the_decoder() -> None:
    decoder = FrameDecoder()
    decoder.feed(encode(Ping()) + frame_of([5, [[1, {"id": "j"}]]]))
    stream = decoder.messages()
    assert next(stream) == Ping()
    with pytest.raises(MalformedFrame):
        next(stream)


def test_zero_length_frame_is_malformed() -> None:
    with pytest.raises(MalformedFrame):
        decode_all(b"\x00\x00\x00\x00")


def raw_ext(code: int, data: bytes) -> bytes:
    """An ext8 value by hand: msgpack.ExtType refuses the reserved negative codes."""
    return b"\xc7" + bytes([len(data)]) + code.to_bytes(1, "big", signed=True) + data


@pytest.mark.parametrize("code", [0, 1, 5, 127, -2, -128])
def test_ext_types_are_malformed(code: int) -> None:
    ext = raw_ext(code, b"payload")
    with pytest.raises(MalformedFrame, match="ext"):
        decode_body(b"\x92" + body_of(Bye.TAG) + ext)  # [14, <ext>]
    # {"id": "j", "name": "n", "args": {"x": <ext>}} as the record of [5, [[1, record]]]
    record = body_of("id") + body_of("j") + body_of("name") + body_of("n") + body_of("args")
    record = b"\x83" + record + b"\x81" + body_of("x") + ext
    with pytest.raises(MalformedFrame):
        decode_body(b"\x92" + body_of(Jobs.TAG) + b"\x91\x92\x01" + record)


def test_timestamp_ext_type_becomes_plain_float_seconds() -> None:
    # msgpack decodes ext type -1 itself (it never reaches ext_hook). Rather than scan every
    # body for it, the decoder turns it into float seconds: plain data, JSON-safe, no object.
    stamp = msgpack.Timestamp.from_datetime(dt.datetime(2024, 1, 1, tzinfo=dt.UTC))
    with pytest.raises(MalformedFrame):
        decode_body(body_of([Bye.TAG, stamp]))  # a float is still not a reason string
    record = {"id": "j", "name": "n", "args": {"when": stamp}}
    message = decode_body(body_of([Jobs.TAG, [[1, record]]]))
    assert isinstance(message, Jobs)
    assert message.jobs[0][1]["args"]["when"] == 1704067200.0
    item = ["j", 1, "success", True, {"when": stamp}, ""]
    decoded = decode_body(body_of([Reports.TAG, 0, [item]]))
    assert isinstance(decoded, Reports)
    assert decoded.items[0].args == {"when": 1704067200.0}


GARBAGE = {
    "reserved byte 0xc1": b"\xc1",
    "two reserved bytes": b"\xc1\xc1",
    "all ones": b"\xff\xff\xff\xff",
    "array then reserved": b"\x91\xc1",
    "valid array plus trailing data": body_of([Ping.TAG]) + b"\x00",
    "invalid utf-8 in a str": b"\x92\x0e\xa2\xff\xfe",
    "map with an array key": b"\x92\x0e\x81\x91\x01\x01",
    "deep nesting": b"\x91" * 10_000 + b"\xc0",
    "huge declared array": b"\xdd\xff\xff\xff\xff",
    "huge declared str": b"\xdb\xff\xff\xff\xff",
    "huge declared map": b"\xdf\xff\xff\xff\xff",
    "empty body": b"",
    "text": b"hello world",
}


@pytest.mark.parametrize("body", GARBAGE.values(), ids=GARBAGE.keys())
def test_garbage_bytes_are_malformed(body: bytes) -> None:
    with pytest.raises(MalformedFrame):
        decode_body(body)
    with pytest.raises(MalformedFrame):
        decode_all(len(body).to_bytes(4, "big") + body)


@pytest.mark.parametrize("message", ALL_MESSAGES, ids=lambda m: type(m).__name__)
def test_truncated_msgpack_is_malformed(message: Message) -> None:
    body = encode(message)[4:]
    for cut in range(len(body)):
        with pytest.raises(MalformedFrame):
            decode_body(body[:cut])
        # The same truncated body framed with its (short) true length.
        with pytest.raises(MalformedFrame):
            decode_all(cut.to_bytes(4, "big") + body[:cut])


def test_protocol_errors_share_one_hierarchy() -> None:
    assert issubclass(MalformedFrame, RemoteProtocolError)
    assert issubclass(FrameTooLarge, RemoteProtocolError)
    assert issubclass(RemoteProtocolError, ProtocolError)
    assert issubclass(LocalProtocolError, ProtocolError)
    assert not issubclass(LocalProtocolError, RemoteProtocolError)


# --- fuzzing ------------------------------------------------------------------------------------

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(
    data=st.binary(max_size=2048),
    chunk=st.integers(min_value=1, max_value=64),
    max_frame_bytes=st.integers(min_value=0, max_value=4096),
)
def test_random_byte_streams_only_raise_remote_protocol_errors(
    data: bytes, chunk: int, max_frame_bytes: int
) -> None:
    decoder = FrameDecoder(max_frame_bytes)
    try:
        for i in range(0, len(data), chunk):
            decoder.feed(data[i : i + chunk])
            for message in decoder.messages():
                assert isinstance(message, Message)
    except RemoteProtocolError:
        return
    # Nothing raised: whatever is left is less than one whole frame.
    left = decoder.buffered_bytes
    assert left <= len(data)
    if left >= 4:
        rest = data[len(data) - left :]
        assert int.from_bytes(rest[:4], "big") > left - 4


@FUZZ
@given(body=st.binary(max_size=512))
def test_random_bodies_only_raise_malformed_frame(body: bytes) -> None:
    try:
        message = decode_body(body)
    except MalformedFrame:
        return
    assert isinstance(message, Message)


@FUZZ
@given(
    messages=st.lists(st.sampled_from(ALL_MESSAGES), min_size=1, max_size=8),
    data=st.data(),
)
def test_random_truncations_yield_a_prefix_and_never_raise(
    messages: list[Message], data: st.DataObject
) -> None:
    frames = [encode(m) for m in messages]
    wire = b"".join(frames)
    cut = data.draw(st.integers(min_value=0, max_value=len(wire)))
    decoder = FrameDecoder()
    decoder.feed(wire[:cut])
    received = list(decoder.messages())
    complete = 0
    consumed = 0
    for frame in frames:
        if consumed + len(frame) > cut:
            break
        consumed += len(frame)
        complete += 1
    assert received == messages[:complete]
    assert decoder.buffered_bytes == cut - consumed


@FUZZ
@given(
    message=st.sampled_from(ALL_MESSAGES),
    data=st.data(),
)
def test_corrupted_frames_only_raise_remote_protocol_errors(
    message: Message, data: st.DataObject
) -> None:
    wire = bytearray(encode(message))
    positions = data.draw(
        st.lists(st.integers(min_value=0, max_value=len(wire) - 1), min_size=1, max_size=4)
    )
    for position in positions:
        wire[position] = data.draw(st.integers(min_value=0, max_value=255))
    decoder = FrameDecoder(max_frame_bytes=4096)
    decoder.feed(bytes(wire))
    try:
        for decoded in decoder.messages():
            assert isinstance(decoded, Message)
    except RemoteProtocolError:
        pass


# Arbitrary msgpack-able values, to build structurally plausible but wrong messages.
plain = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.binary(max_size=8)
    | st.sampled_from(["success", "error", "cancelled"]),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.text(max_size=4) | st.integers(-(2**63), 2**63 - 1), children, max_size=4
        )
    ),
    max_leaves=16,
)


@FUZZ
@given(
    tag=st.integers(min_value=0, max_value=15),
    fields=st.lists(plain, max_size=8),
)
def test_tagged_arrays_of_random_fields_only_raise_malformed_frame(
    tag: int, fields: list[Any]
) -> None:
    try:
        message = decode_body(body_of([tag, *fields]))
    except MalformedFrame:
        return
    assert tag == message.TAG
    # Whatever decoded is well-typed enough to be sent again unchanged.
    assert decode_body(encode(message)[4:]) == message


names = st.text(min_size=1, max_size=12)
leases = st.integers(min_value=0, max_value=2**63 - 1)
json_like = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(names, children, max_size=3),
    max_leaves=10,
)
arg_dicts = st.dictionaries(names, json_like, max_size=4)
records = st.fixed_dictionaries({"id": names, "name": names, "args": arg_dicts})
report_items = st.builds(
    ReportItem, names, leases, st.sampled_from(["success", "error", "cancelled"]),
    st.booleans(), arg_dicts, st.just("") | names,
)  # fmt: skip
# One strategy per message kind (test_protocol_fuzz checks that every kind is here).
KIND_STRATEGIES: dict[type[Message], st.SearchStrategy[Message]] = {
    Hello: st.builds(
        Hello, st.just(PROTOCOL_VERSION), names, st.lists(names, max_size=4), st.integers(0, 2**31),
        st.sampled_from(["memory", "redis"]), st.binary(min_size=16, max_size=16),
        st.lists(st.tuples(names, leases), max_size=4), st.text(max_size=16), st.booleans(),
    ),
    Challenge: st.builds(Challenge, st.binary(max_size=32), st.binary(max_size=32)),
    Auth: st.builds(Auth, st.binary(max_size=32)),
    # (a hello of another version is an "upgrade" error: tests/test_protocol_versions.py)
    Welcome: st.builds(Welcome, st.just(PROTOCOL_VERSION), names, st.lists(names, max_size=4)),
    Jobs: st.builds(Jobs, st.lists(st.tuples(leases, records), max_size=4)),
    Ack: st.builds(Ack, st.lists(leases, max_size=8), st.integers(0, 2**31)),
    Nack: st.builds(Nack, leases, st.text(max_size=20)),
    Reports: st.builds(Reports, st.integers(0, 2**62), st.lists(report_items, max_size=4)),
    ReportsAck: st.builds(ReportsAck, leases),
    Cancel: st.builds(Cancel, names),
    Return: st.builds(Return, st.lists(names, max_size=4)),
    Ping: st.just(Ping()),
    Pong: st.just(Pong()),
    Bye: st.builds(Bye, st.text(max_size=20)),
    HeldJobs: st.builds(HeldJobs, st.lists(st.tuples(names, leases), max_size=4), st.booleans()),
    Dropped: st.builds(Dropped, st.lists(names, max_size=4), st.booleans()),
    Command: st.builds(
        Command, st.integers(0, 2**31), st.sampled_from(["release_lock", "retry"]), names
    ),
    CommandResult: st.builds(
        CommandResult, st.integers(0, 2**31), st.booleans(), st.just({}) | records,
        st.text(max_size=20),
    ),
}  # fmt: skip
messages_strategy = st.one_of(*KIND_STRATEGIES.values())


@FUZZ
@given(messages=st.lists(messages_strategy, min_size=1, max_size=5), chunk=st.integers(1, 17))
def test_generated_messages_round_trip_in_any_chunking(messages: list[Message], chunk: int) -> None:
    wire = b"".join(encode(m) for m in messages)
    decoder = FrameDecoder()
    received: list[Message] = []
    for i in range(0, len(wire), chunk):
        decoder.feed(wire[i : i + chunk])
        received.extend(decoder.messages())
    assert received == messages
    assert decoder.buffered_bytes == 0


# --- pack_args -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        {"o": object()},
        {"s": {1, 2}},
        {"f": frozenset()},
        {"d": dt.datetime(2024, 1, 1)},
        {"fn": len},
        {"deep": [{"inner": {1}}]},
        {"big": 2**64},
        {"exc": ValueError("x")},
    ],
    ids=["object", "set", "frozenset", "datetime", "function", "nested set", "bigint", "exception"],
)
def test_pack_args_raises_type_error_for_what_msgpack_cannot_carry(args: dict[str, Any]) -> None:
    with pytest.raises(TypeError, match="plain data"):
        pack_args(args)


def test_pack_args_accepts_plain_data_and_it_unpacks_equal() -> None:
    args = {
        "none": None,
        "bool": True,
        "int": -(2**63),
        "uint": 2**64 - 1,
        "float": 1.25,
        "str": "héllo",
        "bytes": b"\x00\xff",
        "list": [1, "a", [None]],
        "dict": {"k": {"n": 1}},
    }
    packed = pack_args(args)
    assert isinstance(packed, bytes)
    assert msgpack.unpackb(packed, raw=False) == args


# --- handshake proofs -----------------------------------------------------------------------

SECRET = b"s3cret"
NODE_NONCE = bytes(range(NONCE_BYTES))
DIST_NONCE = bytes(range(NONCE_BYTES, 2 * NONCE_BYTES))


def proof(**changes: Any) -> bytes:
    values: dict[str, Any] = {
        "secret": SECRET,
        "role": "node",
        "node_name": "w1",
        "node_nonce": NODE_NONCE,
        "distributor_nonce": DIST_NONCE,
        **changes,
    }
    return handshake_proof(
        values["secret"],
        values["role"],
        values["node_name"],
        values["node_nonce"],
        values["distributor_nonce"],
    )


def test_handshake_proof_is_deterministic_hmac_sha256() -> None:
    assert proof() == proof()
    assert len(proof()) == hashlib.sha256().digest_size


@pytest.mark.parametrize(
    "change",
    [
        {"secret": b"other"},
        {"role": "distributor"},
        {"node_name": "w2"},
        {"node_nonce": b"\xff" * NONCE_BYTES},
        {"distributor_nonce": b"\xff" * NONCE_BYTES},
        {"node_nonce": DIST_NONCE, "distributor_nonce": NODE_NONCE},  # swapped nonces
    ],
    ids=["secret", "role", "node", "node nonce", "distributor nonce", "swapped nonces"],
)
def test_handshake_proof_differs_per_secret_role_node_and_nonce(change: dict[str, Any]) -> None:
    assert proof(**change) != proof()


def test_a_node_proof_cannot_be_reflected_as_a_distributor_proof() -> None:
    node_proof = proof(role="node")
    assert not proof_matches(proof(role="distributor"), node_proof)


def test_proof_matches() -> None:
    assert proof_matches(proof(), proof())
    assert not proof_matches(proof(), proof(secret=b"wrong"))
    assert not proof_matches(proof(), proof()[:-1])
    assert not proof_matches(proof(), b"")
    assert not proof_matches(proof(), proof()[::-1])
