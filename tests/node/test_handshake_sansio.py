"""The node's handshake and session rules as a pure state machine (node/handshake.py).

No socket, no loop, no clock: messages and `now` go in, actions come out. Every path of the
handshake is here: welcomed with and without a secret, each refusal, each failed check, the
timeout, the phases' allowed messages, and the Hello that must fit before authentication.
"""

from __future__ import annotations

import pytest

from jobreactor.errors import HandshakeFailed, LocalProtocolError, RemoteProtocolError
from jobreactor.node.handshake import (
    Admitted,
    Close,
    Deliver,
    Leaving,
    NodeHandshake,
    Phase,
    Refused,
    Secure,
    Send,
    busy_retry_delay,
    hello_frame,
)
from jobreactor.protocol import (
    DISTRIBUTOR_TO_NODE,
    MAX_HELD_IN_HELLO,
    NODE_TO_DISTRIBUTOR,
    PRE_AUTH_MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    Auth,
    Bye,
    Cancel,
    Challenge,
    Command,
    Dropped,
    FrameOpener,
    FrameSealer,
    Hello,
    Jobs,
    Pong,
    ReportsAck,
    Welcome,
    encode,
    handshake_proof,
    session_key,
)

SECRET = b"s3cret"
NODE_NONCE = b"n" * 16
DIST_NONCE = b"d" * 16
TIMEOUT = 5.0


def machine(secret: bytes | None = None, expected: str | None = None) -> NodeHandshake:
    hs = NodeHandshake("w1", secret, TIMEOUT, "10.0.0.1:7000")
    hs.expected_instance = expected
    hs.connect(100.0, NODE_NONCE)
    return hs


def welcome(instance: str = "i1", version: int = PROTOCOL_VERSION) -> Welcome:
    return Welcome(version, "10.0.0.1:7000", ["gone"], instance)


def challenge(secret: bytes) -> Challenge:
    proof = handshake_proof(secret, "distributor", "w1", NODE_NONCE, DIST_NONCE)
    return Challenge(DIST_NONCE, proof)


def test_a_node_without_a_secret_is_welcomed() -> None:
    hs = machine()
    assert hs.phase is Phase.AWAIT_WELCOME
    (admitted,) = hs.receive(welcome(), 101.0)
    assert admitted == Admitted(welcome(), "")
    assert hs.is_ready
    assert hs.welcomed
    assert hs.instance == "i1"
    assert hs.deadline is None
    assert hs.poll(1000.0) == []  # welcomed: no timeout any more


def test_with_a_secret_the_node_proves_it_and_seals_both_directions() -> None:
    hs = machine(SECRET)
    send, secure = hs.receive(challenge(SECRET), 101.0)
    assert send == Send(Auth(handshake_proof(SECRET, "node", "w1", NODE_NONCE, DIST_NONCE)))
    assert isinstance(secure, Secure)
    # The distributor opens what we seal, and we open what it seals (keys per direction).
    to_dist = session_key(SECRET, "w1", NODE_NONCE, DIST_NONCE, NODE_TO_DISTRIBUTOR)
    to_node = session_key(SECRET, "w1", NODE_NONCE, DIST_NONCE, DISTRIBUTOR_TO_NODE)
    frame = encode(Pong())
    assert FrameOpener(to_dist).open(secure.sealer.seal(frame)[4:]) == frame[4:]
    assert secure.opener.open(FrameSealer(to_node).seal(frame)[4:]) == frame[4:]
    (admitted,) = hs.receive(welcome(), 101.5)
    assert isinstance(admitted, Admitted)
    assert hs.is_ready


def test_a_distributor_with_another_secret_is_answered_but_never_trusted() -> None:
    hs = machine(SECRET)
    _, secure = hs.receive(challenge(b"other"), 101.0)
    assert isinstance(secure, Secure)
    # Its frames are read unchecked (to log why it refuses us)...
    frame = encode(Bye("bad secret"))
    assert secure.opener.open(FrameSealer(b"k" * 32).seal(frame)[4:]) == frame[4:]
    # ...but its Welcome is refused.
    with pytest.raises(HandshakeFailed, match="without proving the secret"):
        hs.receive(welcome(), 101.5)
    assert not hs.is_ready


def test_a_welcome_without_a_challenge_is_refused_when_we_have_a_secret() -> None:
    with pytest.raises(HandshakeFailed, match="unauthenticated distributor"):
        machine(SECRET).receive(welcome(), 101.0)


def test_a_challenge_to_a_node_without_a_secret_fails() -> None:
    with pytest.raises(HandshakeFailed, match="requires a secret"):
        machine().receive(challenge(SECRET), 101.0)


def test_another_protocol_version_says_upgrade() -> None:
    with pytest.raises(HandshakeFailed, match="upgrade the older side"):
        machine().receive(welcome(version=PROTOCOL_VERSION + 1), 101.0)


def test_another_instance_than_the_registry_lists_is_refused() -> None:
    hs = machine(expected="listed")
    with pytest.raises(HandshakeFailed, match="registry lists 'listed'"):
        hs.receive(welcome("other"), 101.0)
    assert (hs.mismatch, hs.is_ready) == (True, False)
    hs.connect(200.0, NODE_NONCE)  # the next dial starts clean
    assert (hs.mismatch, hs.phase) == (False, Phase.AWAIT_WELCOME)
    hs.expected_instance = "other"
    assert isinstance(hs.receive(welcome("other"), 201.0)[0], Admitted)


def test_a_new_instance_at_the_same_address_is_noticed() -> None:
    hs = machine()
    hs.receive(welcome("i1"), 101.0)
    assert hs.closed() == (True, False)
    hs.connect(200.0, NODE_NONCE)
    (admitted,) = hs.receive(welcome("i2"), 201.0)
    assert admitted == Admitted(welcome("i2"), "i1")
    assert (hs.instance, hs.previous_instance) == ("i2", "i1")
    hs.closed()
    hs.connect(300.0, NODE_NONCE)
    assert hs.receive(welcome("i2"), 301.0) == [Admitted(welcome("i2"), "")]  # same one


@pytest.mark.parametrize(
    ("reason", "said", "busy"),
    [
        ("busy: too many handshakes", "busy: too many handshakes", True),
        ("bad secret", "the distributor refused our proof: check that both sides", False),
        ("unknown node name", "unknown node name", False),
    ],
)
def test_refusals(reason: str, said: str, busy: bool) -> None:
    hs = machine(SECRET)
    (refused,) = hs.receive(Bye(reason), 101.0)
    assert isinstance(refused, Refused)
    assert refused.reason.startswith(said)
    assert refused.busy is busy
    assert hs.busy is busy
    assert not hs.welcomed  # a refusal keeps the dial loop's backoff growing


def test_the_welcome_must_come_in_time() -> None:
    hs = machine()
    assert hs.deadline == 100.0 + TIMEOUT
    assert hs.poll(104.9) == []
    assert hs.poll(105.0) == [Close("handshake timeout")]
    assert hs.poll(106.0) == []  # said once


def test_a_welcome_after_the_deadline_is_too_late() -> None:
    assert machine().receive(welcome(), 100.0 + TIMEOUT) == [Close("handshake timeout")]


def test_session_messages_are_delivered_only_once_welcomed() -> None:
    messages = [Jobs([]), ReportsAck(3), Cancel("j1"), Command(1, "retry", "j1"), Dropped([], True)]
    for message in messages:
        with pytest.raises(RemoteProtocolError, match="not allowed in phase await welcome"):
            machine().receive(message, 101.0)
    hs = machine()
    hs.receive(welcome(), 101.0)
    for message in messages:
        assert hs.receive(message, 102.0) == [Deliver(message)]


def test_handshake_messages_are_not_allowed_once_welcomed() -> None:
    hs = machine()
    hs.receive(welcome(), 101.0)
    for message in (welcome(), challenge(SECRET)):
        with pytest.raises(RemoteProtocolError, match="not allowed in phase ready"):
            hs.receive(message, 102.0)


def test_a_goodbye_after_the_welcome_is_leaving() -> None:
    hs = machine()
    hs.receive(welcome(), 101.0)
    assert hs.receive(Bye("stopping"), 102.0) == [Leaving("stopping")]
    assert hs.closed() == (True, True)
    assert hs.phase is Phase.DOWN
    with pytest.raises(RemoteProtocolError, match="not allowed in phase down"):
        hs.receive(Jobs([]), 103.0)


def hello(names: list[str]) -> Hello:
    return Hello(PROTOCOL_VERSION, "w1", names, 10, "memory", NODE_NONCE, [], "inst", False, 10)


def test_the_hello_carries_what_fits_and_the_rest_follows() -> None:
    held = [(f"job-{i}", i) for i in range(MAX_HELD_IN_HELLO + 7)]
    frame, rest = hello_frame(hello(["a"]), held)
    assert rest == held[MAX_HELD_IN_HELLO:]
    assert len(frame) <= PRE_AUTH_MAX_FRAME_BYTES
    # Names that leave no room for held jobs: they all follow after the welcome.
    names = [f"{i:0200d}" for i in range(PRE_AUTH_MAX_FRAME_BYTES // 220)]
    _, rest = hello_frame(hello(names), held)
    assert rest == held


def test_a_hello_that_cannot_fit_is_our_error() -> None:
    names = [f"{i:0200d}" for i in range(PRE_AUTH_MAX_FRAME_BYTES // 100)]
    with pytest.raises(LocalProtocolError, match="its Hello needs"):
        hello_frame(hello(names), [])


def test_a_busy_refusal_is_retried_soon_with_jitter() -> None:
    delays = {busy_retry_delay() for _ in range(50)}
    assert all(0.05 <= d <= 0.15 for d in delays)
    assert len(delays) > 1
