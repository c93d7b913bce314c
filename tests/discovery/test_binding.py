"""Binding: port 0, advertise, and a port in use is an OSError, even when processes race."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap

import pytest

from jobreactor import Reactor
from tests.conftest import make_test_reactor

pytestmark = pytest.mark.timeout(120)

RACER = textwrap.dedent(
    """
    import sys
    from jobreactor import Reactor
    port = int(sys.argv[1])
    reactor = Reactor(logger_method="CRITICAL")
    reactor.run()
    print("ready", flush=True)
    sys.stdin.readline()  # "go": every racer is ready, all bind at once
    try:
        reactor.start_distributor("127.0.0.1", port)
        print("ok", flush=True)
    except BaseException as exc:  # CannotListen is an OSError: said as one
        print("OSError" if isinstance(exc, OSError) else type(exc).__name__, exc, flush=True)
    sys.stdin.read()  # hold the port until the test has every answer
    reactor.stop(timeout=2)
    """
)


def test_port_zero_returns_the_bound_port_and_advertise_names_the_address() -> None:
    reactor = make_test_reactor()
    try:
        host, port = reactor.start_distributor("127.0.0.1", 0, advertise="10.1.2.3:7000")
        assert host == "127.0.0.1"
        assert port > 0
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # really listening there
        assert reactor.distributor.address == "10.1.2.3:7000"
    finally:
        reactor.stop(timeout=5)


@pytest.mark.parametrize("advertise", ["10.1.2.3", "10.1.2.3:0"])
def test_advertise_without_a_port_takes_the_bound_one(advertise: str) -> None:
    reactor = make_test_reactor()
    try:
        _, port = reactor.start_distributor("127.0.0.1", 0, advertise=advertise)
        assert reactor.distributor.address == f"10.1.2.3:{port}"
    finally:
        reactor.stop(timeout=5)


def test_a_port_in_use_is_an_oserror_that_points_to_port_zero() -> None:
    reactor: Reactor = make_test_reactor()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        try:
            with pytest.raises(OSError, match=rf"127\.0\.0\.1:{port}.*port 0"):
                reactor.start_distributor("127.0.0.1", port)
            # Nothing half-made stays behind: the reactor can still start one elsewhere.
            assert reactor.start_distributor("127.0.0.1", 0)[1] > 0
        finally:
            reactor.stop(timeout=5)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("attempt", range(4))
def test_processes_binding_one_port_at_once_get_one_winner_and_oserrors(attempt: int) -> None:
    port = _free_port()
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(5)
    ]
    try:
        for racer in racers:
            assert racer.stdout.readline() == "ready\n"  # type: ignore[union-attr]
        for racer in racers:  # released together: all bind at the same instant
            racer.stdin.write("go\n")  # type: ignore[union-attr]
            racer.stdin.flush()  # type: ignore[union-attr]
        answers = [racer.stdout.readline().strip() for racer in racers]  # type: ignore[union-attr]
    finally:
        for racer in racers:
            racer.communicate(timeout=20)
    assert answers.count("ok") == 1, answers
    for answer in answers:
        assert answer == "ok" or answer.startswith("OSError"), answers
