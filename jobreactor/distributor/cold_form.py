"""The cold form of a tracked job: one `bytes` a job (tracking.py keeps a million of them).

A head (flags, lease, seq, connection, and indexes of the job's name, node, origin and
distributor in the tracker's string table), then the record minus id, name and distributor:
msgpack with field numbers for keys, and float fields holding a whole number packed as an int
(3 bytes for `after=3600` instead of 9; read back as a float).

The head has two forms, told apart by a flag bit. Narrow (21 bytes) takes what nearly every
job has: a lease below 2**48 (a tracker starts at a random 40-bit one), a seq below 2**32,
under 65,536 names and nodes and under 256 origins and distributors. Wide (29 bytes) takes the
rest, up to 64-bit leases and seqs; past 65,535 strings an entry can't be frozen at all.
With the bench's no-op delayed record (`after=3600`) a narrow entry is 45 bytes: an 80-byte
allocation, where a 29-byte head and 9-byte floats made it 96.
"""

from __future__ import annotations

import struct
from dataclasses import fields
from typing import Any

import msgpack

from jobreactor.job import JobRecord

ACKED, CANCEL, PERIODIC = 1, 2, 4
_WIDE = 8
# flags, lease (low 32 bits, high 16), seq, connection (-1: none), name, node, origin,
# distributor.
_NARROW_HEAD = struct.Struct("<BIHIiHHBB")
# flags, lease, seq, connection, name, node, origin, distributor.
_WIDE_HEAD = struct.Struct("<BqqiHHHH")
_NAME_AT = struct.Struct("<H")
_NARROW_NAME_OFFSET, _WIDE_NAME_OFFSET = 15, 21
PACK_ERRORS = (struct.error, OverflowError, TypeError)

_FIELDS = tuple(f.name for f in fields(JobRecord) if f.name != "extra")
_FIELD_NUMBER = {name: number for number, name in enumerate(_FIELDS)}
# Field numbers of the float fields (`float` or `float | None`): a whole number in one is
# packed as an int and read back as a float.
_FLOAT_NUMBERS = frozenset(
    _FIELD_NUMBER[f.name] for f in fields(JobRecord) if str(f.type).startswith("float")
)
_WHOLE_LIMIT = 2.0**53  # every whole float up to here is exactly an int and back
_IN_HEAD = frozenset({"id", "name", "distributor"})

Head = tuple[int, int, int, int, int, int, int, int]


def pack_head(
    flags: int, lease: int, seq: int, conn: int, name: int, node: int, origin: int, dist: int
) -> bytes:
    """The head; raises one of `PACK_ERRORS` if it fits neither form."""
    try:
        return _NARROW_HEAD.pack(
            flags, lease & 0xFFFFFFFF, lease >> 32, seq, conn, name, node, origin, dist
        )
    except PACK_ERRORS:
        return _WIDE_HEAD.pack(flags | _WIDE, lease, seq, conn, name, node, origin, dist)


def unpack_head(frozen: bytes) -> Head:
    """(flags, lease, seq, conn, name, node, origin, distributor) of a frozen entry."""
    if frozen[0] & _WIDE:
        flags, lease, seq, conn, name, node, origin, dist = _WIDE_HEAD.unpack_from(frozen)
        return flags & ~_WIDE, lease, seq, conn, name, node, origin, dist
    flags, low, high, seq, conn, name, node, origin, dist = _NARROW_HEAD.unpack_from(frozen)
    return flags, high << 32 | low, seq, conn, name, node, origin, dist


def name_index(frozen: bytes) -> int:
    """The string-table index of a frozen entry's job name (no whole head read)."""
    offset = _WIDE_NAME_OFFSET if frozen[0] & _WIDE else _NARROW_NAME_OFFSET
    index: int = _NAME_AT.unpack_from(frozen, offset)[0]
    return index


def packed_record(frozen: bytes) -> bytes:
    """The frozen entry's record part (to keep it as it is when the head changes)."""
    return frozen[_WIDE_HEAD.size if frozen[0] & _WIDE else _NARROW_HEAD.size :]


def compact_record(data: dict[str, Any]) -> bytes | None:
    """`data` (a wire form) packed without id, name and distributor, field numbers for keys;
    None if it can't be (an odd extra key would read back as a field number, or msgpack fails)."""
    compact: dict[int | str, Any] = {}
    for key, value in data.items():
        if key in _IN_HEAD and (key != "distributor" or type(value) is str):
            continue
        number = _FIELD_NUMBER.get(key)
        if number is None:
            if type(key) is not str:
                return None
            compact[key] = value
            continue
        if (
            type(value) is float
            and number in _FLOAT_NUMBERS
            and value.is_integer()
            and -_WHOLE_LIMIT <= value <= _WHOLE_LIMIT
        ):
            value = int(value)
        compact[number] = value
    try:
        packed: bytes = msgpack.packb(compact, use_bin_type=True)
        return packed
    except (OverflowError, TypeError, ValueError):
        return None


def thawed_record(job_id: str, name: str, distributor: str, frozen: bytes) -> dict[str, Any]:
    """The wire form of a frozen entry's record (a fresh copy)."""
    compact = msgpack.unpackb(packed_record(frozen), raw=False, strict_map_key=False)
    data: dict[str, Any] = {"id": job_id, "name": name}
    if distributor:
        data["distributor"] = distributor
    for key, value in compact.items():
        if type(key) is not int:
            data[key] = value
        elif type(value) is int and key in _FLOAT_NUMBERS:
            data[_FIELDS[key]] = float(value)
        else:
            data[_FIELDS[key]] = value
    return data
