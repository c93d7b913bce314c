"""Oversized messages: frames split to fit max_frame_bytes; a result too big is reported as such."""

from __future__ import annotations

from typing import Any

import pytest

from jobreactor import Reactor, Registry
from jobreactor.errors import LocalProtocolError
from jobreactor.protocol import FrameDecoder, Jobs, encode_split

pytestmark = pytest.mark.timeout(60)


def test_encode_split_halves_until_each_frame_fits() -> None:
    jobs = [(i, {"id": f"j{i}", "name": "n", "args": {"blob": "x" * 1000}}) for i in range(64)]
    frames = encode_split(jobs, Jobs, 10_000)
    assert len(frames) > 1
    decoder = FrameDecoder(max_frame_bytes=10_000)
    decoder.feed(b"".join(frames))
    out = [entry for message in decoder.messages() for entry in message.jobs]  # type: ignore[attr-defined]
    assert [lease for lease, _ in out] == list(range(64))
    with pytest.raises(LocalProtocolError):
        encode_split(jobs[:1], Jobs, 100)  # alone too big, and nothing may shrink it


def test_big_jobs_and_a_too_big_result_over_a_small_frame_limit() -> None:
    limit = 256 * 1024
    reactor = Reactor(logger_method="ERROR", max_frame_bytes=limit, log_job_processing=False)
    reactor.run()
    try:
        host, port = reactor.start_distributor("127.0.0.1", 0)
        registry = Registry()

        @registry.job("grow")
        def grow(args: dict[str, Any]) -> None:
            args["result"] = "y" * (2 * limit)  # its final args can't fit in a frame

        registry.job("echo")(lambda args: None)
        reactor.start_node("w", "memory", [(host, port)], registry=registry)
        blob = "x" * (100 * 1024)  # three of these overflow one frame: the batch is split
        handles = [reactor.enqueue("echo", {"i": i, "blob": blob}) for i in range(20)]
        assert [h.result(20)["i"] for h in handles] == list(range(20))  # type: ignore[union-attr]
        out = reactor.enqueue("grow", {}).result(20)  # type: ignore[union-attr]
        assert out["error"]["class"] == "ReportTooLarge"
        assert reactor.enqueue("echo", {"after": "still connected"}).result(20)  # type: ignore[union-attr]
        with pytest.raises(ValueError, match="max_frame_bytes"):
            reactor.enqueue("echo", {"blob": "z" * limit})  # refused at enqueue, nothing sent
    finally:
        reactor.stop(timeout=10)
