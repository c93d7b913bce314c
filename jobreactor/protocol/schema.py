"""The wire schema: each message's fields, types and bounds, declared once, on the message.

A message is a dataclass whose fields are annotated with a `Kind` (`node_name: Annotated[str,
Str(MAX_NAME_CHARS)]`, often through an alias such as `Counted`). The field order is the
order in the msgpack array after the tag; the kind is the field's type and bounds. From that
one declaration `compile_codec` builds, at import time:

- the encoder: message -> `[tag, field, ...]`,
- the decoder: the unpacked array -> a checked message, or MalformedFrame naming the field,
- the msgpack limits its frames are unpacked with (derived from the kinds' bounds).

The encoder and decoder are generated as Python source with every field's check inlined (one
combined test on the happy path; the precise error is worked out only once it failed): a
generic loop calling each field kind's `check` cost three times as much per report item
(1.3 µs against 0.43 µs, issue 20), and jobs, reports and credit travel this way on every
job's trip. The source is built at import time from these declarations only: no byte from a
peer is ever part of generated code (peer data is checked by it, never evaluated). Nothing here
unpacks or does I/O.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Collection
from typing import Any, Final

from jobreactor.errors import MalformedFrame, ProtocolVersionMismatch

MAX_WIRE_INT: Final = 2**63 - 1
NAME_BYTES: Final = 4096  # msgpack's bound on one string of a kind without job data
UNBOUNDED: Final = -1  # a msgpack limit derived from the frame size
Limits = tuple[int, int, int, int]  # max_str_len, max_bin_len, max_array_len, max_map_len
Decoder = Callable[[list[Any]], Any]


class _Gen:
    """The namespace generated code runs in: constants and helpers get a name each."""

    def __init__(self) -> None:
        self.ns: dict[str, Any] = {"MalformedFrame": MalformedFrame, "_new": tuple.__new__}
        self.sources: list[str] = []  # what was generated, for reading (Codec.source)

    def name(self, value: Any) -> str:
        key = f"_c{len(self.ns)}"
        self.ns[key] = value
        return key

    def define(self, name: str, source: str) -> Any:
        self.sources.append(source)
        exec(
            compile(source, f"<wire schema: {name}>", "exec"), self.ns
        )  # the source is generated here, from the schema
        return self.ns[name]


class Kind:
    """How one field travels. `valid` is an inline test (true: valid; None: a composite kind,
    which checks and converts in `decoded`, the expression of the decoded value); `check`
    raises the precise error. `limits`: what msgpack must allow for a value of this kind."""

    limits: Limits = (0, 0, 0, 0)

    def valid(self, v: str, gen: _Gen) -> str | None:
        return None

    def check(self, value: Any, what: str) -> None:
        raise MalformedFrame(f"{what} is not valid")

    def decoded(self, v: str, gen: _Gen, what: str) -> str:
        return v


class Int(Kind):
    """Any integer (not a bool)."""

    def valid(self, v: str, gen: _Gen) -> str:
        return f"type({v}) is int"

    def check(self, value: Any, what: str) -> None:
        if type(value) is not int:
            raise MalformedFrame(f"{what} has the wrong type ({type(value).__name__})")


class Count(Kind):
    """A lease, sequence number or credit count: an int in low..2**63-1."""

    def __init__(self, low: int = 0) -> None:
        self.low = low

    def valid(self, v: str, gen: _Gen) -> str:
        return f"type({v}) is int and {self.low} <= {v} <= {MAX_WIRE_INT}"

    def check(self, value: Any, what: str) -> None:
        if type(value) is not int or not self.low <= value <= MAX_WIRE_INT:
            raise MalformedFrame(f"{what} must be an integer in {self.low}..2**63-1, got {value!r}")


class Version(Kind):
    """The protocol version, first field of the hello of each side. It is read before the
    rest of the frame is unpacked (`version_of`), so a peer whose hello has another layout
    still gets the upgrade error; `sender` says which side sent it."""

    def __init__(self, current: int, sender: str) -> None:
        self.current, self.sender = current, sender

    def valid(self, v: str, gen: _Gen) -> str:
        return f"type({v}) is int and {v} == {self.current}"

    def check(self, value: Any, what: str) -> None:
        if type(value) is not int:
            raise MalformedFrame(f"{what} has the wrong type ({type(value).__name__})")
        if value != self.current:
            raise self.mismatch(value)

    def mismatch(self, peer: int) -> ProtocolVersionMismatch:
        older = "node" if (peer < self.current) == (self.sender == "node") else "app"
        side = {"node": "the node", "app": "the app (jobreactor on the distributor side)"}
        receiver = "distributor" if self.sender == "node" else "node"
        return ProtocolVersionMismatch(
            f"the {self.sender} speaks protocol version {peer}, the {receiver} speaks "
            f"{self.current}: upgrade {side[older]} so both run the same jobreactor version"
        )


class Str(Kind):
    def __init__(self, max_chars: int | None = None) -> None:
        self.max_chars = max_chars
        self.limits = (NAME_BYTES, 0, 0, 0)

    def valid(self, v: str, gen: _Gen) -> str:
        short = "" if self.max_chars is None else f" and len({v}) <= {self.max_chars}"
        return f"type({v}) is str{short}"

    def check(self, value: Any, what: str) -> None:
        if type(value) is not str:
            raise MalformedFrame(f"{what} has the wrong type ({type(value).__name__})")
        if self.max_chars is not None and len(value) > self.max_chars:
            raise MalformedFrame(f"{what} is limited to {self.max_chars} characters")


class OneOf(Str):
    """A string from a fixed set (a command op, a report outcome)."""

    def __init__(self, values: Collection[str]) -> None:
        super().__init__()
        self.values = frozenset(values)

    def valid(self, v: str, gen: _Gen) -> str:
        return f"type({v}) is str and {v} in {gen.name(self.values)}"

    def check(self, value: Any, what: str) -> None:
        if type(value) is not str or value not in self.values:
            raise MalformedFrame(f"unknown {what} {value!r}")


class Bytes(Kind):
    def __init__(self, max_len: int) -> None:
        self.limits = (0, max_len, 0, 0)

    def valid(self, v: str, gen: _Gen) -> str:
        return f"type({v}) is bytes"

    def check(self, value: Any, what: str) -> None:
        if type(value) is not bytes:
            raise MalformedFrame(f"{what} has the wrong type ({type(value).__name__})")


class Bool(Kind):
    def valid(self, v: str, gen: _Gen) -> str:
        return f"type({v}) is bool"

    def check(self, value: Any, what: str) -> None:
        if type(value) is not bool:
            raise MalformedFrame(f"{what} has the wrong type ({type(value).__name__})")


_ANY_DATA: Final = (UNBOUNDED, UNBOUNDED, UNBOUNDED, UNBOUNDED)


class Data(Kind):
    """A map of job data (args): any msgpack content, bounded by the frame size only."""

    limits = _ANY_DATA

    def valid(self, v: str, gen: _Gen) -> str:
        return f"type({v}) is dict"

    def check(self, value: Any, what: str) -> None:
        if type(value) is not dict:
            raise MalformedFrame(f"{what} must be a map")


class JobRecord(Data):
    """A job record: a map with string 'id' and 'name' and a map 'args' ({} if `empty_ok`)."""

    def __init__(self, empty_ok: bool = False) -> None:
        self.empty_ok = empty_ok

    def valid(self, v: str, gen: _Gen) -> str:
        inner = (
            f'type({v}.get("id")) is str and type({v}.get("name")) is str '
            f'and type({v}.get("args")) is dict'
        )
        return (
            f"type({v}) is dict and (not {v} or {inner})"
            if self.empty_ok
            else (f"type({v}) is dict and {inner}")
        )

    def check(self, value: Any, what: str) -> None:
        super().check(value, what)
        if (value or not self.empty_ok) and (
            type(value.get("id")) is not str
            or type(value.get("name")) is not str
            or type(value.get("args")) is not dict
        ):
            raise MalformedFrame("a job record needs string 'id' and 'name' and a dict 'args'")


class ListOf(Kind):
    """A list of items of one simple kind (names, leases), at most `max_items` of them."""

    def __init__(self, item: Kind, max_items: int | None = None) -> None:
        self.item, self.max_items = item, max_items
        bound = UNBOUNDED if max_items is None else max_items
        self.limits = _widest([item.limits, (0, 0, bound, 0)])

    def valid(self, v: str, gen: _Gen) -> str:
        item = self.item.valid("x", gen)
        short = "" if self.max_items is None else f" and len({v}) <= {self.max_items}"
        return f"type({v}) is list{short} and all({item} for x in {v})"

    def check(self, value: Any, what: str) -> None:
        if type(value) is not list:
            raise MalformedFrame(f"{what} must be a list")
        if self.max_items is not None and len(value) > self.max_items:
            raise MalformedFrame(f"{what}: at most {self.max_items} items")
        for item in value:
            self.item.check(item, f"each of {what}")


class Entries(Kind):
    """A list of fixed-size entries, each a list on the wire and a tuple (or the NamedTuple
    `into`) once decoded: held jobs, job dispatches, reports."""

    def __init__(
        self, fields: dict[str, Kind], into: type | None = None, max_items: int | None = None
    ) -> None:
        self.fields, self.into, self.max_items = fields, into, max_items
        bound = UNBOUNDED if max_items is None else max(max_items, len(fields))
        self.limits = _widest([*(k.limits for k in fields.values()), (0, 0, bound, 0)])

    def shape(self) -> str:
        return "[" + ", ".join(self.fields) + "]"

    def decoded(self, v: str, gen: _Gen, what: str) -> str:
        helper = f"_entries{len(gen.ns)}"
        names = [f"e{i}" for i in range(len(self.fields))]
        tests = [k.valid(n, gen) for k, n in zip(self.fields.values(), names, strict=True)]
        test = " and ".join(f"({t})" for t in tests if t) or "True"
        build = f"_new({gen.name(self.into)}, item)" if self.into else f"({', '.join(names)},)"
        longer = "" if self.max_items is None else f" or len(value) > {self.max_items}"
        explain_list = gen.name(lambda value: self._explain_list(value, what))
        explain_item = gen.name(lambda item: _explain(self.fields, item, what))
        source = f"""
def {helper}(value):
    if type(value) is not list{longer}:
        {explain_list}(value)
    out = []
    append = out.append
    for item in value:
        if type(item) is not list or len(item) != {len(names)}:
            raise MalformedFrame("each of {what} must be {self.shape()}")
        {", ".join(names)}, = item
        if not ({test}):
            {explain_item}(item)
        append({build})
    return out
"""
        gen.define(helper, source)
        return f"{helper}({v})"

    def _explain_list(self, value: Any, what: str) -> None:
        if type(value) is not list:
            raise MalformedFrame(f"{what} must be a list of {self.shape()}")
        raise MalformedFrame(f"{what}: at most {self.max_items} items")


def _explain(kinds: dict[str, Kind], values: list[Any], what: str = "") -> None:
    """The happy-path test failed: raise the precise error of the first bad field."""
    for (name, kind), value in zip(kinds.items(), values, strict=True):
        kind.check(value, f"{what} {name}".strip())
    raise MalformedFrame(f"{what or 'message'} is not valid")  # pragma: no cover


def _widest(all_limits: list[Limits]) -> Limits:
    """Per limit: unbounded if any is, else the largest."""
    out = []
    for column in zip(*all_limits, strict=True):
        out.append(UNBOUNDED if UNBOUNDED in column else max(column))
    return (out[0], out[1], out[2], out[3])


@dataclasses.dataclass(frozen=True)
class Codec:
    """What `compile_codec` made of one message class."""

    decode: Decoder  # the unpacked array [tag, *fields] -> the checked message
    encode: Callable[[Any], list[Any]]  # the message -> [tag, *fields]
    limits: Limits
    version: Version | None  # the first field, when it is the protocol version
    source: str  # the generated code, to read: print(CODECS[Reports.TAG].source)


def kinds_of(cls: type) -> dict[str, Kind]:
    """Field name -> Kind, in wire order, from the class's `Annotated` fields."""
    hints = typing.get_type_hints(cls, include_extras=True)
    names = (
        [f.name for f in dataclasses.fields(cls)]
        if dataclasses.is_dataclass(cls)
        else list(cls._fields)  # type: ignore[attr-defined]  # a NamedTuple
    )
    kinds = {}
    for name in names:
        found = [m for m in getattr(hints[name], "__metadata__", ()) if isinstance(m, Kind)]
        if len(found) != 1:
            raise TypeError(f"{cls.__name__}.{name} needs exactly one wire Kind annotation")
        kinds[name] = found[0]
    return kinds


def compile_codec(cls: type, tag: int, check_across: bool = False) -> Codec:
    """Generate the encoder and decoder of message class `cls` (see the module docstring).
    `check_across`: the decoder calls the message's `check_across()` (checks across fields)."""
    kinds, gen = kinds_of(cls), _Gen()
    names = [f"f{i}" for i in range(len(kinds))]
    label = cls.__name__
    tests, values = [], []
    for (field, kind), var in zip(kinds.items(), names, strict=True):
        valid = kind.valid(var, gen)
        if valid:
            tests.append(f"({valid})")
        values.append(kind.decoded(var, gen, field.replace("_", " ")))
    gen.ns["_explain_fields"] = lambda f: _explain(kinds, f[1:])
    unpack = f"    _, {', '.join(names)}, = f\n" if names else ""
    check = f"    if not ({' and '.join(tests)}):\n        _explain_fields(f)\n" if tests else ""
    built = f"{gen.name(cls)}({', '.join(values)})"
    finish = (
        f"    m = {built}\n    m.check_across()\n    return m\n"
        if check_across
        else f"    return {built}\n"
    )
    decode = gen.define(
        f"decode_{label}",
        f"def decode_{label}(f):\n"
        f"    if len(f) != {len(names) + 1}:\n"
        f'        raise MalformedFrame(f"message {tag} ({label}) needs {len(names)} fields, '
        f'got {{len(f) - 1}}")\n{unpack}{check}{finish}',
    )
    fields = "".join(f", m.{field}" for field in kinds)
    encode = gen.define(f"encode_{label}", f"def encode_{label}(m):\n    return [{tag}{fields}]\n")
    top: Limits = (0, 0, len(names) + 1, 0)
    limits = _widest([top, *(k.limits for k in kinds.values())])
    first = next(iter(kinds.values()), None)
    version = first if isinstance(first, Version) else None
    return Codec(decode, encode, limits, version, "\n".join(gen.sources))
