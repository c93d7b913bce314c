"""Listening sockets for a distributor, bound and listening before the loop sees them.

Why not `loop.create_server(host, port)`: libuv (uvloop) defers a bind's EADDRINUSE to
`listen()`, and uvloop's server then reports that failure to the loop's exception handler
instead of raising it. Two processes that bind one port at the same moment (both binds succeed
under SO_REUSEADDR while neither listens) thus got a "server" whose socket was already closed,
and `sockets[0].getsockname()` raised AttributeError on None. Binding and listening here, with
the socket module, raises the real OSError every time.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import ssl
from collections.abc import Callable

from jobreactor.errors import CannotListen

logger = logging.getLogger("jobreactor.distributor")

_BACKLOG = 100  # asyncio's default for create_server


def _addresses(host: str | None, port: int) -> list[tuple[int, tuple[object, ...]]]:
    infos = socket.getaddrinfo(
        host or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
    )
    out: list[tuple[int, tuple[object, ...]]] = []
    for family, _, _, _, address in infos:
        if (family, address) not in out:
            out.append((family, address))
    return out


def _listen_one(family: int, address: tuple[object, ...], port: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address[0], port, *address[2:]))
        sock.listen(_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def listen_sockets(host: str | None, port: int) -> list[socket.socket]:
    """Bound, listening sockets for every address of `host` (one port for all, even port 0).

    Raises CannotListen (an OSError) naming host:port; an address in use says to use port 0
    instead.
    """
    try:
        addresses = _addresses(host, port)
    except OSError as exc:
        raise CannotListen(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    sockets: list[socket.socket] = []
    try:
        for family, address in addresses:
            sock = _listen_one(family, address, port)
            sockets.append(sock)
            port = port or int(sock.getsockname()[1])  # port 0: the others share the first's
    except OSError as exc:
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()
        hint = ""
        if exc.errno == errno.EADDRINUSE:
            hint = (
                "; another process holds that port. With several processes (a pre-fork web "
                "server's workers) give each one port 0 and let nodes find them by discovery"
            )
        raise CannotListen(
            exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}{hint}"
        ) from exc
    return sockets


def advertised(advertise: str | None, host: str, port: int) -> str:
    """The address nodes dial: `advertise` ("host:port"; "host" or "host:0" take the bound
    port, as port 0 needs), else the bind host and port."""
    if not advertise:
        return f"{host}:{port}"
    name, colon, given = advertise.rpartition(":")
    if not colon or not given.isdigit() or name.endswith(":"):  # "10.0.0.5", "::1"
        return f"{advertise}:{port}"
    return f"{name}:{port}" if given == "0" else advertise


def warn_if_unfound(
    loop: asyncio.AbstractEventLoop,
    after_s: float,
    address: str,
    has_nodes: Callable[[], bool],
    is_closed: Callable[[], bool],
) -> asyncio.TimerHandle:
    """Port 0 with neither discovery nor an advertised address: a port no node can know. If no
    node has arrived after `after_s` (one loop timer), say so once, with what to do."""

    def check() -> None:
        if is_closed() or has_nodes():
            return
        logger.warning(
            "distributor %s listens on a port picked at random (port 0) with no discovery_url, "
            "and no node has found it in %g s: nodes can only dial it if told this port. Set "
            "discovery_url (JOBREACTOR_DISCOVERY_URL) so nodes find it, or bind a fixed port",
            address,
            after_s,
        )

    return loop.call_later(after_s, check)


class Listener:
    """A distributor's listening sockets: bound at `listen` (connections wait in the backlog),
    served from `serve` on (the journal is read back first: startup.py)."""

    def __init__(self, factory: Callable[[], asyncio.Protocol]) -> None:
        self._factory = factory
        self._unserved: list[socket.socket] = []  # listening, not accepting yet
        self._servers: list[asyncio.Server] = []

    def listen(self, host: str, port: int) -> tuple[str, int]:
        """Bind and listen on host:port (0 picks a free port); the bound address."""
        self._unserved = listen_sockets(host, port)
        sockname = self._unserved[0].getsockname()
        return str(sockname[0]), int(sockname[1])

    async def serve(self, ssl_context: ssl.SSLContext | None) -> None:
        loop = asyncio.get_running_loop()
        for sock in self._unserved:
            self._servers.append(
                await loop.create_server(self._factory, sock=sock, ssl=ssl_context)
            )
        self._unserved = []

    def close(self) -> None:
        """Stop accepting (and close sockets that never served: Redis away since start)."""
        for server in self._servers:
            server.close()
        for sock in self._unserved:
            sock.close()
        self._unserved = []

    async def wait_closed(self) -> None:
        for server in self._servers:
            await server.wait_closed()
