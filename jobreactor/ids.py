"""Job ids: 15 characters, unique without coordination, in enqueue order within a reactor.

An id is 50 random bits drawn once per reactor and process (10 characters), then a counter
(5 characters, 25 bits). Ids need only never collide: two reactors sharing a storage draw the
same prefix with odds of one in 2**50, with no syscall per job; a forked child draws its own.

The alphabet is 32 characters, digits and lowercase letters in ASCII order: ids of one reactor
sort in enqueue order; they are safe in URLs, Redis keys, file names and on a command line (no
leading "-"); and no two differ only in case (the dashboard's search ignores case).

Why 15: a str of up to 15 ASCII characters is a 64-byte allocation, 16 to 31 characters take
80 (the 24 hex characters of before did): 16 bytes less per job in the app, on a node and in
Redis, and 9 less on the wire.
"""

from __future__ import annotations

import itertools
import os
from typing import Final

ALPHABET: Final = "0123456789abcdefghijklmnopqrstuv"
# Two characters for every 10-bit value: a counter is three lookups, not five divisions.
_PAIRS: Final = tuple(a + b for a in ALPHABET for b in ALPHABET)
_NARROW_LIMIT: Final = 1 << 25
# Past 2**25 jobs of one reactor the counter takes "~" and 13 characters (65 bits), which sorts
# after every 5-character counter; such ids are 24 characters, as long as they all were before.
_WIDE_MARK: Final = "~"


def random_prefix(random_bytes: bytes) -> str:
    """10 characters from the first 50 bits of `random_bytes` (8 of them)."""
    bits = int.from_bytes(random_bytes[:8], "big") >> 14
    return "".join(ALPHABET[(bits >> shift) & 31] for shift in range(45, -1, -5))


def counter_text(n: int) -> str:
    """`n` (>= 0) as a fixed-width counter that sorts as the numbers do."""
    if n < _NARROW_LIMIT:
        return ALPHABET[n >> 20] + _PAIRS[(n >> 10) & 1023] + _PAIRS[n & 1023]
    rest = ALPHABET[(n >> 60) & 31] + "".join(
        _PAIRS[(n >> shift) & 1023] for shift in range(50, -1, -10)
    )
    return _WIDE_MARK + rest


class JobIds:
    """The ids one reactor gives its jobs (`next_id()`), from any thread."""

    __slots__ = ("_counter", "prefix")

    def __init__(self, random_bytes: bytes | None = None) -> None:
        self.prefix = random_prefix(os.urandom(8) if random_bytes is None else random_bytes)
        self._counter = itertools.count(1)  # next() on a count is atomic under the GIL

    def next_id(self) -> str:
        n = next(self._counter)
        if n < _NARROW_LIMIT:
            return f"{self.prefix}{ALPHABET[n >> 20]}{_PAIRS[(n >> 10) & 1023]}{_PAIRS[n & 1023]}"
        return self.prefix + counter_text(n)
