"""The wire protocol, sans I/O: bytes in, messages out.

A frame is a 4-byte big-endian length followed by one msgpack array whose first item is the
message tag. The length is checked against `max_frame_bytes` (much smaller before the handshake)
*before* the body is buffered; the tag is read before unpacking, so a kind not allowed yet is
refused unread; msgpack is unpacked with limits per message kind, no ext types are trusted, and
every field is type- and range-checked here, so nothing malformed reaches the distributor or the
node. Nothing is ever unpickled or evaluated.

Conversation (the node dials; one connection per node/distributor pair, full duplex):

    node                                   distributor
    Hello(version, name, jobs, credits, nonce, held, instance, wants_auth) ->
                                        <- Challenge(nonce, proof)     only with a secret
    Auth(proof) ->                                                     only with a secret
                                        <- Welcome(address, drop, instance)
    HeldJobs(held, last, origin) ->        (the held list outgrew the Hello; or, with
                                            origin, jobs handed over from an adopted instance)
                                        <- Dropped(drop, last)
                                        <- Jobs([(lease, record), ...])
    Ack(leases, credits) ->                (jobs stored; credits granted back)
    Nack(lease, reason) ->                 (could not store: the distributor requeues)
    Reports(first_seq, [(job_id, lease, outcome, final, args, completes_batch), ...]) ->
                                        <- ReportsAck(upto_seq)  (a journaling distributor:
                                                once the reports' removals are stored)
                                        <- Cancel(job_id)
    Return(job_ids) ->                     (not started, handed back at shutdown)
    Ping / Pong either way; Bye(reason) either way before closing.
                                        <- Command(id, op, arg)      JR.release_lock / JR.retry
    CommandResult(id, found, job, error) ->

With a secret, each side proves it knows it by an HMAC-SHA256 over both fresh nonces, the
node's name and its own role label, so a proof can be neither replayed nor reflected. From
then on every frame carries a MAC under a per-session, per-direction key (`mac`): the
distributor's from the frame after its Challenge, the node's from the frame after its Auth.

The version is the first field of both hellos (Hello, Welcome) in every protocol version, and
is read before the rest of the frame: a peer of another version gets ProtocolVersionMismatch,
whose message says which side to upgrade, whatever the rest of its hello looks like.

The package: `schema` (field kinds: types and bounds; the codec generated from them),
`messages` (the message kinds, each declared once with the kinds of its fields, and the
constants they obey), `decoding` (unpacking with per-kind limits, then the generated checks),
`framing` (length prefix, `encode`, `FrameDecoder`) and `auth` (the handshake proofs). None of
them does I/O. Import from `jobreactor.protocol`.
"""

from __future__ import annotations

from jobreactor.protocol.auth import handshake_proof, proof_matches
from jobreactor.protocol.decoding import ARGS_KINDS, decode_body, peek_tag
from jobreactor.protocol.framing import FrameDecoder, encode, encode_split, pack_args
from jobreactor.protocol.mac import (
    DISTRIBUTOR_TO_NODE,
    MAC_BYTES,
    NODE_TO_DISTRIBUTOR,
    FrameOpener,
    FrameSealer,
    session_key,
)
from jobreactor.protocol.messages import (
    COMMAND_OPS,
    DEFAULT_MAX_FRAME_BYTES,
    MAX_HELD_IN_HELLO,
    MAX_ITEMS_PER_FRAME,
    MAX_JOB_NAMES,
    MAX_NAME_CHARS,
    MESSAGES,
    NONCE_BYTES,
    OUTCOMES,
    PRE_AUTH_MAX_FRAME_BYTES,
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
    Record,
    ReportItem,
    Reports,
    ReportsAck,
    Return,
    Welcome,
)
from jobreactor.protocol.schema import MAX_WIRE_INT

__all__ = [
    "ARGS_KINDS",
    "COMMAND_OPS",
    "DEFAULT_MAX_FRAME_BYTES",
    "DISTRIBUTOR_TO_NODE",
    "MAC_BYTES",
    "MAX_HELD_IN_HELLO",
    "MAX_ITEMS_PER_FRAME",
    "MAX_JOB_NAMES",
    "MAX_NAME_CHARS",
    "MAX_WIRE_INT",
    "MESSAGES",
    "NODE_TO_DISTRIBUTOR",
    "NONCE_BYTES",
    "OUTCOMES",
    "PRE_AUTH_MAX_FRAME_BYTES",
    "PROTOCOL_VERSION",
    "Ack",
    "Auth",
    "Bye",
    "Cancel",
    "Challenge",
    "Command",
    "CommandResult",
    "Dropped",
    "FrameDecoder",
    "FrameOpener",
    "FrameSealer",
    "HeldJobs",
    "Hello",
    "Jobs",
    "Message",
    "Nack",
    "Ping",
    "Pong",
    "Record",
    "ReportItem",
    "Reports",
    "ReportsAck",
    "Return",
    "Welcome",
    "decode_body",
    "encode",
    "encode_split",
    "handshake_proof",
    "pack_args",
    "peek_tag",
    "proof_matches",
    "session_key",
]
