"""Make the user's project importable in a node or a standalone distributor (like uvicorn's
`--app-dir`): the project root goes first on `sys.path`, then `imports` are imported.

A job file under `myapp/jobs/` that says `from myapp.mailer import send` then works when the
node starts from the project root, without PYTHONPATH; `imports` is where framework set-up
runs before the jobs load (`jobreactor.contrib.django` calls `django.setup()`).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterable
from pathlib import Path

from jobreactor.errors import ConfigError

__all__ = ["prepare_app"]


def prepare_app(app_dir: str | None, imports: Iterable[str] = ()) -> str:
    """Put `app_dir` (default: the working directory) first on sys.path, import `imports`;
    return the directory. A module that fails to import is a ConfigError naming it."""
    root = str(Path(app_dir or os.getcwd()).resolve())
    if not Path(root).is_dir():
        raise ConfigError(f"app_dir {root!r} does not exist or is not a directory")
    if root not in sys.path:
        sys.path.insert(0, root)
    for module in imports:
        try:
            importlib.import_module(module)
        except Exception as exc:
            raise ConfigError(
                f"import {module}: {type(exc).__name__}: {exc} (looked in {root} first; set "
                "app_dir / --app-dir to your project's root)"
            ) from exc
    return root
