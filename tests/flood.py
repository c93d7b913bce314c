"""A flood of anonymous connections that send nothing and reconnect at once when closed
(issue 18's slot-starving attack). `python -m tests.flood PORT SECONDS [COROUTINES]`; prints
how many connections it made. Used by tests/test_hostile_round2.py and bench/attacks2.py."""

from __future__ import annotations

import asyncio
import contextlib
import sys


async def _one(port: int, stop: asyncio.Event, made: list[int]) -> None:
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.001)  # connect failed: try again almost at once, not in a spin
            continue
        made[0] += 1
        with contextlib.suppress(OSError, TimeoutError):  # held until closed, or 0.2 s
            await asyncio.wait_for(reader.read(1 << 16), 0.2)
        writer.close()


async def flood(port: int, seconds: float, coroutines: int = 160) -> int:
    stop = asyncio.Event()
    made = [0]
    tasks = [asyncio.ensure_future(_one(port, stop, made)) for _ in range(coroutines)]
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.wait(tasks, timeout=5)
    for task in tasks:
        task.cancel()
    return made[0]


if __name__ == "__main__":
    port, seconds = int(sys.argv[1]), float(sys.argv[2])
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 160
    print(asyncio.run(flood(port, seconds, count)), flush=True)
