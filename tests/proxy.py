"""A TCP proxy for partition tests: it can stop forwarding without closing (one direction or
both) and add latency, like a network that drops into silence rather than a process that dies.

While a direction is cut, the proxy stops *reading* it: bytes wait in the kernel's buffers (as
TCP would retransmit them) and arrive, in order, when healed; a close (FIN) is not seen until
then either. New connections made during a cut are accepted but carry nothing until healed.
It runs its own loop in a thread, so tests and reactors can be synchronous.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from typing import Any

UP = "up"  # client (node) -> server (distributor)
DOWN = "down"  # server -> client


class Proxy:
    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._loop = asyncio.new_event_loop()
        self._open = {UP: asyncio.Event(), DOWN: asyncio.Event()}
        self._latency = 0.0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.port = self._call(self._start())

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _start(self) -> int:
        for event in self._open.values():
            event.set()
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        await self._open[UP].wait()  # a connection can't be made across a cut
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.close()
            return
        pumps = [
            asyncio.ensure_future(self._pump(client_r, server_w, UP)),
            asyncio.ensure_future(self._pump(server_r, client_w, DOWN)),
        ]
        self._tasks.update(pumps)
        await asyncio.wait(pumps)
        self._tasks.difference_update(pumps)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str
    ) -> None:
        gate = self._open[direction]
        try:
            while True:
                await gate.wait()
                data = await reader.read(65536)
                await gate.wait()  # cut while we were reading: hold what we read
                if self._latency:
                    await asyncio.sleep(self._latency)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            with contextlib.suppress(OSError, RuntimeError):
                writer.close()

    def cut(self, *directions: str) -> None:
        """Stop forwarding (both directions when none is named); connections stay open."""
        for direction in directions or (UP, DOWN):
            self._loop.call_soon_threadsafe(self._open[direction].clear)

    def heal(self) -> None:
        for event in self._open.values():
            self._loop.call_soon_threadsafe(event.set)

    def set_latency(self, seconds: float) -> None:
        """Delay every chunk by `seconds`, each way."""
        self._latency = seconds

    def close(self) -> None:
        async def stop() -> None:
            if self._server is not None:
                self._server.close()
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for _ in range(3):  # let the connection handlers see their pumps end
                await asyncio.sleep(0)

        self.heal()
        self._call(stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


@contextlib.contextmanager
def proxy_to(target: tuple[str, int]) -> Iterator[Proxy]:
    proxy = Proxy(target)
    try:
        yield proxy
    finally:
        proxy.close()
