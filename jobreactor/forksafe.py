"""What fork() does to a reactor (README "Running inside a web app").

A started reactor's loop, thread and sockets belong to the process that started it. In a forked
child the thread is gone, but the loop object, its epoll fd, its wake-up fd and its sockets are
copies that still point at the *parent's* kernel objects: closing a handle there deregisters it
from the parent's epoll, and waking the loop wakes the parent's. So a child never touches them:

- one at-fork hook (registered once, here; it holds the live reactors weakly, so it never keeps
  one alive) makes each reactor's per-process state again in the child: id prefix, counters,
  queues, locks, events. It only assigns fields: no logging, no I/O (a logging lock held at fork
  would deadlock it);
- the parts of a reactor that was *running* at the fork are pinned here for the life of the
  process (one extra reference that is never released, so nothing deallocates them, not even at
  interpreter shutdown), and the reactor raises `ReactorForkedError` in the child;
- every entry point also compares `os.getpid()` (the reactor does that), for forks that skip the
  hooks (uWSGI without `--py-call-uwsgi-fork-hooks`, C-level forks).

libuv (inside uvloop) adds one more trap: its thread pool, once started in the parent, is
joined by a C destructor at `exit()`. In a child those threads don't exist, and joining them
crashes the process (SIGSEGV at shutdown). libuv resets its once-guard in the child, so starting
the pool again there makes the destructor join threads that exist; `_restart_uv_threadpool`
does that at exit, in a child of a process where a reactor ran uvloop.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import sys
import weakref
from pathlib import Path
from typing import Any, Protocol

_PACKAGE_DIR = str(Path(__file__).resolve().parent)


class _ForkAware(Protocol):
    def _after_fork(self) -> None: ...


_live: weakref.WeakSet[_ForkAware] = weakref.WeakSet()
# Parts of reactors inherited from a parent: referenced forever, never touched.
_stale: list[Any] = []
ctypes.pythonapi.Py_IncRef(ctypes.py_object(_stale))  # survives module teardown at exit
# The first process in which a reactor made a uvloop loop (None: none did).
_uv_pid: int | None = None


def track(reactor: _ForkAware) -> None:
    """Have `reactor._after_fork()` called in every forked child while the reactor lives."""
    _live.add(reactor)


def pin(parts: Any) -> None:
    """Keep `parts` (a parent's loop, thread, servers, ...) alive and untouched in this child."""
    _stale.append(parts)


def made_uvloop() -> None:
    """Note that this process runs a uvloop loop (so its forked children must mind libuv)."""
    global _uv_pid
    if _uv_pid is None:
        _uv_pid = os.getpid()


def call_site() -> str:
    """`file:line` of the first caller outside jobreactor (names where a reactor was started)."""
    frame = sys._getframe(1)
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame = frame.f_back
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


def fork_message(parent: int, started_at: str) -> str:
    """The error a child sees when it uses a reactor its parent had started."""
    return (
        f"jobreactor: the reactor was started in process {parent} (JR.run() at {started_at}) "
        f"and this process ({os.getpid()}) is a fork of it. Its event loop and thread do not "
        "survive fork(), so it cannot run here. Start the reactor after the fork, in each "
        "worker: gunicorn: the post_worker_init hook (jobreactor.contrib.gunicorn), not at "
        "import under --preload; uvicorn/ASGI: lifespan startup (jobreactor.contrib.asgi); "
        "Django: the server's hook, not AppConfig.ready(); elsewhere JR.ensure_started(). "
        "See docs/web.md, 'Running inside a web app'."
    )


def _after_fork_in_child() -> None:
    for reactor in list(_live):
        reactor._after_fork()


def _restart_uv_threadpool() -> None:
    if _uv_pid is None or _uv_pid == os.getpid():
        return
    import uvloop

    loop = uvloop.new_event_loop()
    try:  # any thread-pool request starts libuv's pool (again) in this process
        loop.run_until_complete(loop.getnameinfo(("127.0.0.1", 0)))
    finally:
        loop.close()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_restart_uv_threadpool)
