"""How long a node takes to start using a new distributor found by discovery (issue 9).

    python -m bench.discovery_pickup [--starts 20]

A private redis-server; one node process (`jobreactor node --discovery-url ...`, no static
distributors). This process then starts a distributor `--starts` times, each on a new reactor
and port 0 (a web worker coming up), and times from `start_distributor` returning (it has
registered and announced `join`) to the node's handshake completing on it (`wait_for_node`).
Default registry timings (beat 5 s): the figure is what pub/sub gives, not the beat.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

from bench.harness import RedisServer, wait_until
from bench.report import percentile
from jobreactor import Reactor
from jobreactor.discovery import live_members
from jobreactor.discovery.registry import connect


def _node(workdir: Path, url: str) -> subprocess.Popen[bytes]:
    jobs = workdir / "jobs"
    jobs.mkdir()
    (jobs / "noop.py").write_text(
        "from jobreactor import job\n\n@job('noop')\ndef noop(args):\n    pass\n"
    )
    config = workdir / "node.toml"
    config.write_text(
        f'name = "bench"\ndiscovery_url = "{url}"\njob_directory = "{jobs}"\n'
        'logger_method = "WARNING"\n'
    )
    command = [sys.executable, "-m", "jobreactor", "node", "--config", str(config)]
    return subprocess.Popen(command, stderr=(workdir / "node.log").open("wb"))


def _registered(url: str) -> bool:
    async def read() -> bool:
        client = connect(url)
        try:
            return bool(await live_members(client, kind="node"))
        finally:
            await client.aclose()

    return asyncio.run(read())


def measure(starts: int) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        redis = RedisServer(workdir)
        node = _node(workdir, redis.url())
        samples: list[float] = []
        try:
            # Steady state: the node is up and listening before the first distributor starts.
            wait_until(partial(_registered, redis.url()), 30, "the node to register")
            for _ in range(starts):
                reactor = Reactor(logger_method="WARNING", discovery_url=redis.url())
                reactor.run()
                began = time.perf_counter()
                reactor.start_distributor("127.0.0.1", 0)
                reactor.wait_for_node("bench", timeout=30)
                samples.append(time.perf_counter() - began)
                reactor.stop(timeout=5)
        except BaseException:
            print((workdir / "node.log").read_text()[-3000:], file=sys.stderr)
            raise
        finally:
            node.terminate()
            node.wait(20)
            redis.stop()
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.discovery_pickup")
    parser.add_argument("--starts", type=int, default=20)
    args = parser.parse_args(argv)
    ms = [s * 1000 for s in measure(args.starts)]
    summary = {
        "starts": len(ms),
        "p50_ms": round(percentile(ms, 50), 2),
        "max_ms": round(max(ms), 2),
        "samples_ms": [round(x, 2) for x in ms],
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
