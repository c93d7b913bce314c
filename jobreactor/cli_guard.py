"""Bad input at the command line ends in one clear line and exit 2, never a traceback.

`jobreactor node|distributor` check here what pydantic cannot see in one field: the node name
once its template is filled in, an empty secret, TLS files that are not there, a discovery URL
that is not Redis, a config file that is not UTF-8 (issue 18).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from jobreactor.config import DistributorConfig, NodeConfig, ReactorConfig
from jobreactor.errors import ConfigError, InvalidOptions
from jobreactor.node.identity import expand_node_name
from jobreactor.protocol.auth import secret_bytes

T = TypeVar("T")
_REDIS_SCHEMES = frozenset({"redis", "rediss", "unix"})


def tcp_port(text: str) -> int:
    """argparse type for a port: 0..65535 (argparse prints the error and exits 2)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is outside 0..65535")
    return port


def load_config(loader: Callable[..., T], path: str | None, **overrides: Any) -> T:
    """`loader(path, **overrides)`, with a file that is not UTF-8 as a ConfigError."""
    try:
        return loader(path, **overrides)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def check_node_config(config: NodeConfig) -> None:
    """What the model can't see: the expanded name, secret, TLS files, discovery URL."""
    try:
        expand_node_name(config.name)
    except InvalidOptions as exc:
        raise ConfigError(str(exc)) from None
    _check_secret(config.secret)
    _check_settings(config.settings)


def check_distributor_config(config: DistributorConfig) -> None:
    _check_secret(config.secret)
    _check_settings(config.settings)


def _check_secret(secret: str | None) -> None:
    secret_bytes(secret)  # ConfigError for ""


def _check_settings(settings: ReactorConfig) -> None:
    _check_secret(settings.secret)
    for key in ("tls_cert", "tls_key", "tls_ca"):
        path = getattr(settings, key)
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"{key} = {path!r}: no such file")
    url = settings.discovery_url
    if url is not None and urlsplit(url).scheme not in _REDIS_SCHEMES:
        raise ConfigError(
            f"discovery_url = {url!r}: expected a Redis URL (redis://, rediss:// or unix://)"
        )
