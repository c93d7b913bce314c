"""Job ids (jobreactor/ids.py): short, unique per reactor, in enqueue order, URL/CLI safe."""

from __future__ import annotations

import sys

from jobreactor.dashboard.views import _PATH_SAFE
from jobreactor.ids import ALPHABET, JobIds, counter_text, random_prefix


def test_ids_are_15_characters_unique_and_in_enqueue_order() -> None:
    ids = JobIds()
    made = [ids.next_id() for _ in range(10_000)]
    assert len(set(made)) == len(made)
    assert made == sorted(made)
    assert {len(job_id) for job_id in made} == {15}
    assert sys.getsizeof(made[0]) <= 64  # one 64-byte allocation each
    assert all(_PATH_SAFE.fullmatch(job_id) for job_id in made)


def test_two_reactors_draw_different_prefixes_lowercase_only() -> None:
    assert JobIds().prefix != JobIds().prefix
    for first in range(256):
        prefix = random_prefix(bytes([first]) + b"\xff" * 7)
        assert len(prefix) == 10
        assert prefix == prefix.lower()
        assert not prefix.startswith("-")
    assert random_prefix(b"\x00" * 8) == "0" * 10
    assert random_prefix(b"\xff" * 8) == "v" * 10


def test_the_counter_sorts_as_numbers_do_past_its_narrow_width() -> None:
    assert list(ALPHABET) == sorted(ALPHABET)
    numbers = [0, 1, 31, 32, 1023, 1024, 2**20, 2**25 - 1, 2**25, 2**48, 2**65 - 1]
    texts = [counter_text(n) for n in numbers]
    assert texts == sorted(texts)
    assert len(set(texts)) == len(texts)
    assert [len(text) for text in texts[:8]] == [5] * 8
    assert {len(text) for text in texts[8:]} == {14}
