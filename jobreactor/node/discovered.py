"""Discovered: the distributors a node finds through its group's registry, and re-routing.

With a `discovery_url` a node registers itself (kind "node", `Node.stats()`), and a `Watcher`
hands it the live distributors of its group on every join/leave/adopt hint and on each of its
own beats. It dials each live address it has no link to (static `distributors` keep their
own links), and retires the link of an address that left or expired: that link is closed and
never redialled, and the jobs the node holds from it and its unacknowledged reports stay with
it. When a live distributor lists that instance id in its `adopted` stats, the node re-routes
them there: the jobs are re-announced in a `Held` frame (the adopter knows them from the
journal it adopted, so it binds them to this connection) and the reports follow, so the
feedbacks fire in the adopter. A distributor that is not redis-backed leaves no journal: its
jobs run here and their reports are dropped with the node (memory semantics).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from jobreactor.discovery.keys import GroupKeys
from jobreactor.discovery.registry import REDIS_ERRORS, Member, Registration, connect
from jobreactor.discovery.watch import Watcher

if TYPE_CHECKING:
    from jobreactor.node.link import DistributorLink
    from jobreactor.node.node import Node

logger = logging.getLogger("jobreactor.node")


class Discovered:
    def __init__(self, node: Node, url: str, group: str) -> None:
        settings = node.settings
        self.node = node
        self.client = connect(url)
        self.keys = GroupKeys(settings.redis_prefix, group)
        self.registration = Registration(
            self.client,
            self.keys,
            "node",
            node.name,
            node.stats,
            beat=settings.registry_beat,
            ttl=settings.registry_ttl,
            on_beat=self._on_beat,
            secret=node.secret,
        )
        self.watcher = Watcher(
            self.client, self.keys, settings.redis_prefix, self._on_members, secret=node.secret
        )
        self.links: dict[str, DistributorLink] = {}  # address -> link dialled by discovery
        self.retired: dict[str, DistributorLink] = {}  # instance id -> link that left
        self._retired_at: dict[str, float] = {}
        self._routes: dict[str, str] = {}  # instance id -> address of the one that adopted it
        self._rerouted: set[str] = set()
        self._journaled: dict[str, bool] = {}  # address -> it keeps a journal (redis storage)

    async def start(self) -> None:
        """Register and watch; if Redis is away now, both keep retrying (static links work)."""
        try:
            await self.registration.beat()
        except REDIS_ERRORS as exc:
            logger.warning(
                "node %s: discovery redis unreachable (%s); retrying each beat",
                self.node.name,
                exc,
            )
        self.registration.start()
        self.watcher.start()

    async def _on_beat(self) -> None:
        self.watcher.refresh()

    def _on_members(self, members: list[Member]) -> None:
        if self.node.stopping:
            return
        live = {m.address: m for m in members if m.address}
        static = {link.configured for link in self.node.links if link not in self.links.values()}
        for address in list(self.links):
            if address not in live:
                self._retire(address)
        self._forget_unadopted()
        for address, member in live.items():
            if address not in self.links and address not in static:
                host, _, port = address.rpartition(":")
                try:
                    self.links[address] = self.node.add_link(host, int(port))
                except ValueError:
                    logger.warning("registry entry with a bad address %r ignored", address)
                    continue
                logger.info("%s: found distributor %s", self.node.name, address)
            if address in self.links:  # its handshake must show this very instance
                self.links[address].expected_instance = member.iid
            self._journaled[address] = bool(member.stats.get("journal", True))
        for member in members:
            for old in member.stats.get("adopted", ()):
                if isinstance(old, str) and old not in self._rerouted:
                    self._routes[old] = member.address
        self.reroute()

    def _retire(self, address: str) -> None:
        link = self.links.pop(address)
        self.node.remove_link(link)
        logger.info("%s: distributor %s left; no more dialling it", self.node.name, address)
        if not self._journaled.pop(address, True):  # memory: nobody will adopt it
            self.node.outcomes_lost(link)
            return
        if link.instance and (link.unacked_reports or self.node.holds_from(link)):
            self.retired[link.instance] = link  # until an adopter shows up, or never
            self._retired_at[link.instance] = time.monotonic()

    def _forget_unadopted(self) -> None:
        """A retired link nobody adopted (a memory distributor) stops being kept."""
        limit = time.monotonic() - 2 * self.node.settings.adopt_grace
        for iid, since in list(self._retired_at.items()):
            if since < limit:
                del self._retired_at[iid]
                link = self.retired.pop(iid)
                logger.warning(
                    "%s: nobody adopted distributor %s (%s); its %d unacknowledged report(s) "
                    "are dropped (a memory-backed distributor keeps nothing)",
                    self.node.name,
                    link.configured,
                    iid,
                    link.unacked_reports,
                )

    def reroute(self) -> None:
        """Hand the jobs and reports of adopted instances to their adopters' links, if ready."""
        for old, address in list(self._routes.items()):
            target = self.links.get(address) or next(
                (li for li in self.node.links if li.configured == address), None
            )
            if target is None or not target.is_ready:
                continue  # again when that link is welcomed
            del self._routes[old]
            self._rerouted.add(old)
            self._retired_at.pop(old, None)
            self.node.reroute(old, self.retired.pop(old, None), target)

    async def stop(self) -> None:
        await self.watcher.stop()
        await self.registration.stop()
        await self.client.aclose()
