"""Hostile and mistaken peers against a distributor (issue 10): what they cost, as a table.

    python -m bench.attacks [--code DIR] [--only NAME ...]

`--code DIR` runs the distributor (and the CLI nodes) from another copy of the `jobreactor`
package (e.g. an export of an older commit) to measure before/after on the same machine, back
to back. The distributor runs in its own process (with one in-process node, "probe", that
runs a no-op job to measure latency); the attacks run from this process over raw sockets.

Attacks:
  big-frames  150 anonymous connections each announce and send 16 MiB - 1 of one frame
  empty-maps  one 17 MB frame [1, [{} x 16,777,000]] from an anonymous peer
  stall       probe-job latency while 3 anonymous clients each send 4 such frames
  idle        2,000 idle anonymous connections: how many are kept, how many log lines
  namesakes   two CLI nodes both named "dup" and 600 jobs of 0.3 s, for 20 s
  authed-maps what is left for a peer that passed the handshake (no secret set here): one
              16 MiB Reports frame [8, 1, [{} x 16,777,000]] after a Hello
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

from bench.attack_kit import Results, TargetProcess, main, run_each

MAX_FRAME = 16 * 1024 * 1024
EMPTY_MAPS = 16_777_000


# --- the target process: distributor + probe node, driven over stdin -------------------------


def target(options: argparse.Namespace) -> None:
    import logging

    from jobreactor import Reactor, Registry

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    reactor = Reactor(logger_method="WARNING", log_job_processing=False)
    reactor.run()
    registry = Registry()

    @registry.job("noop")
    def noop(args: dict[str, Any]) -> None:
        pass

    _, port = reactor.start_distributor("127.0.0.1", 0)
    reactor.start_node("probe", registry=registry)
    print(port, flush=True)
    for line in sys.stdin:
        command, *rest = line.split()
        if command == "probe":
            latencies = []
            deadline = time.monotonic() + float(rest[0])
            while time.monotonic() < deadline:
                start = time.perf_counter()
                handle = reactor.enqueue("noop", {})
                assert handle is not None
                handle.result(timeout=60)
                latencies.append(time.perf_counter() - start)
                time.sleep(0.01)
            print(json.dumps(latencies), flush=True)
        elif command == "enqueue":  # namesakes: n jobs of `slow`
            count, out = int(rest[0]), rest[1]
            handles = [reactor.enqueue("slow", {"out": out, "i": i}) for i in range(count)]
            threading.Thread(target=_count_done, args=(handles, out), daemon=True).start()
            print("ok", flush=True)
        elif command == "nodes":
            print(json.dumps([n["name"] for n in reactor.nodes()]), flush=True)


def _count_done(handles: list[Any], out: str) -> None:
    done = 0
    for handle in handles:
        try:
            handle.result(timeout=25)
            done += 1
        except Exception:  # noqa: BLE001 (a benchmark counts, it doesn't judge)
            pass
    Path(out + ".resolved").write_text(str(done))


class Target(TargetProcess):
    def __init__(self, code: Path | None, log: Path) -> None:
        super().__init__(__file__, code, log, [])
        self.port = int(self.first_line)

    def ask(self, command: str) -> str:
        return self.ask_line(command)

    def warnings(self) -> int:
        text = self.log.read_text(errors="replace")
        return sum(line.startswith("WARNING") for line in text.splitlines())


# --- raw-socket attackers ----------------------------------------------------------------------


async def _hold(
    port: int, count: int, size: int, filled: asyncio.Event, release: asyncio.Event
) -> list[Any]:
    writers = []
    for _ in range(count):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            continue
        writers.append(writer)
    tasks = [asyncio.ensure_future(_fill(w, size)) for w in writers]
    await asyncio.wait(tasks, timeout=300)
    filled.set()
    await release.wait()
    for writer in writers:
        writer.close()
    return writers


async def _fill(writer: Any, size: int) -> None:
    try:
        writer.write(struct.pack(">I", size))
        chunk = b"\x00" * (1 << 20)
        sent = 0
        while sent < size - 1:
            piece = chunk[: min(len(chunk), size - 1 - sent)]
            writer.write(piece)
            await asyncio.wait_for(writer.drain(), 30)
            sent += len(piece)
    except (OSError, TimeoutError):
        pass


def empty_maps_frame(prefix: bytes = b"\x92\x01") -> bytes:
    """`prefix` (array header, tag, leading fields) then an array of 16,777,000 empty maps."""
    body = prefix + b"\xdd" + struct.pack(">I", EMPTY_MAPS) + b"\x80" * EMPTY_MAPS
    return struct.pack(">I", len(body)) + body


def _hello_frame() -> bytes:
    # Hello(version 1, "authed", [], 0, "memory", nonce, [], "x", False), as msgpack by hand,
    # so the script also runs against code whose Hello had 7 fields (then: 7 of them).
    import msgpack

    fields = [1, "authed", [], 0, "memory", b"n" * 16, []]
    if os.environ.get("ATTACK_HELLO_FIELDS", "9") == "9":
        fields += ["x", False]
    body: bytes = msgpack.packb([1, *fields], use_bin_type=True)
    return struct.pack(">I", len(body)) + body


def _send_frame_and_wait_close(port: int, frame: bytes, timeout: float = 60) -> float:
    """Seconds from the last byte sent until the distributor closed the connection."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(timeout)
        try:
            sock.sendall(frame)
        except OSError:
            return 0.0
        sent = time.perf_counter()
        try:
            while sock.recv(65536):
                pass
        except OSError:
            pass
        return time.perf_counter() - sent


# --- the attacks -------------------------------------------------------------------------------


def attack_big_frames(target: Target) -> dict[str, Any]:
    base = target.rss_mb()

    async def run() -> float:
        filled, release = asyncio.Event(), asyncio.Event()
        holder = asyncio.ensure_future(_hold(target.port, 150, MAX_FRAME - 1, filled, release))
        await filled.wait()
        peak = target.rss_mb("VmHWM")
        release.set()
        await holder
        return peak

    peak = asyncio.run(run())
    time.sleep(3)
    after = target.rss_mb()
    return {
        "RSS growth (MB)": round(peak - base),
        "RSS held after close (MB)": round(after - base),
    }


def attack_empty_maps(target: Target) -> dict[str, Any]:
    base = target.rss_mb()
    seconds = _send_frame_and_wait_close(target.port, empty_maps_frame())
    return {
        "RSS growth (MB)": round(target.rss_mb("VmHWM") - base),
        "time to refuse (s)": round(seconds, 3),
    }


def _probe(target: Target, seconds: float) -> list[float]:
    return list(json.loads(target.ask(f"probe {seconds}")))


def attack_stall(target: Target) -> dict[str, Any]:
    quiet = _probe(target, 2)
    frame = empty_maps_frame()

    def client() -> None:
        for _ in range(4):
            _send_frame_and_wait_close(target.port, frame)

    clients = [threading.Thread(target=client) for _ in range(3)]
    for thread in clients:
        thread.start()
    busy = _probe(target, 8)
    for thread in clients:
        thread.join()
    return {
        "probe median quiet (ms)": round(statistics.median(quiet) * 1000, 1),
        "probe median under attack (ms)": round(statistics.median(busy) * 1000, 1),
        "probe max under attack (ms)": round(max(busy) * 1000, 1),
    }


def attack_idle(target: Target) -> dict[str, Any]:
    before = target.warnings()
    socks: list[socket.socket] = []
    for _ in range(2000):
        try:
            socks.append(socket.create_connection(("127.0.0.1", target.port), timeout=5))
        except OSError:
            break
    time.sleep(1.0)
    still_open = 0
    for sock in socks:
        sock.setblocking(False)
        try:
            still_open += sock.recv(1) != b""
        except BlockingIOError:
            still_open += 1
        except OSError:
            pass
    time.sleep(3.0)  # the handshake deadline passes for the ones kept
    for sock in socks:
        sock.close()
    time.sleep(0.5)
    return {
        "connections kept by the distributor": still_open,
        "WARNING lines": target.warnings() - before,
    }


SLOW_JOB = textwrap.dedent(
    """
    import asyncio, json, os
    from jobreactor import job

    @job("slow")
    async def slow(args):
        await asyncio.sleep(0.3)
        with open(args["out"], "a") as f:
            f.write(json.dumps({"i": args["i"], "pid": os.getpid()}) + "\\n")
    """
)


def attack_namesakes(target: Target, tmp: Path) -> dict[str, Any]:
    jobs = tmp / "jobs"
    jobs.mkdir(exist_ok=True)
    (jobs / "slow.py").write_text(SLOW_JOB)
    config = tmp / "dup.toml"
    config.write_text(
        f'name = "dup"\ndistributors = [["127.0.0.1", {target.port}]]\n'
        f'job_directory = "{jobs}"\nreconnect_interval = 0.1\nlog_job_processing = false\n'
        "concurrency = 100\nprefetch = 0\n"
    )
    logs = [tmp / f"dup{i}.log" for i in range(2)]
    nodes = [
        subprocess.Popen(
            [sys.executable, "-m", "jobreactor", "node", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=log.open("wb"),
            env=target.env,
            cwd=tmp,
        )
        for log in logs
    ]
    time.sleep(3)
    out = tmp / "runs.jsonl"
    target.ask(f"enqueue 600 {out}")
    time.sleep(20)
    for node in nodes:
        node.kill()
        node.wait()
    runs = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    resolved = tmp / "runs.jsonl.resolved"
    for _ in range(100):
        if resolved.exists():
            break
        time.sleep(0.1)
    per_job: dict[int, int] = {}
    for run in runs:
        per_job[run["i"]] = per_job.get(run["i"], 0) + 1
    replaced = sum(
        log.read_text(errors="replace").count("replaced by a new connection") for log in logs
    )
    return {
        "executions (600 jobs)": len(runs),
        "most runs of one job": max(per_job.values(), default=0),
        "handles resolved": resolved.read_text() if resolved.exists() else "?",
        "'replaced' lines": replaced,
    }


def attack_authed_maps(target: Target) -> dict[str, Any]:
    base = target.rss_mb()
    with socket.create_connection(("127.0.0.1", target.port), timeout=60) as sock:
        sock.sendall(_hello_frame())
        sock.recv(65536)  # the Welcome
        sent = time.perf_counter()
        try:
            sock.sendall(empty_maps_frame(b"\x93\x08\x01"))  # Reports(first_seq=1, [{}...])
            while sock.recv(65536):
                pass
        except OSError:
            pass
        seconds = time.perf_counter() - sent
    return {
        "RSS growth (MB)": round(target.rss_mb("VmHWM") - base),
        "time to refuse (s)": round(seconds, 3),
    }


ATTACKS = ["big-frames", "empty-maps", "stall", "idle", "namesakes", "authed-maps"]


def run(code: Path | None, only: list[str]) -> Results:
    def one(name: str, tmp: Path) -> dict[str, Any]:
        target = Target(code, tmp / f"{name}.log")  # a fresh distributor per attack
        try:
            if name == "namesakes":
                return attack_namesakes(target, tmp)
            return ATTACK[name](target)
        finally:
            target.close()

    return run_each(only, one)


ATTACK = {
    "big-frames": attack_big_frames,
    "empty-maps": attack_empty_maps,
    "stall": attack_stall,
    "idle": attack_idle,
    "authed-maps": attack_authed_maps,
}

if __name__ == "__main__":
    main(__doc__ or "", ATTACKS, target, run)
