"""Encode/decode cost of the hot wire messages (issue 20: the schema-driven codec).

    python -m bench.protocol_codec [--rounds N]

The messages on a no-op job's trip: a Jobs frame (dispatch), a Reports frame (the outcome) and
an Ack (credit back), each as a busy link batches them (512 per frame) and as a quiet one sends
them (one per frame). Times `encode` (message -> frame) and `decode_body` (frame body ->
checked message), best of 5 in CPU time, in nanoseconds per item (per job; per frame for a
lone credit Ack). Then the field checks alone, on the already unpacked frames (the part the
schema generates; msgpack's own unpacking is the same code in every tree). The public protocol
API is used, and for the checks alone the decoder of either tree, so the same file measures
any tree:

    PYTHONPATH=/work/wt/pre20 python -m bench.protocol_codec   # before
    PYTHONPATH=.               python -m bench.protocol_codec  # after
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

import msgpack

from jobreactor.protocol import (
    Ack,
    Jobs,
    Message,
    ReportItem,
    Reports,
    decode_body,
    encode,
)

BATCH = 512


def _job(i: int) -> tuple[int, dict[str, object]]:
    return 1000 + i, {"id": f"host:123:{i:08x}", "name": "noop", "args": {}, "run_at": 1.7e9}


def _report(i: int) -> ReportItem:
    return ReportItem(f"host:123:{i:08x}", 1000 + i, "success", True, {})


def samples() -> dict[str, tuple[Message, int]]:
    """Name -> (message, items it carries)."""
    return {
        f"Jobs x{BATCH}": (Jobs([_job(i) for i in range(BATCH)]), BATCH),
        "Jobs x1": (Jobs([_job(0)]), 1),
        f"Reports x{BATCH}": (Reports(7, [_report(i) for i in range(BATCH)]), BATCH),
        "Reports x1": (Reports(7, [_report(0)]), 1),
        f"Ack x{BATCH}": (Ack([1000 + i for i in range(BATCH)], BATCH), BATCH),
        "Ack (credit only)": (Ack([], 4), 1),
    }


def _best_ns(run: Callable[[], object], repeat: int, per: int) -> float:
    best = float("inf")
    for _ in range(5):
        started = time.process_time_ns()
        for _ in range(repeat):
            run()
        best = min(best, time.process_time_ns() - started)
    return best / repeat / per


def measure(rounds: int) -> list[tuple[str, float, float]]:
    """(name, encode ns per item, decode ns per item) for each sample."""
    rows = []
    for name, (message, items) in samples().items():
        body = encode(message)[4:]
        assert decode_body(body) == message
        repeat = max(1, rounds * 50 // items)
        enc = _best_ns(lambda m=message: encode(m), repeat, items)  # type: ignore[misc]
        dec = _best_ns(lambda b=body: decode_body(b), repeat, items)  # type: ignore[misc]
        rows.append((name, enc, dec))
    return rows


def _field_checks() -> Callable[[list[Any]], object]:
    """The decoder of an unpacked array: generated (issue 20) or hand-written (before)."""
    from jobreactor.protocol import decoding

    generated = getattr(decoding, "_DECODERS", None)
    if generated is not None:
        return lambda obj: generated[obj[0]](obj)
    return lambda obj: decoding._decode_fields(obj[0], obj[1:])  # type: ignore[attr-defined]


def measure_checks(rounds: int) -> list[tuple[str, float]]:
    """(name, ns per item of the field checks alone) for the batched samples."""
    checks, rows = _field_checks(), []
    for name, (message, items) in samples().items():
        if items > 1:
            obj = msgpack.unpackb(encode(message)[4:])
            repeat = max(1, rounds * 50 // items)
            rows.append((name, _best_ns(lambda o=obj: checks(o), repeat, items)))  # type: ignore[misc]
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args(argv)
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'message':<20} {'encode ns/item':>15} {'decode ns/item':>15}")
    for name, enc, dec in measure(args.rounds):
        print(f"{name:<20} {enc:>15.0f} {dec:>15.0f}")
    print(f"{'field checks only':<20} {'ns/item':>15}")
    for name, ns in measure_checks(args.rounds):
        print(f"{name:<20} {ns:>15.0f}")


if __name__ == "__main__":
    main()
