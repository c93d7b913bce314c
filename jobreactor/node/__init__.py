"""The worker side: links to distributors, timers, the run loop."""

from jobreactor.node.node import Node

__all__ = ["Node"]
