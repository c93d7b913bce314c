"""Hostile peers, round two (issue 18): fair pre-auth slots, bounded work per peer, integrity
after the handshake, job names that can't grow the dispatcher's work."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobreactor import Reactor, Registry
from jobreactor.distributor.dispatch import Dispatcher
from jobreactor.job import JobRecord, build_record
from jobreactor.protocol import (
    MAX_ITEMS_PER_FRAME,
    NONCE_BYTES,
    PROTOCOL_VERSION,
    Ack,
    Bye,
    Dropped,
    FrameDecoder,
    HeldJobs,
    Hello,
    Jobs,
    Message,
    Return,
    Welcome,
    encode,
)
from tests.conftest import make_test_reactor, noop_registry, wait_until

ROOT = Path(__file__).resolve().parent.parent

# --- a raw authenticated peer (no secret: the default loopback setup) ----------------------------


class RawNode:
    """A hand-driven node: Hello, then whatever the test sends."""

    def __init__(self, port: int, name: str = "raw", credits: int = 0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.decoder = FrameDecoder()
        nonce = secrets.token_bytes(NONCE_BYTES)
        hello = Hello(PROTOCOL_VERSION, name, ["other"], credits, "memory", nonce, [], name)
        self.sock.sendall(encode(hello))
        assert isinstance(self.next(), Welcome)

    def next(self) -> Message | None:
        """The next message, or None once the distributor closed the connection."""
        while True:
            for message in self.decoder.messages():
                return message
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                return None
            if not data:
                return None
            self.decoder.feed(data)

    def send(self, frame: bytes) -> None:
        with contextlib.suppress(OSError):  # closed under us: what is read next says why
            self.sock.sendall(frame)

    def closed_with_bye(self) -> str | None:
        """Read until closed; the Bye's reason (None: closed without one)."""
        reason = None
        while (message := self.next()) is not None:
            if isinstance(message, Bye):
                reason = message.reason
        return reason

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def probed() -> Iterator[Reactor]:
    """A distributor with one real node (`probe`) that runs no-op jobs."""
    reactor = make_test_reactor()
    reactor.start_distributor("127.0.0.1", 0)
    reactor.start_node("probe", registry=noop_registry())
    yield reactor
    reactor.stop(timeout=15)


def probe_job_runs(reactor: Reactor) -> None:
    handle = reactor.enqueue("noop", {}, {"node": "probe"})
    assert handle is not None
    handle.result(timeout=30)


BEYOND = {
    # a node never sends jobs: refused by its tag, before the body is read
    "jobs": encode(Jobs([(1, {"id": "x", "name": "noop", "args": {}})])),
    # acknowledging or returning jobs it was never given
    "ack": encode(Ack([1, 2, 3], 0)),
    "return": encode(Return(["a", "b"])),
    # more items in one frame than any node sends
    "held": encode(HeldJobs([(f"j{i}", i) for i in range(MAX_ITEMS_PER_FRAME + 1)], True)),
    "ack-count": encode(Ack(list(range(MAX_ITEMS_PER_FRAME + 1)), 0)),
    # a stream of acknowledgements that acknowledge nothing and grant nothing
    "idle-acks": encode(Ack([], 0)) * 1002,
}


@pytest.mark.parametrize("kind", sorted(BEYOND))
def test_a_peer_beyond_a_bound_is_closed_with_a_bye(
    probed: Reactor, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    peer = RawNode(probed.distributor.address_port())
    try:
        with caplog.at_level(logging.WARNING, logger="jobreactor"):
            peer.send(BEYOND[kind])
            reason = peer.closed_with_bye()
        assert reason, f"{kind}: closed without saying why"
        assert any("closing node connection" in r.getMessage() for r in caplog.records)
    finally:
        peer.close()
    probe_job_runs(probed)


def test_a_peer_at_the_bounds_is_served(probed: Reactor) -> None:
    peer = RawNode(probed.distributor.address_port(), credits=0)
    try:
        peer.send(encode(HeldJobs([(f"j{i}", i) for i in range(MAX_ITEMS_PER_FRAME)], True)))
        answer = peer.next()
        assert isinstance(answer, Dropped)
        for _ in range(200):  # a flood of empty acknowledgements granting credit
            peer.send(encode(Ack([], 10**6)))
        probe_job_runs(probed)
        wait_until(lambda: {n["name"] for n in probed.nodes()} == {"probe", "raw"})
        raw = next(n for n in probed.nodes() if n["name"] == "raw")
        assert raw["free_credit"] <= 1, "credit is capped at the window the node declared"
    finally:
        peer.close()


# --- fair pre-auth admission -------------------------------------------------------------------


@pytest.mark.timeout(240)
def test_a_node_with_the_secret_gets_in_through_a_flood(caplog: pytest.LogCaptureFixture) -> None:
    dist = make_test_reactor(handshake_timeout=2.0)
    host, port = dist.start_distributor("127.0.0.1", 0, secret="shh")
    steady = make_test_reactor()
    flood = None
    try:
        node = steady.start_node(
            "steady", distributors=[(host, port)], secret="shh", registry=noop_registry()
        )
        (link,) = node._node.links
        conn = link.conn
        flood = subprocess.Popen(
            [sys.executable, "-m", "tests.flood", str(port), "600"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        )
        for attempt in range(5):
            joiner = make_test_reactor(reconnect_interval=0.5)
            try:
                joiner.start_node(
                    f"w{attempt}",
                    distributors=[(host, port)],
                    secret="shh",
                    registry=noop_registry(),
                    wait=False,
                )
                dist.wait_for_node(f"w{attempt}", timeout=60)
            finally:
                joiner.stop(timeout=10)
        assert link.conn is conn, "the connected node was not touched"
        assert link.is_ready
    finally:
        if flood is not None:
            flood.kill()
            flood.wait()
        steady.stop(timeout=10)
        dist.stop(timeout=10)


# --- integrity after the handshake -------------------------------------------------------------


class TamperingRelay:
    """Relays node <-> distributor; on request alters one byte of the next chunk going to the
    node, or injects a frame into that direction."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.loop = asyncio.new_event_loop()
        self.flip_next = threading.Event()
        self.inject: bytes | None = None
        self.tampered = threading.Event()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        self._down: list[asyncio.StreamWriter] = []
        self._writers: list[asyncio.StreamWriter] = []

    async def _start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        sr, sw = await asyncio.open_connection(*self.target)
        self._down.append(cw)
        self._writers += [cw, sw]
        await asyncio.gather(self._pump(cr, sw, False), self._pump(sr, cw, True))

    async def _pump(self, r: asyncio.StreamReader, w: asyncio.StreamWriter, down: bool) -> None:
        try:
            while data := await r.read(65536):
                if down and self.flip_next.is_set():
                    self.flip_next.clear()
                    changed = bytearray(data)
                    changed[-1] ^= 0x80
                    data = bytes(changed)
                    self.tampered.set()
                w.write(data)
                await w.drain()
        except OSError:
            pass
        finally:
            w.close()

    def send_down(self, frame: bytes) -> None:
        async def go() -> None:
            self._down[-1].write(frame)
            self.tampered.set()

        asyncio.run_coroutine_threadsafe(go(), self.loop).result(10)

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            for writer in self._writers:
                writer.close()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def relayed() -> Iterator[tuple[Reactor, Any, TamperingRelay, list[dict[str, Any]]]]:
    reactor = make_test_reactor()
    address = reactor.start_distributor("127.0.0.1", 0, secret="shh")
    relay = TamperingRelay(address)
    ran: list[dict[str, Any]] = []
    registry = Registry()
    registry.job("noop")(lambda args: None)
    registry.job("evil")(ran.append)
    node = reactor.start_node(
        "w1", distributors=[("127.0.0.1", relay.port)], secret="shh", registry=registry
    )
    yield reactor, node, relay, ran
    reactor.stop(timeout=15)
    relay.close()


def _integrity_failure(caplog: pytest.LogCaptureFixture) -> bool:
    return any("integrity" in r.getMessage() for r in caplog.records)


def test_an_injected_frame_closes_the_link_and_never_runs(
    relayed: Any, caplog: pytest.LogCaptureFixture
) -> None:
    reactor, node, relay, ran = relayed
    (link,) = node._node.links
    first = link.conn
    with caplog.at_level(logging.WARNING, logger="jobreactor"):
        relay.send_down(encode(Jobs([(1, {"id": "inj", "name": "evil", "args": {}})])))
        wait_until(lambda: _integrity_failure(caplog), what="the node refuses the frame")
    wait_until(lambda: link.is_ready and link.conn is not first, what="a new link")
    handle = reactor.enqueue("noop", {})
    assert handle is not None
    handle.result(timeout=30)
    assert ran == []


def test_an_altered_frame_closes_the_link(relayed: Any, caplog: pytest.LogCaptureFixture) -> None:
    reactor, node, relay, ran = relayed
    (link,) = node._node.links
    first = link.conn
    with caplog.at_level(logging.WARNING, logger="jobreactor"):
        relay.flip_next.set()
        handle = reactor.enqueue("evil", {"x": 1})  # its Jobs frame is altered on the way
        assert handle is not None
        wait_until(lambda: _integrity_failure(caplog), what="the node refuses the frame")
    wait_until(lambda: link.is_ready and link.conn is not first, what="a new link")
    handle.result(timeout=30)  # sent again on the new link, intact, and run once
    assert ran == [{"x": 1}]


# --- job names ---------------------------------------------------------------------------------


def _job(name: str, i: int) -> JobRecord:
    return build_record(f"j{i}", name, {}, {}, now_epoch_s=0.0)


class CountingDispatcher(Dispatcher):
    choices = 0

    def _choose(self, key: Any) -> Any:
        self.choices += 1
        return super()._choose(key)


def test_dispatch_work_does_not_grow_with_distinct_names() -> None:
    """Before: every (name, node, not_node) bucket was looked at for every job sent."""
    dispatcher = CountingDispatcher()
    for i in range(100_000):
        dispatcher.add(_job(f"unknown-{i}", i))
    dispatcher.add_node(1, "w1", ["noop"], 0)
    for _ in range(10):
        dispatcher.grant(1, 1)
        assert len(dispatcher.assign()) == 1
    assert dispatcher.choices == 10
    assert len(dispatcher) == 100_000 - 10


def test_blocked_names_wait_for_a_node_that_declared_them() -> None:
    dispatcher = CountingDispatcher()
    dispatcher.add_node(1, "a", ["x"], 0)
    dispatcher.add_node(2, "b", ["y"], 5)
    for i in range(1000):
        dispatcher.add(_job("x", i))  # only `a` may take them, and it has no credit
    assert dispatcher.assign() == []
    dispatcher.grant(2, 5)  # credit for `b`: the x bucket stays aside, unlooked at
    before = dispatcher.choices
    assert dispatcher.assign() == []
    assert dispatcher.choices == before
    dispatcher.grant(1, 3)
    assert [job.id for _, job, _ in dispatcher.assign()] == ["j0", "j1", "j2"]


def test_long_job_names_are_refused() -> None:
    from jobreactor import InvalidOptions

    reactor = make_test_reactor()
    try:
        reactor.start_distributor("127.0.0.1", 0)
        with pytest.raises(InvalidOptions, match="at most 200"):
            reactor.enqueue("x" * 100_000, {})
        with pytest.raises(InvalidOptions, match="at most 200"):
            Registry().job("y" * 201)
    finally:
        reactor.stop(timeout=10)


# --- the node's metrics port -------------------------------------------------------------------


def test_the_metrics_port_bounds_threads_and_times_out_requests(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import urllib.request

    from jobreactor import http_bounded
    from jobreactor.metrics_server import MetricsServer

    monkeypatch.setattr(http_bounded, "REQUEST_TIMEOUT_S", 0.5)
    server = MetricsServer("127.0.0.1", 0).start()
    before = threading.active_count()
    half_sent = []
    try:
        for _ in range(50):
            sock = socket.create_connection(("127.0.0.1", server.port))
            sock.sendall(b"GET /health HTTP/1.1\r\n")  # and never the rest
            half_sent.append(sock)
        assert threading.active_count() - before <= http_bounded.MAX_THREADS

        def answers() -> bool:
            try:
                url = f"http://127.0.0.1:{server.port}/health"
                with urllib.request.urlopen(url, timeout=5) as reply:
                    return bool(reply.status == 200)
            except OSError:
                return False

        wait_until(answers, what="a scrape once the silent requests timed out")
    finally:
        for sock in half_sent:
            sock.close()
        server.close()
