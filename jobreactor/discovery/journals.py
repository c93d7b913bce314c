"""Journal ownership in a group: claim at start, prove it on every beat, adopt the dead's.

A redis-backed distributor with discovery owns one journal (its durable queue). The group's
registry records the owner's iid and a fencing epoch for each journal, and when the owner last
beat. A journal whose owner stopped beating for `adopt_grace` (longer than the registry TTL)
and whose member entry is gone may be adopted by a live distributor of the group: one Lua
call checks all that and makes it the owner (epoch + 1), so two adopters never both win. The
adopter moves the jobs into its own journal, then finishes the record (`finish`: it stays a
day as a tombstone). An owner that was only paused finds on its next beat that it no longer
owns its journal (`fenced`) and stops using it. A record that is simply gone (the registry
was flushed, evicted or restarted empty) is written again by its owner's next beat: a
registry fault is not an adoption.
A graceful stop releases its journal (`release`): adoptable at once, no grace.
"""

from __future__ import annotations

import redis.asyncio as aredis

from jobreactor.discovery.keys import GroupKeys

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

_CLAIM_OWN = (
    _NOW
    + """
-- KEYS[1] journals zset, KEYS[2] journal hash, KEYS[3] the member hash of the owner read
-- before (ARGV[3], "" if none); ARGV[1] iid, ARGV[2] journal id.
-- Binding the address proves the previous owner at it is gone, unless a live adopter is
-- moving that journal right now (then: -1, use another journal id). -2: owner changed, retry.
local owner = redis.call('HGET', KEYS[2], 'owner') or ''
if owner ~= ARGV[3] then return -2 end
if owner ~= '' and redis.call('HGET', KEYS[2], 'adopting') == '1'
   and redis.call('EXISTS', KEYS[3]) == 1 then return -1 end
local epoch = redis.call('HINCRBY', KEYS[2], 'epoch', 1)
redis.call('HSET', KEYS[2], 'owner', ARGV[1], 'adopting', '0')
redis.call('HDEL', KEYS[2], 'finished', 'released')
redis.call('PERSIST', KEYS[2])  -- an adopter's tombstone, ours now
redis.call('ZADD', KEYS[1], now, ARGV[2])
return epoch
"""
)

_TOUCH = (
    _NOW
    + """
-- KEYS[1] journals zset, KEYS[2] journal hash; ARGV[1] iid, ARGV[2] journal id, ARGV[3] epoch.
-- 1: still ours (seen now); 0: fenced (adopted, or claimed by a later owner). No record at
-- all is not an adoption (that leaves a tombstone, see _FINISH): the registry was flushed,
-- evicted or restarted empty; the record is written again and we go on owning it.
local owner = redis.call('HGET', KEYS[2], 'owner')
if not owner then
  redis.call('HSET', KEYS[2], 'owner', ARGV[1], 'epoch', ARGV[3], 'adopting', '0')
elseif owner ~= ARGV[1] or redis.call('HGET', KEYS[2], 'epoch') ~= ARGV[3] then
  return 0
end
redis.call('ZADD', KEYS[1], now, ARGV[2])
return 1
"""
)

_ADOPT = (
    _NOW
    + """
-- KEYS[1] journals zset, KEYS[2] journal hash, KEYS[3] the old owner's member hash;
-- ARGV[1] adopter iid, ARGV[2] journal id, ARGV[3] old owner iid, ARGV[4] grace ms.
if redis.call('HGET', KEYS[2], 'owner') ~= ARGV[3] then return 0 end
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
local seen = redis.call('ZSCORE', KEYS[1], ARGV[2])
if seen and tonumber(seen) > now - tonumber(ARGV[4]) then return 0 end
local epoch = redis.call('HINCRBY', KEYS[2], 'epoch', 1)
redis.call('HSET', KEYS[2], 'owner', ARGV[1], 'adopting', '1')
redis.call('PERSIST', KEYS[2])
redis.call('ZADD', KEYS[1], now, ARGV[2])
return epoch
"""
)

_RELEASE = """
-- KEYS[1] journals zset, KEYS[2] journal hash; ARGV[1] iid, ARGV[2] journal id, ARGV[3] epoch.
-- A graceful stop hands the journal to the group: seen "never" (score 0), so the next live
-- member's beat adopts it now instead of after adopt_grace. Fenced: only the owner at its
-- epoch may release it (1), else 0.
if redis.call('HGET', KEYS[2], 'owner') ~= ARGV[1]
   or redis.call('HGET', KEYS[2], 'epoch') ~= ARGV[3] then return 0 end
redis.call('HSET', KEYS[2], 'released', '1')
redis.call('ZADD', KEYS[1], 0, ARGV[2])
return 1
"""

_FINISH = """
-- KEYS[1] journals zset, KEYS[2] journal hash; ARGV[1] iid, ARGV[2] journal id,
-- ARGV[3] how long (ms) an adopter keeps the record as a tombstone, 0 to delete it.
-- The tombstone names the adopter, so a stalled old owner learns it lost its journal
-- (fenced) rather than finding no record, which means Redis lost it (restarted empty).
if redis.call('HGET', KEYS[2], 'owner') ~= ARGV[1] then return 0 end
if tonumber(ARGV[3]) > 0 then
  redis.call('HSET', KEYS[2], 'adopting', '0', 'finished', '1')
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
else
  redis.call('DEL', KEYS[2])
end
redis.call('ZREM', KEYS[1], ARGV[2])
return 1
"""

# How long an adopted journal's record names its adopter (see _FINISH); it has a TTL.
TOMBSTONE_S = 86_400.0


class JournalClaims:
    """The journal records of one group (see the module docstring). Raises redis errors."""

    def __init__(self, client: aredis.Redis[str], keys: GroupKeys) -> None:
        self.client = client
        self.keys = keys
        self._claim_own = client.register_script(_CLAIM_OWN)
        self._touch = client.register_script(_TOUCH)
        self._adopt = client.register_script(_ADOPT)
        self._finish = client.register_script(_FINISH)
        self._release = client.register_script(_RELEASE)

    def _keys(self, journal_id: str) -> list[str]:
        return [self.keys.journals, self.keys.journal(journal_id)]

    async def claim_own(self, journal_id: str, iid: str) -> int:
        """Own `journal_id` now; its new epoch, or -1 if a live adopter is moving it."""
        while True:
            owner = await self.client.hget(self.keys.journal(journal_id), "owner") or ""
            keys = [*self._keys(journal_id), self.keys.member(owner or iid)]
            epoch = int(await self._claim_own(keys=keys, args=[iid, journal_id, owner]))
            if epoch != -2:
                return epoch

    async def touch(self, journal_id: str, iid: str, epoch: int) -> int:
        """Still the owner at this epoch? (and mark it seen now). 1: yes; 0: fenced (another
        distributor owns it now); -1: the record is gone (Redis lost it; nobody adopted it)."""
        args = [iid, journal_id, str(epoch)]
        return int(await self._touch(keys=self._keys(journal_id), args=args))

    async def release(self, journal_id: str, iid: str, epoch: int) -> bool:
        """Hand our journal to the group: adoptable at once (graceful stop). False: not ours."""
        args = [iid, journal_id, str(epoch)]
        return bool(await self._release(keys=self._keys(journal_id), args=args))

    async def stale(self, grace: float, limit: int = 16) -> list[tuple[str, str]]:
        """Journals not seen for `grace` seconds: (journal id, owner iid), oldest first."""
        seconds, micros = await self.client.time()
        cutoff = seconds * 1000 + micros // 1000 - round(grace * 1000)
        ids: list[str] = await self.client.zrangebyscore(
            self.keys.journals, "-inf", cutoff, start=0, num=limit
        )
        out: list[tuple[str, str]] = []
        for journal_id in ids:
            owner = await self.client.hget(self.keys.journal(journal_id), "owner")
            if owner:
                out.append((journal_id, owner))
            else:  # record gone (finished): drop the index entry
                await self.client.zrem(self.keys.journals, journal_id)
        return out

    async def adopt(self, journal_id: str, owner: str, iid: str, grace: float) -> int:
        """Atomically take a dead owner's journal; its new epoch, or 0 if not (now) adoptable."""
        keys = [*self._keys(journal_id), self.keys.member(owner)]
        args = [iid, journal_id, owner, str(round(grace * 1000))]
        return int(await self._adopt(keys=keys, args=args))

    async def finish(self, journal_id: str, iid: str, *, adopted: bool = False) -> bool:
        """Forget the record of a journal we own and emptied (`adopted`: keep a tombstone
        naming us for TOMBSTONE_S, so its stalled old owner knows it was fenced)."""
        tombstone_ms = round(TOMBSTONE_S * 1000) if adopted else 0
        args = [iid, journal_id, str(tombstone_ms)]
        return bool(await self._finish(keys=self._keys(journal_id), args=args))
