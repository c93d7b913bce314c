"""Hostile peers, round two (issue 18): what each attack costs, before and after.

    python -m bench.attacks2 [--code DIR] [--only NAME ...]

`--code DIR` runs the distributor, its probe node and the joining nodes from another copy of
the package (PYTHONPATH=/work/wt/base for "before"). The attackers are raw sockets here.

Attacks:
  flood     160 anonymous coroutines reconnecting as soon as closed (sending nothing) against
            a distributor with a secret; 5 nodes with the secret started one after the other:
            seconds until each is ready
  held      an authenticated peer (no secret: the loopback default) sends 4 MB Held frames
            for 8 s: probe-job latency on another node; is the peer closed?
  acks      5-byte Ack frames as fast as the socket takes them for 8 s: probe latency, the
            credit the distributor then counts for the peer
  jobs      one 16 MiB Jobs frame from a node (a kind a node never sends): time to refuse
  names     8k jobs of distinct unknown names (the issue's figure: 14.6 s before): time until
            all are dispatched and failed as NoSuchJob on the probe node
  dispatch  50k no-op jobs over 1, 50 and 500 known names: jobs/s
  mac       the no-op bench (20k jobs) without and with a secret: the MAC's cost per job
  hellos    128 anonymous peers each send a 64 KiB Hello of 1-character job names and wait:
            the distributor's RSS growth
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.attack_kit import ROOT, Results, TargetProcess, main, run_each

NAMES = 500


def target(args: argparse.Namespace) -> None:
    secret: str | None = args.secret
    import logging

    from jobreactor import Reactor, Registry
    from jobreactor.protocol import PROTOCOL_VERSION

    logging.basicConfig(level=logging.ERROR)
    reactor = Reactor(logger_method="ERROR", log_job_processing=False, max_attempt=1)
    reactor.run()
    registry = Registry()
    for i in range(NAMES):
        registry.job(f"noop{i}")(lambda args: None)
    registry.job("noop")(lambda args: None)
    _, port = reactor.start_distributor("127.0.0.1", 0, secret=secret)
    reactor.start_node("probe", registry=registry, secret=secret)
    print(port, PROTOCOL_VERSION, flush=True)
    for line in sys.stdin:
        command, *rest = line.split()
        if command == "probe":
            print(json.dumps(_probe(reactor, float(rest[0]))), flush=True)
        elif command == "nodes":
            try:
                print(json.dumps(reactor.nodes()), flush=True)
            except Exception as exc:  # noqa: BLE001 (a loop too busy to answer is a figure)
                print(json.dumps([{"name": "raw", "free_credit": f"no answer: {exc!r}"}]))
        elif command == "run":  # run N jobs over K names (or unknown ones): seconds
            count, names, known = int(rest[0]), int(rest[1]), rest[2] == "known"
            prefix = "noop" if known else "unknown"
            started = time.perf_counter()
            handles = reactor.enqueue_many(
                [(f"{prefix}{i % names}", {}, None) for i in range(count)]
            )
            for handle in handles:
                assert handle is not None
                with contextlib.suppress(Exception):  # unknown names fail: that is the point
                    handle.result(timeout=600)
            print(time.perf_counter() - started, flush=True)


def _probe(reactor: Any, seconds: float) -> list[float]:
    latencies = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        start = time.perf_counter()
        handle = reactor.enqueue("noop", {}, {"node": "probe"})
        with contextlib.suppress(Exception):  # not back within 60 s: counted as 60 s
            handle.result(timeout=60)
        latencies.append(time.perf_counter() - start)
        time.sleep(0.01)
    return latencies


class Target(TargetProcess):
    def __init__(self, code: Path | None, log: Path, secret: str | None = None) -> None:
        super().__init__(__file__, code, log, ["--secret", secret] if secret else [])
        port, version = self.first_line.split()
        self.port, self.version = int(port), int(version)

    def ask(self, command: str) -> Any:
        return json.loads(self.ask_line(command))


def _ms(values: list[float], q: float) -> float:
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 1)


def _frame(fields: list[Any]) -> bytes:
    import msgpack

    body: bytes = msgpack.packb(fields, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


def _authed(target: Target, name: str = "raw") -> socket.socket:
    hello = [1, target.version, name, ["other"], 0, "memory", secrets.token_bytes(16), []]
    hello += [name, False] + ([0] if target.version >= 2 else [])
    sock = socket.create_connection(("127.0.0.1", target.port), timeout=30)
    sock.sendall(_frame(hello))
    sock.recv(65536)  # the Welcome
    return sock


def _flood_peer(target: Target, frame: bytes, seconds: float) -> dict[str, Any]:
    """Send `frame` over and over for `seconds` while probing; was the peer closed?"""
    sock = _authed(target)
    state: dict[str, Any] = {"closed_after_s": None, "frames": 0}
    stop = threading.Event()

    def send() -> None:
        started = time.perf_counter()
        while not stop.is_set():
            try:
                sock.sendall(frame)
                state["frames"] += 1
            except OSError:
                state["closed_after_s"] = round(time.perf_counter() - started, 3)
                return

    sender = threading.Thread(target=send)
    sender.start()
    busy = target.ask(f"probe {seconds}")
    stop.set()
    sock.close()
    sender.join()
    return {
        "probe p50 (ms)": _ms(busy, 0.5),
        "probe p99 (ms)": _ms(busy, 0.99),
        "frames sent": state["frames"],
        "peer closed after (s)": state["closed_after_s"],
    }


def attack_held(target: Target) -> dict[str, Any]:
    held = [[f"job-{i:012d}", i] for i in range(100_000)]  # ~4 MB
    return _flood_peer(target, _frame([15, held, False, ""]), 8)


def attack_acks(target: Target) -> dict[str, Any]:
    result = _flood_peer(target, _frame([6, [], 15]), 8)
    nodes = target.ask("nodes")
    raw = [n["free_credit"] for n in nodes if n["name"] == "raw"]
    result["credit counted for the peer"] = raw[0] if raw else "gone"
    return result


def attack_jobs(target: Target) -> dict[str, Any]:
    sock = _authed(target)
    body = b"\x92\x05\xdd" + struct.pack(">I", 1) + b"\x92\x01\xc6" + struct.pack(">I", 16_000_000)
    body += b"\x00" * 16_000_000
    sent = time.perf_counter()
    try:
        sock.sendall(struct.pack(">I", len(body)) + body)
        while sock.recv(65536):
            pass
    except OSError:
        pass
    sock.close()
    return {"time to refuse (s)": round(time.perf_counter() - sent, 3)}


NODE_SCRIPT = """
import sys, time
from jobreactor import Reactor, Registry
r = Reactor(logger_method="ERROR", reconnect_interval=0.5)
r.run()
registry = Registry()
registry.job("noop")(lambda args: None)
started = time.perf_counter()
node = r.start_node(sys.argv[1], distributors=[("127.0.0.1", int(sys.argv[2]))],
                    secret="bench-secret", registry=registry, wait=False)
while not node.linked():
    if time.perf_counter() - started > 40:
        break
    time.sleep(0.01)
print(round(time.perf_counter() - started, 2), flush=True)
r.stop(timeout=5)
"""


def attack_flood(target: Target) -> dict[str, Any]:
    flood = subprocess.Popen(
        [sys.executable, "-m", "tests.flood", str(target.port), "900"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    try:
        time.sleep(3)
        readiness = []
        for attempt in range(5):
            done = subprocess.run(
                [sys.executable, "-c", NODE_SCRIPT, f"w{attempt}", str(target.port)],
                env=target.env,
                capture_output=True,
                text=True,
                timeout=200,
                check=False,
            )
            readiness.append(float(done.stdout.strip() or "nan"))
    finally:
        flood.kill()
        flood.wait()
    return {"seconds to ready (5 nodes)": readiness, "max (s)": max(readiness)}


def attack_names(target: Target) -> dict[str, Any]:
    result: dict[str, Any] = {}

    def run() -> None:
        result["8k unknown names dispatched in (s)"] = round(
            target_run(target, 8000, 8000, "unknown"), 2
        )

    quiet = target.ask("probe 2")
    result["probe p50 quiet (ms)"] = _ms(quiet, 0.5)
    run()
    return result


def target_run(target: Target, count: int, names: int, kind: str) -> float:
    return float(target.ask(f"run {count} {names} {kind}"))


def attack_dispatch(target: Target) -> dict[str, Any]:
    target_run(target, 5000, 1, "known")  # warm up
    return {
        f"jobs/s at {names} names": round(50_000 / target_run(target, 50_000, names, "known"))
        for names in (1, 50, 500)
    }


def attack_mac(code: Path | None, tmp: Path) -> dict[str, Any]:
    timings = {}
    for secret in (None, "bench-secret"):
        target = Target(code, tmp / f"mac-{bool(secret)}.log", secret)
        try:
            target_run(target, 5000, 1, "known")
            timings[secret] = min(target_run(target, 20_000, 1, "known") for _ in range(3))
        finally:
            target.close()
    plain, maced = timings[None], timings["bench-secret"]
    return {
        "no secret (µs/job)": round(plain / 20_000 * 1e6, 2),
        "secret (µs/job)": round(maced / 20_000 * 1e6, 2),
        "MAC cost (µs/job)": round((maced - plain) / 20_000 * 1e6, 2),
    }


def attack_hellos(target: Target) -> dict[str, Any]:
    """128 anonymous peers each send a 64 KiB Hello of 1-character job names and wait."""
    names = ["a"] * 32_000
    hello = [1, target.version, "h", names, 0, "memory", b"n" * 16, [], "h", True]
    frame = _frame(hello + ([0] if target.version >= 2 else []))
    base = target.rss_mb()
    socks = []
    for _ in range(128):
        sock = socket.create_connection(("127.0.0.1", target.port), timeout=10)
        sock.sendall(frame)
        socks.append(sock)
    time.sleep(1.0)
    grown = target.rss_mb() - base
    for sock in socks:
        sock.close()
    return {"Hello bytes": len(frame), "RSS growth while held (MB)": round(grown, 1)}


ATTACKS = ["flood", "held", "acks", "jobs", "names", "dispatch", "mac", "hellos"]


def run(code: Path | None, only: list[str]) -> Results:
    def one(name: str, tmp: Path) -> dict[str, Any]:
        if name == "mac":
            return attack_mac(code, tmp)
        secret = "bench-secret" if name in ("flood", "hellos") else None
        target = Target(code, tmp / f"{name}.log", secret)
        try:
            result: dict[str, Any] = globals()[f"attack_{name}"](target)
            return result
        finally:
            target.close()

    return run_each(only, one)


if __name__ == "__main__":
    main(__doc__ or "", ATTACKS, target, run)
