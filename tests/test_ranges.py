"""Out-of-range integers (issue 10, defects 3 and 4): refused at enqueue in the caller's thread;
a job that still can't be encoded fails alone; a peer's out-of-range sequence number closes
that connection only."""

from __future__ import annotations

import socket
import struct
from typing import Any

import msgpack
import pytest

from jobreactor import InvalidArgs, InvalidOptions, JobCancelled, Reactor
from jobreactor.handle import JobHandle
from jobreactor.job import build_record
from jobreactor.protocol import (
    NONCE_BYTES,
    PROTOCOL_VERSION,
    Hello,
    Reports,
    decode_body,
    encode,
)
from tests.conftest import in_flight, noop_registry, wait_until


@pytest.mark.parametrize(
    "opts",
    [
        {"priority": 2**64},
        {"priority": 2**63},
        {"priority": -(2**63) - 1},
        {"max_attempt": 2**64},
        {"max_attempt": 0},
        {"after": 10**400},
        {"run_at": 10**400},
        {"lock_timeout": 10**400},
        {"duplicate_delay": -(10**400)},
    ],
)
def test_out_of_range_options_are_refused_at_enqueue(reactor: Reactor, opts: Any) -> None:
    with pytest.raises(InvalidOptions, match=next(iter(opts))):
        reactor.enqueue("noop", {}, opts)
    assert reactor.distributor.pending_count == 0


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1, [1, {"deep": 2**70}]])
def test_out_of_range_integers_in_args_are_refused_at_enqueue(reactor: Reactor, value: Any) -> None:
    with pytest.raises(InvalidArgs, match="int in"):
        reactor.enqueue("noop", {"x": value})
    with pytest.raises(TypeError):  # InvalidArgs is a TypeError, as before
        reactor.enqueue_many([("noop", {"x": value}, None)])


def test_extreme_but_encodable_values_still_run(reactor: Reactor) -> None:
    reactor.start_node("w1", registry=noop_registry())
    handle = reactor.enqueue(
        "noop",
        {"big": 2**64 - 1, "small": -(2**63)},
        {"priority": 2**63 - 1, "max_attempt": 2**63 - 1},
    )
    assert handle is not None
    assert handle.result(timeout=10)["big"] == 2**64 - 1


def test_a_job_that_cannot_be_encoded_fails_alone(reactor: Reactor) -> None:
    """Before: the whole chunk of up to 512 jobs vanished and in_flight stayed up forever."""
    reactor.start_node("w1", registry=noop_registry())
    distributor = reactor.distributor
    good = [reactor.enqueue("noop", {"i": i}) for i in range(5)]
    bad_record = build_record("bad-1", "noop", {}, {}, now_epoch_s=0.0)
    bad_record.priority = 2**64  # as if a future bug bypassed enqueue's range check
    bad = JobHandle(bad_record.id)

    async def submit_with_neighbours() -> list[JobHandle]:
        handles = [JobHandle(f"n-{i}") for i in range(20)]
        items: list[Any] = [
            (build_record(h.id, "noop", {"i": i}, {}, now_epoch_s=0.0), None, None, h)
            for i, h in enumerate(handles[:10])
        ]
        items.append((bad_record, None, None, bad))
        items += [
            (build_record(h.id, "noop", {"i": i}, {}, now_epoch_s=0.0), None, None, h)
            for i, h in enumerate(handles[10:])
        ]
        distributor.submit_many(items)
        return handles

    neighbours = reactor.loop_host.call(submit_with_neighbours())
    for handle in [*good, *neighbours]:
        assert handle is not None
        handle.result(timeout=10)
    with pytest.raises(JobCancelled, match="can't be encoded"):
        bad.result(timeout=10)
    wait_until(lambda: in_flight(reactor, "w1") == 0, timeout=10, what="nothing stuck in flight")


def test_reports_with_an_out_of_range_seq_are_a_protocol_error() -> None:
    for first_seq in (2**64 - 1, 2**63, -1):
        body = msgpack.packb([Reports.TAG, first_seq, []])
        with pytest.raises(Exception, match="first_seq") as info:
            decode_body(body)
        assert type(info.value).__name__ == "MalformedFrame"
    item = ["j1", 1, "success", True, {}, ""]
    with pytest.raises(Exception, match="first_seq"):
        decode_body(msgpack.packb([Reports.TAG, 2**63 - 1, [item]]))
    with pytest.raises(Exception, match="lease"):
        decode_body(msgpack.packb([Reports.TAG, 1, [["j1", 2**64 - 1, "success", True, {}, ""]]]))


def _frame(body: list[Any]) -> bytes:
    raw: bytes = msgpack.packb(body, use_bin_type=True)
    return struct.pack(">I", len(raw)) + raw


def test_a_poisoned_reports_frame_closes_only_that_connection(reactor: Reactor) -> None:
    """Before: every later flush on that connection failed (pings too) until it closed."""
    port = reactor.distributor.address_port()
    hello = encode(
        Hello(PROTOCOL_VERSION, "rogue", [], 0, "memory", b"n" * NONCE_BYTES, [], "i1", False)
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(hello)
        assert sock.recv(65536)  # the Welcome
        wait_until(lambda: any(n["name"] == "rogue" for n in reactor.nodes()), timeout=10)
        sock.sendall(_frame([Reports.TAG, 2**64 - 1, []]))
        closed = b""
        while chunk := sock.recv(65536):
            closed += chunk
        assert b"first_seq" in closed  # the Bye says why
    wait_until(lambda: not reactor.nodes(), timeout=10, what="the rogue gone")
    reactor.start_node("w1", registry=noop_registry())
    handle = reactor.enqueue("noop", {})
    assert handle is not None
    handle.result(timeout=10)


def test_decode_range_checks_cover_every_counted_field() -> None:
    cases: list[list[Any]] = [
        [6, [2**64 - 1], 0],  # Ack lease
        [6, [], 2**63],  # Ack credits
        [7, -1, "x"],  # Nack lease
        [9, 2**63],  # ReportsAck
        [15, [["j", 2**63]], True, ""],  # Held lease
        [5, [[2**63, {"id": "j", "name": "n", "args": {}}]]],  # Jobs lease
    ]
    for body in cases:
        with pytest.raises(Exception, match="2\\*\\*63-1") as info:
            decode_body(msgpack.packb(body))
        assert type(info.value).__name__ == "MalformedFrame"
