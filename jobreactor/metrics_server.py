"""A node's opt-in `metrics_port`: `/metrics` of this process and `/health`."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from jobreactor.http_bounded import BoundedHTTPServer
from jobreactor.metrics import GaugeReader, metrics_registry

__all__ = ["MetricsServer"]

# A health check: (HTTP status, JSON body). See jobreactor/health.py.
HealthCheck = Callable[[], tuple[int, dict[str, Any]]]


class MetricsServer:
    """A node's opt-in `metrics_port`: `/metrics` (this process) and `/health` (liveness).

    A plain threading HTTP server in a daemon thread, off the event loop: a scrape never
    delays a job (`gauge_reader` should hop onto the loop to read the gauges). `/health`
    answers what `health()` says (jobreactor/health.py: storage, loop, backlog), else 200
    while `alive()` says so, else 503.
    """

    def __init__(
        self,
        host: str,
        port: int,
        alive: Callable[[], bool] | None = None,
        gauge_reader: GaugeReader | None = None,
        health: HealthCheck | None = None,
    ) -> None:
        registry = metrics_registry(gauge_reader=gauge_reader)
        is_alive = alive or (lambda: True)

        def check() -> tuple[int, bytes]:
            if health is not None:
                code, body = health()
                return code, json.dumps(body).encode() + b"\n"
            ok = bool(is_alive())
            return (200, b"ok\n") if ok else (503, b"down\n")

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, CONTENT_TYPE_LATEST, generate_latest(registry))
                elif path in ("/health", "/healthz"):
                    code, body = check()
                    ctype = "application/json" if health is not None else "text/plain"
                    self._send(code, ctype, body)
                else:
                    self._send(404, "text/plain", b"not found: /metrics or /health\n")

            def _send(self, code: int, ctype: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return None  # scrapes every few seconds would flood the log

        self._server = BoundedHTTPServer((host, port), Handler)  # timeouts, bounded threads
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="jobreactor-metrics", daemon=True
        )

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
