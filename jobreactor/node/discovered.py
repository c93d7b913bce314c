"""Discovered: the distributors a node finds through its group's registry, and re-routing.

With a `discovery_url` a node registers itself (kind "node", `Node.stats()`), and a `Watcher`
hands it the live distributors of its group on every join/leave/adopt hint and on each of its
own beats. It dials each live address it has no link to, unless a link (static or found) to
that very instance already exists: one link per distributor instance, whatever the address.
The registry is a hint, not the truth: a working link stays whatever a read says (a FLUSHDB,
a Redis restarted empty, a member entry deleted or expired while its owner lives). A link is
retired only once it is dead and its address is no longer listed (its instance left or died):
it is closed and never redialled, and the jobs the node holds from it and its unacknowledged
reports stay with it. A later link welcomed by that same instance takes them back. When a
live distributor lists that instance id in its `adopted` stats, the node re-routes them there:
the jobs are re-announced in a `Held` frame (the adopter knows them from the journal it
adopted, so it binds them to this connection) and the reports follow, so the feedbacks fire in
the adopter. A distributor that is not redis-backed leaves no journal: its jobs run here and
their reports are dropped with the node (memory semantics).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from jobreactor.config import ReactorConfig
from jobreactor.discovery.keys import GroupKeys
from jobreactor.discovery.registry import REDIS_ERRORS, Member, Registration, connect
from jobreactor.discovery.watch import Watcher
from jobreactor.node.link import DistributorLink
from jobreactor.node.membership import Membership

logger = logging.getLogger("jobreactor.node")


class Discovered:
    def __init__(
        self,
        membership: Membership,
        url: str,
        group: str,
        *,
        settings: ReactorConfig,
        node_name: str,
        secret: bytes | None,
        stats: Callable[[], dict[str, Any]],
        stopping: Callable[[], bool],
    ) -> None:
        self.members = membership
        self._name = node_name
        self._settings = settings
        self._stopping = stopping
        self.client = connect(url)
        self.keys = GroupKeys(settings.redis_prefix, group)
        self.registration = Registration(
            self.client,
            self.keys,
            "node",
            node_name,
            stats,
            beat=settings.registry_beat,
            ttl=settings.registry_ttl,
            on_beat=self._on_beat,
            secret=secret,
        )
        self.watcher = Watcher(
            self.client, self.keys, settings.redis_prefix, self._on_members, secret=secret
        )
        self.links: dict[str, DistributorLink] = {}  # address -> link dialled by discovery
        self.retired: dict[str, DistributorLink] = {}  # instance id -> link that left
        self._retired_at: dict[str, float] = {}
        self._routes: dict[str, str] = {}  # instance id -> address of the one that adopted it
        self._rerouted: set[str] = set()
        self._pairs_told: set[str] = set()  # instances reached by two static links (logged)
        self._journaled: dict[str, bool] = {}  # address -> it keeps a journal (redis storage)

    async def start(self) -> None:
        """Register and watch; if Redis is away now, both keep retrying (static links work)."""
        try:
            await self.registration.beat()
        except REDIS_ERRORS as exc:
            logger.warning(
                "node %s: discovery redis unreachable (%s); retrying each beat",
                self._name,
                exc,
            )
            self.registration.unreachable()  # logged: the beat loop says only when it is back
        self.registration.start()
        self.watcher.start()

    async def _on_beat(self) -> None:
        self.watcher.refresh()

    def _on_members(self, members: list[Member]) -> None:
        if self._stopping():
            return
        live = {m.address: m for m in members if m.address}
        for address, link in list(self.links.items()):
            # The registry is a hint: a link that works stays, whatever one read says (a
            # FLUSHDB, a Redis restarted empty, a late beat). Only a dead one that the
            # registry no longer lists is given up (its instance left, or died and expired).
            if address not in live and not link.is_ready:
                self._retire(address)
        self._forget_unadopted()
        for address, link in self.links.items():
            if address in live:  # its handshake must show this very instance
                link.handshake.expected_instance = live[address].iid
        for address, member in live.items():
            self._journaled[address] = bool(member.stats.get("journal", True))
        self._dial_new(live)
        for member in members:
            for old in member.stats.get("adopted", ()):
                if isinstance(old, str) and old not in self._rerouted:
                    self._routes[old] = member.address
        self.reroute()

    def _dial_new(self, live: dict[str, Member]) -> None:
        """Dial each live address we have no link to, unless its instance already has one."""
        static = [link for link in self.members.links if link not in self.links.values()]
        if any(not link.tried for link in static):
            return  # a static address may be one of these: dial once it connected (or not)
        configured = {link.configured for link in static} | {link.peer for link in static}
        served = {link.instance for link in self.members.links if link.instance}
        for address, member in live.items():
            if address in self.links or address in configured or member.iid in served:
                continue  # one link per distributor instance, whatever address leads there
            host, _, port = address.rpartition(":")
            try:
                link = self.members.add_link(host, int(port), member.iid)
            except ValueError:
                logger.warning("registry entry with a bad address %r ignored", address)
                continue
            self.links[address] = link
            logger.info("%s: found distributor %s", self._name, address)

    def welcomed(self, link: DistributorLink) -> None:
        """`link` was welcomed: what is held for its instance goes there; one link per instance.

        Jobs and reports kept from a retired link to that same instance move to it. Another
        link to the same instance (the static `localhost:P` and the discovered `127.0.0.1:P`)
        makes a pair: the discovered one of the two yields its jobs and reports, and stops.
        """
        iid = link.instance
        self._retired_at.pop(iid, None)
        bucket = self.retired.pop(iid, None)
        if bucket is not None and bucket is not link:
            self.members.rehome(bucket, link)
        for other in list(self.members.links):
            if other is link or other.instance != iid:
                continue
            found = set(self.links.values())
            # Not from inside `link`'s Welcome: it finishes first (and a stopped link is done).
            if other in found:
                asyncio.get_running_loop().call_soon(self._yield, other, link)
            elif link in found:
                asyncio.get_running_loop().call_soon(self._yield, link, other)
            elif iid not in self._pairs_told:
                self._pairs_told.add(iid)
                logger.warning(
                    "%s: static distributors %s and %s are one distributor (instance %s): "
                    "list it once",
                    self._name,
                    other.configured,
                    link.configured,
                    iid,
                )

    def _yield(self, duplicate: DistributorLink, keeper: DistributorLink) -> None:
        address = next((a for a, li in self.links.items() if li is duplicate), None)
        if address is None or keeper not in self.members.links:
            return  # retired meanwhile
        del self.links[address]
        logger.info(
            "%s: %s and %s lead to one distributor (instance %s); keeping %s",
            self._name,
            address,
            keeper.configured,
            keeper.instance,
            keeper.configured,
        )
        self.members.remove_link(duplicate)
        self.members.rehome(duplicate, keeper)

    def link_down(self, link: DistributorLink) -> None:
        """A discovered link died: look at the registry (gone for good, or redialled)."""
        if link in self.links.values():
            self.watcher.refresh()

    def link_tried(self, link: DistributorLink) -> None:
        """A static link's first dial ended: new addresses may be dialled now (not the one it
        reached: `localhost:P` and `127.0.0.1:P` are one distributor)."""
        if link not in self.links.values():
            self.watcher.refresh()

    def _retire(self, address: str) -> None:
        link = self.links.pop(address)
        self.members.remove_link(link)
        logger.info("%s: distributor %s left; no more dialling it", self._name, address)
        if not self._journaled.pop(address, True):  # memory: nobody will adopt it
            self.members.outcomes_lost(link)
            return
        if link.instance and (len(link.reports) or self.members.holds_from(link)):
            self.retired[link.instance] = link  # until an adopter shows up, or never
            self._retired_at[link.instance] = time.monotonic()

    def _forget_unadopted(self) -> None:
        """A retired link nobody adopted (a memory distributor) stops being kept."""
        limit = time.monotonic() - 2 * self._settings.adopt_grace
        for iid, since in list(self._retired_at.items()):
            if since < limit:
                del self._retired_at[iid]
                link = self.retired.pop(iid)
                logger.warning(
                    "%s: nobody adopted distributor %s (%s); its %d unacknowledged report(s) "
                    "are dropped (a memory-backed distributor keeps nothing)",
                    self._name,
                    link.configured,
                    iid,
                    len(link.reports),
                )

    def reroute(self) -> None:
        """Hand the jobs and reports of adopted instances to their adopters' links, if ready."""
        for old, address in list(self._routes.items()):
            target = self.links.get(address) or next(
                (li for li in self.members.links if li.configured == address), None
            )
            if target is None or not target.is_ready:
                continue  # again when that link is welcomed
            del self._routes[old]
            self._rerouted.add(old)
            self._retired_at.pop(old, None)
            self.members.reroute(
                old, self.retired.pop(old, None) or self._adopted_link(old), target
            )

    def _adopted_link(self, old: str) -> DistributorLink | None:
        """A link still open to instance `old`, which was adopted: it stalled past adopt_grace
        and is fenced when it resumes, so what the link holds goes to the adopter. A found
        link is given up (its address is listed again under the instance's next id)."""
        for address, link in list(self.links.items()):
            if link.instance == old:
                del self.links[address]
                self.members.remove_link(link)
                logger.info(
                    "%s: distributor %s was adopted; not dialled again", self._name, address
                )
                return link
        return next((li for li in self.members.links if li.instance == old), None)

    async def stop(self) -> None:
        await self.watcher.stop()
        await self.registration.stop()
        await self.client.aclose()
