"""The app side is a coordinator and parts (issue 20): no mixins, no class over 25 methods, and
the pinned calls on `JR` are the parts' own methods."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from jobreactor import Reactor

PACKAGE = Path(__file__).resolve().parent.parent / "jobreactor"
APP_SIDE = [
    "reactor.py",
    "loophost.py",
    "enqueue.py",
    "calls.py",
    "housekeeping.py",
    "starting.py",
    "nodehandle.py",
]
PINNED = [
    "enqueue", "aenqueue", "enqueue_many", "run", "run_forever", "start_distributor",
    "start_node", "nodes", "cancel", "retry", "aretry", "batch", "release_lock",
    "arelease_lock", "await_for_node", "await_idle", "stop", "config",
]  # fmt: skip


def classes(module: str) -> list[ast.ClassDef]:
    tree = ast.parse((PACKAGE / module).read_text())
    return [node for node in tree.body if isinstance(node, ast.ClassDef)]


@pytest.mark.parametrize("module", APP_SIDE)
def test_app_side_classes_are_small_and_not_mixed_in(module: str) -> None:
    for cls in classes(module):
        methods = [n for n in cls.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
        assert len(methods) <= 25, f"{module}:{cls.name} has {len(methods)} methods"
        bases = [ast.unparse(base) for base in cls.bases]
        assert bases in ([], ["Protocol"]), f"{module}:{cls.name} derives from {bases}"


def test_the_pinned_calls_are_there_and_the_parts_do_them() -> None:
    reactor = Reactor()
    for name in PINNED:
        assert hasattr(reactor, name), name
    # No wrapper on the hot path: the bound methods of the parts themselves.
    assert getattr(reactor.enqueue, "__self__", None) is reactor.enqueuer
    assert getattr(reactor.start_node, "__self__", None) is reactor.members
