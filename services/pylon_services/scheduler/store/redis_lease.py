"""The leader lease in Redis (``Lease``): one key with a time to live, taken with SET NX and
renewed or given back only by the identity that holds it (a plain GET + EXPIRE could extend
someone else's lease)."""

from __future__ import annotations

import redis.asyncio as aioredis

from pylon_services.scheduler.store.keys import LEASE

_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
_GIVE_BACK = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


class RedisLease:
    def __init__(self, redis: aioredis.Redis, key: str = LEASE) -> None:
        self.r = redis
        self.key = key
        self._renew = redis.register_script(_RENEW)
        self._give_back = redis.register_script(_GIVE_BACK)

    async def hold(self, identity: str, ttl_s: float) -> bool:
        ms = int(ttl_s * 1000)
        if await self.r.set(self.key, identity, nx=True, px=ms):
            return True
        return bool(await self._renew(keys=[self.key], args=[identity, ms]))

    async def give_back(self, identity: str) -> None:
        await self._give_back(keys=[self.key], args=[identity])

