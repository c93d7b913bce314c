"""Discovery through Redis: distributors and nodes of a `group` find each other.

`live_members(redis, group)` is the reader for tools and dashboards; `Registration` and
`Watcher` are what distributors and nodes run; `GroupKeys` names every key.
"""

from jobreactor.discovery.keys import GroupKeys, Kind
from jobreactor.discovery.registry import Member, Registration, live_members, new_iid

__all__ = ["GroupKeys", "Kind", "Member", "Registration", "live_members", "new_iid"]
