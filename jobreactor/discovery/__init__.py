"""Discovery through Redis: distributors and nodes of a `group` find each other.

`live_members(redis, group)` is the reader for tools and dashboards; `Registration` and
`Watcher` are what distributors and nodes run; `GroupKeys` names every key. Importing this
package imports redis-py; distributors and nodes without `discovery_url` never do.
"""

from jobreactor.discovery.keys import GroupKeys, Kind, new_iid
from jobreactor.discovery.registry import Member, Registration, live_members

__all__ = ["GroupKeys", "Kind", "Member", "Registration", "live_members", "new_iid"]
