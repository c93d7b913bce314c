"""The worker side: links to distributors, timers, the run loop."""

from jobreactor.node.alone import warn_if_alone
from jobreactor.node.node import Node

__all__ = ["Node", "warn_if_alone"]
