"""A threading HTTP server with a bound on its threads, for the node's `metrics_port`.

`ThreadingHTTPServer` starts one thread per connection and waits forever for a request's
bytes: 369 half-sent requests held 372 threads (issue 18). Here at most `max_threads`
requests are served at once (more connections are closed at once: a scraper retries), and
handlers get a socket timeout (`REQUEST_TIMEOUT_S`, set on the handler class), so a slow or
silent client frees its thread within seconds.
"""

from __future__ import annotations

import socket
import threading
from http.server import ThreadingHTTPServer
from typing import Any, Final

REQUEST_TIMEOUT_S: Final = 5.0
MAX_THREADS: Final = 8


class BoundedHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, *args: Any, max_threads: int = MAX_THREADS, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._slots = threading.BoundedSemaphore(max_threads)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):  # all threads busy: turn it away
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            if isinstance(request, socket.socket):
                request.settimeout(REQUEST_TIMEOUT_S)
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()
