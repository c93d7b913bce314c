"""The frame MAC's CPU cost per job (issue 18), measured on the frames a no-op run sends.

    python -m bench.mac_cost

Builds the frames of a no-op job's trip as the code batches them (Jobs frames of 512 jobs,
one Ack and one Reports frame per 512 jobs as a busy node coalesces them), then times sealing
and opening them with the session keys: the extra work each side does per job.
"""

from __future__ import annotations

import os
import time

from jobreactor.protocol import (
    DISTRIBUTOR_TO_NODE,
    Ack,
    FrameDecoder,
    FrameOpener,
    FrameSealer,
    Jobs,
    ReportItem,
    Reports,
    encode,
    session_key,
)

BATCH = 512


def frames() -> list[bytes]:
    jobs = [
        (1000 + i, {"id": f"host:123:{i:08x}", "name": "noop", "args": {}, "run_at": 1.7e9})
        for i in range(BATCH)
    ]
    reports = [ReportItem(f"host:123:{i:08x}", 1000 + i, "success", True, {}) for i in range(BATCH)]
    return [
        encode(Jobs(jobs)),
        encode(Ack([1000 + i for i in range(BATCH)], BATCH)),
        encode(Reports(0, reports)),
    ]


def per_job_us(rounds: int = 400) -> tuple[float, float]:
    """(seal + open µs per job, plain decode µs per job for comparison)."""
    key = session_key(b"secret", "w1", b"n" * 16, b"d" * 16, DISTRIBUTOR_TO_NODE)
    plain = frames()
    best_mac = best_plain = float("inf")
    for _ in range(5):
        sealer, opener = FrameSealer(key), FrameOpener(key)
        started = time.perf_counter()
        for _ in range(rounds):
            for frame in plain:
                opener.open(sealer.seal(frame)[4:])
        best_mac = min(best_mac, time.perf_counter() - started)
        decoder = FrameDecoder()
        started = time.perf_counter()
        for _ in range(rounds):
            decoder.feed(b"".join(plain))
            list(decoder.messages())
        best_plain = min(best_plain, time.perf_counter() - started)
    jobs = rounds * BATCH
    return best_mac / jobs * 1e6, best_plain / jobs * 1e6


if __name__ == "__main__":
    mac, plain = per_job_us()
    print(f"load average {os.getloadavg()[0]:.2f}")
    print(f"MAC (seal + open, both directions of one job's trip): {mac:.3f} µs/job")
    print(f"for scale, decoding those frames without MAC: {plain:.3f} µs/job")
