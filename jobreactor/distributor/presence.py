"""Presence: a distributor's membership in its discovery group, and adoption of dead journals.

Started by a distributor that has a `discovery_url`. It registers the advertised address (with
`Distributor.stats()`) and beats. With redis storage it also owns its journal in the group
(`JournalClaims`): on every beat it proves it still owns it (else it was adopted while this
process stalled: `Distributor.fenced` stops using it), then looks for journals whose owner
stopped beating more than `adopt_grace` ago and adopts them (one at a time, atomically): their
jobs move into this distributor's journal, pending ones are dispatched, ones out on nodes wait
for those nodes, and named feedbacks fire here. Nodes learn who adopted whom from the `adopted`
list in this distributor's stats (and an `adopt` hint on the events channel).
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from typing import Any, Protocol

from jobreactor.config import ReactorConfig
from jobreactor.discovery.journals import JournalClaims
from jobreactor.discovery.keys import GroupKeys
from jobreactor.discovery.registry import REDIS_ERRORS, Registration, connect
from jobreactor.distributor.journal import Journal
from jobreactor.distributor.recovery import journal_base
from jobreactor.distributor.releases import ReleaseListener
from jobreactor.distributor.status import Status
from jobreactor.errors import StorageUnavailable
from jobreactor.storage.codec import redact_url

logger = logging.getLogger("jobreactor.distributor")

_ADOPTED_KEPT = 64  # adopted instance ids listed in stats (nodes re-route their jobs by them)


class Member(Protocol):
    """What presence reads of its distributor, and tells it (the coordinator implements it)."""

    settings: ReactorConfig
    address: str
    iid: str  # renewed when fenced
    secret: bytes | None
    journal: Journal | None
    status: Status

    def stats(self) -> dict[str, Any]: ...

    def fenced(self) -> None: ...

    async def adopt_journal(self, queue: str, owner: str) -> tuple[int, set[str]]: ...

    def resume_dispatch(self) -> None: ...


class Presence:
    def __init__(self, distributor: Member, url: str, group: str) -> None:
        settings = distributor.settings
        self.distributor = distributor
        self.url = url
        self.client = connect(url)
        self.keys = GroupKeys(settings.redis_prefix, group)
        self.grace = settings.adopt_grace
        self.registration = Registration(
            self.client,
            self.keys,
            "distributor",
            distributor.address,
            distributor.stats,
            beat=settings.registry_beat,
            ttl=settings.registry_ttl,
            on_beat=self._after_beat,
            iid=distributor.iid,
            on_round=self._round_done,
            secret=distributor.secret,
        )
        self.claims = JournalClaims(self.client, self.keys) if distributor.journal else None
        # Journals released by recycling members are adopted at once, not at our next beat.
        self.releases = (
            ReleaseListener(self.client, self.keys.events, self._adopt_stale)
            if self.claims is not None
            else None
        )
        self.epoch = 0
        self.adopted: deque[str] = deque(maxlen=_ADOPTED_KEPT)
        self._ttl = settings.registry_ttl
        self._held = False

    async def start(self) -> None:
        """Own our journal, then join (first beat).

        Without a journal (memory storage) an unreachable Redis does not stop the start: the
        distributor listens, static nodes work, and the beat loop registers it once Redis
        answers (logged once now, once then). With a journal (redis storage) the journal must
        be owned before anything runs: StorageUnavailable if Redis is away (`Startup` tries
        again later).
        """
        try:
            if self.claims is not None:
                await self._claim_journal()
            await self.registration.beat()
        except REDIS_ERRORS as exc:
            if self.claims is not None:
                raise StorageUnavailable(
                    f"discovery: redis unreachable at {redact_url(self.url)} ({exc}); "
                    "check discovery_url and that redis-server runs"
                ) from exc
            logger.warning(
                "discovery: redis unreachable at %s (%s); distributor %s works with the nodes "
                "that list it and registers in group %s once redis answers",
                redact_url(self.url),
                exc,
                self.distributor.address,
                self.keys.group,
            )
            self.registration.unreachable()
        self.registration.start()
        if self.releases is not None:
            self.releases.start()

    def hold_dispatch(self) -> bool:
        """True if dispatching must wait for the next beat round (which proves the journal ours).

        A journal owner whose beats stopped longer than registry_ttl (a blocked loop, SIGSTOP)
        may have been adopted meanwhile; it must not send a job it lost before it knows.
        """
        if self.claims is None or time.monotonic() - self.registration.last_round <= self._ttl:
            return False
        self._held = True
        return True

    def _round_done(self) -> None:
        if self._held:
            self._held = False
            self.distributor.resume_dispatch()

    async def _claim_journal(self) -> None:
        assert self.claims is not None
        journal = self.distributor.journal
        assert journal is not None
        self.epoch = await self.claims.claim_own(journal.queue, self.distributor.iid)
        if self.epoch == -1:  # a live adopter is emptying the journal at our address
            journal.switch(f"{journal.queue}:{self.distributor.iid}")
            self.epoch = await self.claims.claim_own(journal.queue, self.distributor.iid)

    async def _after_beat(self) -> None:
        if self.claims is None or self.distributor.status.closed:
            return
        journal = self.distributor.journal
        assert journal is not None
        owned = await self.claims.touch(journal.queue, self.distributor.iid, self.epoch)
        if owned == -1:  # Redis lost the record (restarted empty): nobody took it, claim again
            logger.warning(
                "distributor %s: the registry had no record of its journal (Redis restarted "
                "empty or was flushed?); claiming it again",
                self.distributor.address,
            )
            self.epoch = await self.claims.claim_own(journal.queue, self.distributor.iid)
            return
        if not owned:
            self.distributor.fenced()
            await self.registration.renew(self.distributor.iid)
            journal.switch(f"{journal_base(self.distributor.address)}:{self.distributor.iid}")
            self.epoch = await self.claims.claim_own(journal.queue, self.distributor.iid)
            return
        await self._adopt_stale()

    async def _adopt_stale(self) -> None:
        """Adopt the journals whose owner is gone (stopped beating, or released it)."""
        journal = self.distributor.journal
        if self.claims is None or journal is None or self.distributor.status.closed:
            return
        for journal_id, owner in await self.claims.stale(self.grace):
            if journal_id != journal.queue:
                await self._adopt(journal_id, owner)

    async def _adopt(self, journal_id: str, owner: str) -> None:
        assert self.claims is not None
        if not await self.claims.adopt(journal_id, owner, self.distributor.iid, self.grace):
            return  # someone else was quicker, or the owner came back
        count, senders = await self.distributor.adopt_journal(journal_id, owner)
        # Nodes re-route by these: the owner, and those whose journals it had adopted (a
        # recycling adopter hands on jobs its nodes still know by their first sender).
        self.adopted.extend(sorted(senders - {owner}))
        self.adopted.append(owner)
        await self.claims.finish(journal_id, self.distributor.iid, adopted=True)
        message = {"event": "adopt", "from": owner, "by": self.distributor.iid}
        await self.client.publish(self.keys.events, json.dumps(message))
        await self.registration.beat()  # nodes re-route by our `adopted` list: publish it now
        logger.warning(
            "distributor %s adopted journal %s of vanished distributor %s: %d job(s)",
            self.distributor.address,
            journal_id,
            owner,
            count,
        )

    async def release(self, *, journal_empty: bool) -> bool:
        """Leave the group and hand our journal to it (graceful stop of a recycling worker):
        the next beat of a live member adopts it, not adopt_grace later. True if released."""
        await self._leave()  # first: an adopter checks that our entry is gone
        journal = self.distributor.journal
        released = False
        if self.claims is not None and journal is not None:
            try:
                if journal_empty:
                    await self.claims.finish(journal.queue, self.distributor.iid)
                else:
                    released = await self.claims.release(
                        journal.queue, self.distributor.iid, self.epoch
                    )
                    event = {"event": "release", "from": self.distributor.iid}
                    await self.client.publish(self.keys.events, json.dumps(event))
            except REDIS_ERRORS as exc:
                logger.warning(
                    "distributor %s could not release its journal (%s): it is adopted "
                    "after adopt_grace=%.0fs instead",
                    self.distributor.address,
                    exc,
                    self.grace,
                )
        await self.client.aclose()
        return released

    async def _leave(self) -> None:
        if self.releases is not None:
            await self.releases.stop()
        await self.registration.stop()

    async def abandon(self) -> None:
        """The distributor failed to start after we joined: leave Redis as we found it. A
        journal record we created (epoch 1) goes; an older one (a previous instance at this
        address left it) is released for adoption at once. Best effort."""
        await self._leave()
        journal = self.distributor.journal
        try:
            if self.claims is not None and journal is not None and self.epoch > 0:
                iid = self.distributor.iid
                if self.epoch == 1:
                    await self.claims.finish(journal.queue, iid)
                else:
                    await self.claims.release(journal.queue, iid, self.epoch)
        except REDIS_ERRORS as exc:
            logger.warning("could not withdraw the journal record of a failed start: %s", exc)
        await self.client.aclose()

    async def stop(self, journal_empty: bool) -> None:
        """Leave the group; forget our journal record if nothing is left in it."""
        await self._leave()
        journal = self.distributor.journal
        if self.claims is not None and journal is not None and journal_empty:
            try:
                await self.claims.finish(journal.queue, self.distributor.iid)
            except REDIS_ERRORS as exc:
                logger.info("could not forget the journal record: %s", exc)
        await self.client.aclose()
