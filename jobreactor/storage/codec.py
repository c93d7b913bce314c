"""The Redis record codec: a JobRecord as hash fields readable by any tool.

Shared by RedisStorage and RedisMonitor: the Ruby record's field names (+ every other non-default
JobRecord field), args and extras as JSON, numbers as text, bools "true"/"false"; a None field
is absent.
"""

from __future__ import annotations

import base64
import json
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import fields
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import msgpack

from jobreactor.errors import CorruptRecord, InvalidArgs, StorageError
from jobreactor.job import FINISHED_STATUSES, JobRecord

# Fields of the Ruby record that are always written, default or not, so external tools find them.
_ALWAYS: Final = frozenset(
    {"id", "name", "args", "attempt", "period", "make_after", "status", "distributor", "defer"}
)


def _kind(hint: Any) -> str:
    """Codec of one JobRecord field from its type: bool, int, float, str (or Optional), json."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        options = set(typing.get_args(hint)) - {type(None)}
        hint = options.pop() if len(options) == 1 else None
    names: dict[Any, str] = {bool: "bool", int: "int", float: "float", str: "str"}
    return names.get(hint, "json")


_HINTS: Final = typing.get_type_hints(JobRecord)
_FIELDS: Final = tuple(
    (f.name, _kind(_HINTS[f.name]), f.default, f.name in _ALWAYS)
    for f in fields(JobRecord)
    if f.name != "extra"
)
FIELD_KINDS: Final[dict[str, str]] = {name: kind for name, kind, _, _ in _FIELDS}


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return {"__bytes__": base64.b64encode(bytes(value)).decode("ascii")}
    raise InvalidArgs(f"{type(value).__name__} is not storable (use JSON/msgpack types)")


def _json_hook(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and "__bytes__" in obj and isinstance(obj["__bytes__"], str):
        return base64.b64decode(obj["__bytes__"])
    return obj


# One encoder, built once: json.dumps with options builds a new one on every call.
_JSON: Final = json.JSONEncoder(default=_json_default, separators=(",", ":"), ensure_ascii=False)


def dump_json(value: Any) -> str:
    """JSON readable by any tool; bytes become {"__bytes__": "<base64>"}."""
    return _JSON.encode(value)


def load_json(text: str) -> Any:
    return json.loads(text, object_hook=_json_hook)


# How each kind of field becomes text (an expression over `v`, the field's value).
_ENCODE_KIND: Final = {
    "str": "str(v)",
    "bool": "'true' if v else 'false'",
    "int": "str(int(v))",
    "float": "repr(float(v))",
    "json": "_dump_json(v)",
}


def _fields_encoder() -> Callable[[JobRecord], dict[str, str]]:
    """The fields part of `encode_job`, generated from `_FIELDS` as straight-line code (as the
    wire codecs are from their schema): a Redis node encodes every job it takes, and a loop
    over the 35 fields with an encoder call each was a fifth of its time (8.2 -> 3.6 µs a job).
    """
    lines = ["def encode_fields(job):", "    out = {}"]
    namespace: dict[str, Any] = {"_dump_json": dump_json}
    for i, (name, kind, default, always) in enumerate(_FIELDS):
        namespace[f"_default_{i}"] = default
        # None is absent; a field not always written is left out at its default too.
        skip = "" if always or default is None else f" and v != _default_{i}"
        lines += [
            f"    v = job.{name}",
            f"    if v is not None{skip}:",
            f"        out[{name!r}] = {_ENCODE_KIND[kind]}",
        ]
    lines.append("    return out")
    source = "\n".join(lines)  # generated here, from _FIELDS: no outside text in it
    exec(compile(source, "<storage codec: encode_fields>", "exec"), namespace)
    encode: Callable[[JobRecord], dict[str, str]] = namespace["encode_fields"]
    return encode


_encode_fields: Final = _fields_encoder()


def encode_job(job: JobRecord) -> dict[str, str]:
    """The hash fields of one job: the Ruby names, every non-default field, extras as JSON.

    A field that is None is left out (absent means None), so `""` and None stay distinct.
    """
    out = _encode_fields(job)
    if job.extra:
        for key, value in job.extra.items():
            if key not in FIELD_KINDS:
                out[key] = dump_json(value)
    return out


_TRUE: Final = frozenset({"true", "1", "yes", "True", "TRUE"})


def _decode_value(kind: str, text: str) -> Any:
    if kind == "str":
        return text
    if kind == "bool":
        return text in _TRUE
    if kind == "int":
        try:
            return int(text)
        except ValueError:
            return int(float(text))  # "1.0" written by hand
    if kind == "float":
        return float(text)
    return load_json(text)


def decode_fields(raw: dict[str, str]) -> dict[str, Any]:
    """Hash fields -> the dict `JobRecord.from_dict` takes (typed values, extras as keys).

    Raises CorruptRecord (a ValueError) for a value that doesn't parse as its field's type.
    """
    out: dict[str, Any] = {}
    for key, text in raw.items():
        kind = FIELD_KINDS.get(key)
        if kind is None:  # an extra, written by us as JSON (or by hand as plain text)
            try:
                out[key] = load_json(text)
            except ValueError:
                out[key] = text
            continue
        try:
            out[key] = _decode_value(kind, text)
        except ValueError as exc:
            raise CorruptRecord(f"field {key!r}={text!r} is not a valid {kind}: {exc}") from None
    return out


def decode_job(job_id: str, raw: dict[str, str]) -> JobRecord:
    """One stored hash as a record; `id`/`name`/`args` default sensibly if a tool left them out."""
    data = decode_fields(raw)
    data.setdefault("id", job_id)
    data.setdefault("name", "")
    data.setdefault("args", {})
    return JobRecord.from_dict(data)


def is_unfinished(raw_status: str | None) -> bool:
    return raw_status not in FINISHED_STATUSES


def redact_url(url: str) -> str:
    """The url without its password, for error messages and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable redis url>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


def pack_job(job: JobRecord) -> bytes:
    try:
        fields = encode_job(job)
    except (TypeError, ValueError) as exc:
        raise StorageError(f"job {job.id} ({job.name}) can't be stored: {exc}") from exc
    flat = [job.id]
    for item in fields.items():
        flat += item
    packed: bytes = msgpack.packb(flat)
    return packed


def record_json(job: JobRecord) -> str:
    try:
        return dump_json(job.to_dict())  # extras included; from_dict files them back
    except (TypeError, ValueError) as exc:
        raise StorageError(f"job {job.id} ({job.name}) can't be stored: {exc}") from exc


# Packed records (a node's far-future jobs): field names as their index in JobRecord, and the
# strings every job of a node repeats (name, distributor, node) as an index into this table.
_PACKED_FIELDS: Final = tuple(f.name for f in fields(JobRecord))
_FIELD_INDEX: Final = {name: i for i, name in enumerate(_PACKED_FIELDS)}
_COMMON_MAX: Final = 65_536  # distinct (name, distributor, node) triples remembered per process
_common: list[tuple[str, str, str | None]] = []
_common_index: dict[tuple[str, str, str | None], int] = {}


def _common_id(triple: tuple[str, str, str | None]) -> int:
    found = _common_index.get(triple)
    if found is None:
        if len(_common) >= _COMMON_MAX:
            return -1
        found = _common_index[triple] = len(_common)
        _common.append((sys.intern(triple[0]), sys.intern(triple[1]), triple[2]))
    return found


def pack_record(job: JobRecord) -> bytes | None:
    """A held job's record as compact msgpack bytes (without its id: the holder has that),
    or None if a value won't pack."""
    data = job.to_dict()
    del data["id"]
    common = _common_id((job.name, job.distributor, job.node))
    if common >= 0:
        del data["name"]
        data.pop("distributor", None)
        data.pop("node", None)
    index = _FIELD_INDEX
    try:
        packed: bytes = msgpack.packb(
            [common, {index.get(key, key): value for key, value in data.items()}],
            use_bin_type=True,
        )
    except (TypeError, ValueError, OverflowError):
        return None
    return packed


def unpack_record(packed: bytes, job_id: str) -> JobRecord:
    """The record `pack_record` packed (a fresh one each call)."""
    common, encoded = msgpack.unpackb(packed, raw=False, strict_map_key=False)
    names = _PACKED_FIELDS
    data = {names[key] if isinstance(key, int) else key: value for key, value in encoded.items()}
    data["id"] = job_id
    if common >= 0:
        data["name"], data["distributor"], data["node"] = _common[common]
    return JobRecord.from_dict(data)


def peek_lease(packed: bytes) -> tuple[int, str]:
    """(lease, distributor) of a packed record, without building it."""
    common, encoded = msgpack.unpackb(packed, raw=False, strict_map_key=False)
    distributor = _common[common][1] if common >= 0 else encoded.get(_FIELD_INDEX["distributor"])
    return int(encoded.get(_FIELD_INDEX["lease"], 0)), str(distributor or "")
