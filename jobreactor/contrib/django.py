"""Django for nodes: `imports = ["jobreactor.contrib.django"]` in node.toml (or
`jobreactor node --import jobreactor.contrib.django`) sets Django up before the jobs load, so
job files may use the ORM and `django.conf.settings`.

The settings module comes from `DJANGO_SETTINGS_MODULE`, as for `manage.py`; the project root
must be importable (the node's working directory, or `app_dir`). Each job runs on the node's
loop: ORM calls are blocking, so give such jobs `{"defer": True}` (the thread pool) or wrap
them in `asgiref.sync.sync_to_async` inside an `async def` job.
"""

from __future__ import annotations

import os

from jobreactor.errors import ConfigError

if not os.environ.get("DJANGO_SETTINGS_MODULE"):
    raise ConfigError(
        "jobreactor.contrib.django: set DJANGO_SETTINGS_MODULE (e.g. mysite.settings) in the "
        "node's environment, as for manage.py"
    )

import django  # type: ignore[import-untyped]

django.setup()
