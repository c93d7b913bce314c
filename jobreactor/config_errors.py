"""Config problems in our words: the file, the key, what we expected, an example, a did-you-mean.

pydantic's own messages ("Input should be a valid dictionary or instance of
DistributorAddress") speak of its internals; a user editing node.toml needs
`distributors[0] = "localhost": expected "host:port", e.g. distributors = ["127.0.0.1:5000"]`.
One message per key: a key that is both a node key and a setting (concurrency) is checked
twice by the models but reported once.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable
from typing import Any, Final

from pydantic import ValidationError

# Examples for keys whose default is unset or says nothing; others show their default.
_EXAMPLES: Final[dict[str, str]] = {
    "name": '"worker_1"',
    "distributors": '["127.0.0.1:5000"]',
    "storage": '"memory"',
    "host": '"127.0.0.1"',
    "port": "5000",
    "advertise": '"app.internal:5000"',
    "job_directory": '"reactor_jobs"',
    "redis_url": '"redis://localhost:6379"',
    "concurrency": "100",
    "secret": '"a long random string"',
    "max_run_time": "30.0",
    "tls_ca": '"ca.pem"',
    "tls_cert": '"node.pem"',
    "tls_key": '"node.key"',
    "logger_method": '"INFO"',
    "retry_strategy": '"linear"',
}

_EXPECTED: Final[dict[str, str]] = {
    "int_parsing": "a whole number",
    "int_type": "a whole number",
    "int_from_float": "a whole number",
    "float_parsing": "a number",
    "float_type": "a number",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "string_type": "a string in quotes",
    "tuple_type": "a list",
    "list_type": "a list",
}

_BOUNDS: Final[dict[str, str]] = {
    "greater_than_equal": "≥ {ge}",
    "greater_than": "> {gt}",
    "less_than_equal": "≤ {le}",
    "less_than": "< {lt}",
}


def _toml(value: Any) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def example(key: str, defaults: dict[str, Any]) -> str:
    if key in _EXAMPLES:
        return f"{key} = {_EXAMPLES[key]}"
    default = defaults.get(key)
    return f"{key} = {_toml(default)}" if default is not None else ""


def _expected(error: dict[str, Any], key: str) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "too_short":
        return "at least one entry"
    if key == "distributors":
        if len(error["loc"]) > 1:
            return '"host:port" (the port a whole number 0-65535)'
        return 'a list of "host:port"'
    if kind in _BOUNDS:
        bound = _BOUNDS[kind].format(**ctx)
        return f"a number {bound}"
    if kind == "literal_error":
        return f"one of {ctx.get('expected', '')}"
    return _EXPECTED.get(kind, str(error["msg"]))


def _where(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p != "settings"]
    out = parts[0] if parts else "(the file)"
    for part in parts[1:]:
        out += f"[{part}]" if part.isdigit() else f".{part}"
    return out


def _problem(
    error: dict[str, Any], known: Iterable[str], defaults: dict[str, Any], env: set[str]
) -> tuple[str, str]:
    loc = tuple(p for p in error["loc"] if p != "settings")
    key = str(loc[0]) if loc else ""
    where = _where(loc)
    if error["type"] == "extra_forbidden":
        close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return key, f"unknown key {key!r}{hint}"
    if error["type"] == "missing":
        shown = example(key, defaults)
        return key, f"{where} is required" + (f", e.g. {shown}" if shown else "")
    text = f"{where} = {_toml(error.get('input'))}"
    if key in env:
        text += f" (from the environment: JOBREACTOR_{key.upper()})"
    if error["type"] == "value_error":  # our own validators say it in full
        text += f": {error.get('ctx', {}).get('error', error['msg'])}"
    else:
        text += f": expected {_expected(error, key)}"
    shown = example(key, defaults)
    if shown:
        text += f", e.g. {shown}"
    return key, text


def describe(
    exc: ValidationError,
    source: str,
    known: Iterable[str],
    defaults: dict[str, Any],
    env: Iterable[str] = (),
) -> str:
    """One line per key at fault, each naming `source`: the text of a ConfigError."""
    known, env_keys = sorted(set(known)), set(env)
    seen: dict[str, str] = {}
    for error in exc.errors():
        key, text = _problem(dict(error), known, defaults, env_keys)
        seen.setdefault(key, text)  # the first problem of a key says it; no repeats
    return "\n".join(f"{source}: {text}" for text in seen.values())
