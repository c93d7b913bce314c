"""The distributor's session state machine without a socket: every handshake path and refusal,
the handshake deadline, and the rules of a ready session (session_state.py)."""

from __future__ import annotations

import pytest

from jobreactor.distributor.admission import Admission
from jobreactor.distributor.guard import name_clash
from jobreactor.distributor.session_state import (
    BAD_SECRET,
    IDLE_ACKS,
    SECRET_MISMATCH,
    Admit,
    Close,
    OpenIncoming,
    Phase,
    SealOutgoing,
    Send,
    SessionState,
)
from jobreactor.errors import HandshakeFailed, RemoteProtocolError
from jobreactor.protocol import (
    DISTRIBUTOR_TO_NODE,
    NODE_TO_DISTRIBUTOR,
    NONCE_BYTES,
    PROTOCOL_VERSION,
    Ack,
    Auth,
    Bye,
    Challenge,
    FrameOpener,
    FrameSealer,
    Hello,
    Ping,
    Reports,
    Return,
    encode,
    handshake_proof,
    session_key,
)

SECRET = b"s3cret"
NODE_NONCE = b"n" * NONCE_BYTES
OUR_NONCE = b"d" * NONCE_BYTES
T0 = 100.0  # any monotonic clock


def hello(**changes: object) -> Hello:
    fields: dict[str, object] = {
        "version": PROTOCOL_VERSION,
        "node_name": "w1",
        "job_names": ["work"],
        "credits": 4,
        "storage": "memory",
        "nonce": NODE_NONCE,
        "held": [],
        "instance": "i-1",
    }
    fields.update(changes)
    return Hello(**fields)  # type: ignore[arg-type]


def state(secret: bytes | None = None, timeout: float = 5.0) -> SessionState:
    return SessionState(secret, timeout, T0, nonce=lambda n: OUR_NONCE[:n])


def phase(s: SessionState) -> Phase:
    """Read afresh (mypy would keep the phase narrowed from the previous assert)."""
    return s.phase


def node_proof(name: str = "w1", secret: bytes = SECRET) -> bytes:
    return handshake_proof(secret, "node", name, NODE_NONCE, OUR_NONCE)


# --- without a secret ---------------------------------------------------------------------


def test_a_hello_without_a_secret_asks_the_owner_to_admit() -> None:
    s = state()
    said = hello()
    assert s.receive(said) == [Admit(said)]
    assert phase(s) is Phase.ADMITTING
    assert s.heard_hello
    assert s.node_name == "w1"
    s.admitted()
    assert phase(s) is Phase.READY
    assert s.closed() is True
    assert phase(s) is Phase.CLOSED


def test_a_node_with_a_secret_is_refused_by_a_distributor_without_one() -> None:
    s = state()
    actions = s.receive(hello(wants_auth=True))
    assert len(actions) == 1
    close = actions[0]
    assert isinstance(close, Close)
    assert close.reason == SECRET_MISMATCH
    assert close.notify
    assert "refused node 'w1'" in close.warning
    assert phase(s) is Phase.AWAIT_HELLO  # never admitted


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"version": PROTOCOL_VERSION + 1}, "upgrade the older side"),
        ({"version": PROTOCOL_VERSION - 1}, "upgrade the older side"),
        ({"node_name": ""}, "empty name"),
        ({"credits": -1}, "negative credits"),
        ({"nonce": b"short"}, "bad nonce"),
    ],
)
def test_a_bad_hello_fails_the_handshake(changes: dict[str, object], match: str) -> None:
    s = state(SECRET)
    with pytest.raises(HandshakeFailed, match=match):
        s.receive(hello(**changes))
    assert s.heard_hello  # it spoke: not among the first evicted


# --- with a secret ------------------------------------------------------------------------


def test_the_secret_handshake_challenges_then_admits_and_keys_both_directions() -> None:
    s = state(SECRET)
    actions = s.receive(hello())
    ours = handshake_proof(SECRET, "distributor", "w1", NODE_NONCE, OUR_NONCE)
    to_node = session_key(SECRET, "w1", NODE_NONCE, OUR_NONCE, DISTRIBUTOR_TO_NODE)
    assert actions == [Send(Challenge(OUR_NONCE, ours)), SealOutgoing(to_node)]
    assert phase(s) is Phase.AWAIT_AUTH

    actions = s.receive(Auth(node_proof()))
    from_node = session_key(SECRET, "w1", NODE_NONCE, OUR_NONCE, NODE_TO_DISTRIBUTOR)
    assert actions[0] == OpenIncoming(from_node)
    assert isinstance(actions[1], Admit)
    assert phase(s) is Phase.ADMITTING
    s.admitted()
    assert phase(s) is Phase.READY

    # What the node derives on its side opens what we seal, and the other way round.
    frame = encode(Ping())
    assert FrameOpener(to_node).open(FrameSealer(to_node).seal(frame)[4:]) == frame[4:]


def test_a_wrong_proof_is_refused_with_a_bye() -> None:
    s = state(SECRET)
    s.receive(hello())
    actions = s.receive(Auth(node_proof(secret=b"other")))
    assert actions == [
        Close(
            BAD_SECRET,
            notify=True,
            warning="refused node 'w1': bad secret (its proof does not match ours): check "
            "that both sides have the same secret",
        )
    ]
    assert phase(s) is Phase.AWAIT_AUTH


def test_a_proof_for_another_name_is_refused() -> None:
    s = state(SECRET)
    s.receive(hello())
    close = s.receive(Auth(node_proof(name="w2")))[0]
    assert isinstance(close, Close)
    assert close.reason == BAD_SECRET


# --- order, goodbye, refusal by the owner -------------------------------------------------


@pytest.mark.parametrize(
    ("secret", "before", "message"),
    [
        (SECRET, [], Auth(b"x" * 32)),  # Auth before Hello
        (SECRET, [hello()], hello()),  # a second Hello
        (None, [], Ack([], 1)),  # working messages before the handshake
        (None, [], Reports(1, [])),
        (None, [hello()], Ack([], 1)),  # ... or while the owner decides
    ],
)
def test_a_message_out_of_order_breaks_the_protocol(
    secret: bytes | None, before: list[Hello], message: object
) -> None:
    s = state(secret)
    for said in before:
        s.receive(said)
    with pytest.raises(RemoteProtocolError, match="is not allowed in phase"):
        s.receive(message)  # type: ignore[arg-type]


@pytest.mark.parametrize("steps", [0, 1, 2])
def test_a_goodbye_in_any_handshake_phase_closes_quietly(steps: int) -> None:
    s = state(SECRET)
    if steps >= 1:
        s.receive(hello())
    if steps >= 2:
        s.receive(Auth(node_proof()))
    assert s.receive(Bye("bye")) == [Close("peer said goodbye", notify=False)]


def test_the_owner_refuses_a_name_another_node_process_holds() -> None:
    s = state()
    s.receive(hello())
    reason = name_clash(hello(), hello(instance="i-2"), "10.0.0.2:4000")
    assert reason is not None
    assert "duplicate node name 'w1'" in reason
    assert "10.0.0.2:4000" in reason
    assert s.refused(reason) == [Close(reason, notify=True)]
    assert phase(s) is Phase.ADMITTING
    assert s.closed() is False  # never ready


def test_the_same_node_process_reconnecting_is_no_clash() -> None:
    assert name_clash(hello(), hello(), "10.0.0.2:4000") is None
    assert name_clash(hello(), None, "") is None


def test_admitted_only_after_the_handshake() -> None:
    s = state()
    with pytest.raises(RemoteProtocolError, match="admitted in phase"):
        s.admitted()


# --- the handshake deadline ---------------------------------------------------------------


def test_the_handshake_deadline_closes_a_silent_peer_once() -> None:
    s = state(timeout=2.0)
    assert s.deadline == T0 + 2.0
    assert s.expire(T0 + 1.0) == []  # early: nothing
    close = s.expire(T0 + 2.0)[0]
    assert isinstance(close, Close)
    assert close.reason == "handshake timeout"
    assert close.notify
    assert "no handshake within 2.0s" in close.warning


def test_the_deadline_also_covers_a_peer_that_never_sends_auth() -> None:
    s = state(SECRET, timeout=1.0)
    s.receive(hello())
    assert s.expire(T0 + 1.5)[0] == Close(
        "handshake timeout",
        notify=True,
        warning="no handshake within 1.0s (not a jobreactor node, or a wrong port)",
    )


def test_an_admitted_session_has_no_deadline_any_more() -> None:
    s = state(timeout=1.0)
    s.receive(hello())
    s.admitted()
    assert s.expire(T0 + 100.0) == []


# --- the rules of a ready session ---------------------------------------------------------


def ready() -> SessionState:
    s = state()
    s.receive(hello())
    s.admitted()
    return s


def test_a_node_acknowledges_and_returns_only_what_it_holds() -> None:
    s = ready()
    s.check_bounds(Ack([1, 2], 0), on_session=2)
    s.check_bounds(Return(["a"]), on_session=1)
    with pytest.raises(RemoteProtocolError, match="acknowledged 3 jobs but holds 2"):
        s.check_bounds(Ack([1, 2, 3], 0), on_session=2)
    with pytest.raises(RemoteProtocolError, match="returned 2 jobs but holds 1"):
        s.check_bounds(Return(["a", "b"]), on_session=1)


def test_a_stream_of_useless_acks_is_a_flood() -> None:
    s = ready()
    for _ in range(IDLE_ACKS):
        s.count_ack(useful=False)
    s.count_ack(useful=True)  # a useful one starts the count again
    for _ in range(IDLE_ACKS):
        s.count_ack(useful=False)
    with pytest.raises(RemoteProtocolError, match="a flood"):
        s.count_ack(useful=False)


# --- admission of anonymous connections (pure too) ----------------------------------------


class Peer:
    def __init__(self, key: int, peer: str, heard_hello: bool = False) -> None:
        self.key, self.peer, self.heard_hello = key, peer, heard_hello


def test_admission_evicts_the_oldest_silent_connection_first() -> None:
    slots: Admission[Peer] = Admission(8)  # two per source address
    first, second = Peer(1, "10.0.0.1:1", heard_hello=True), Peer(2, "10.0.0.1:2")
    slots.add(first)
    assert slots.make_room("10.0.0.1:3") is None
    slots.add(second)
    assert slots.make_room("10.0.0.1:3") is second  # the same source: its silent one goes
    assert slots.make_room("10.0.0.9:1") is None  # another source has room
    slots.discard(2)
    assert 2 not in slots
    assert len(slots) == 1
