"""Who a node is: its name (a template, so replicas of one node.toml differ) and its instance.

`name` may contain `{hostname}` (the short host name: the pod name under Kubernetes),
`{fqdn}` and `{pid}`; `{{` and `}}` are literal braces. The instance id is random per node
started: a distributor tells a reconnection of this node (same instance) from a second process
that claims the same name (another instance, refused while the first is connected).
"""

from __future__ import annotations

import os
import secrets
import socket
import string

from jobreactor.errors import InvalidOptions
from jobreactor.protocol.messages import MAX_NAME_CHARS

NAME_FIELDS = ("hostname", "fqdn", "pid")


def _fields() -> dict[str, str]:
    host = socket.gethostname()
    return {"hostname": host.split(".")[0], "fqdn": socket.getfqdn(), "pid": str(os.getpid())}


def expand_node_name(template: str) -> str:
    """The node name with `{hostname}`, `{fqdn}` and `{pid}` filled in."""
    try:
        parts = [p for p in string.Formatter().parse(template) if p[1] is not None]
    except ValueError as exc:
        raise InvalidOptions(f"node name {template!r}: {exc} (write {{{{ for a brace)") from None
    unknown = sorted(
        {str(field) for _, field, spec, conv in parts if field not in NAME_FIELDS or spec or conv}
    )
    if unknown:
        raise InvalidOptions(
            f"node name {template!r} uses unknown field(s) {unknown}; "
            f"known: {', '.join('{' + f + '}' for f in NAME_FIELDS)}"
        )
    name = template.format_map(_fields())
    if not name or len(name) > MAX_NAME_CHARS:
        raise InvalidOptions(
            f"node name must be 1 to {MAX_NAME_CHARS} characters, got {len(name)} "
            "(a distributor refuses longer names at every connect)"
        )
    return name


def new_instance_id() -> str:
    return secrets.token_hex(8)
