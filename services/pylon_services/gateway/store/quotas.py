"""Serving quotas in Redis, shared by every gateway replica: token buckets (requests/min and
tokens/min, per tenant and per API key), per-tenant concurrency leases, and the tenants' limits
that admins set.

Each check is one Lua script, so concurrent gateways never both take the last tokens. A bucket
holds a minute's worth (its limit) and refills continuously at limit/60 per second; its level
and last update are a hash, timed by Redis's clock (``TIME``) so gateways' clocks do not matter.
A request takes from every bucket that applies or from none. Settlement gives back what a
request reserved and did not use (and takes what it used beyond, leaving a debt that later
requests wait out). Concurrency is a sorted set of leases scored by their expiry, so a gateway
that dies holding leases frees them when they expire.

Every key of a tenant carries the hash tag ``{tenant}``, so a script's keys share one cluster slot.
"""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as aioredis

from pylon_services.gateway.domain.admission import Bucket, Verdict, bucket_key
from pylon_services.runtime.redis_text import as_text

__all__ = ["Bucket", "QuotaStore", "Verdict", "bucket_key", "lease_key"]

_LIMITS = "pylon:gateway:limits"

# KEYS: the buckets, then the tenant's lease set. ARGV: bucket count, (limit, cost) per bucket,
# then the concurrency limit (0: none), the lease id and its time to live (ms).
# Returns {1} admitted, {0, index, wait_ms} refused (index: the bucket, or count+1 for the
# concurrency cap), {-1, index} a cost above the bucket's whole limit (no wait makes it fit).
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = tonumber(ARGV[1])
local levels = {}
local wait, slow = 0, 0
for i = 1, n do
  local cap, cost = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  if cost > cap then return {-1, i} end
  local h = redis.call('HMGET', KEYS[i], 'l', 't')
  local level = cap
  if h[1] then level = math.min(cap, tonumber(h[1]) + (now - tonumber(h[2])) * cap / 60000) end
  levels[i] = level
  if level < cost then
    local w = (cost - level) * 60000 / cap
    if w > wait then wait, slow = w, i end
  end
end
if wait > 0 then return {0, slow, math.ceil(wait)} end
local climit, lease, ttl = tonumber(ARGV[2 * n + 2]), ARGV[2 * n + 3], tonumber(ARGV[2 * n + 4])
if climit > 0 then
  local ck = KEYS[n + 1]
  redis.call('ZREMRANGEBYSCORE', ck, '-inf', now)
  if redis.call('ZCARD', ck) >= climit then return {0, n + 1, 1000} end
  redis.call('ZADD', ck, now + ttl, lease)
  redis.call('PEXPIRE', ck, ttl)
end
for i = 1, n do
  local cap, cost = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  local level = levels[i] - cost
  redis.call('HSET', KEYS[i], 'l', level, 't', now)
  -- Untouched, a bucket is full again after this long, so it need not be kept.
  redis.call('PEXPIRE', KEYS[i], math.ceil((cap - level) * 60000 / cap) + 1000)
end
return {1}
"""

# KEYS: the token buckets to settle, then the lease set. ARGV: bucket count, (limit, refund) per
# bucket (a negative refund takes more), then the lease id.
_SETTLE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = tonumber(ARGV[1])
for i = 1, n do
  local cap, refund = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  local h = redis.call('HMGET', KEYS[i], 'l', 't')
  local level = cap
  if h[1] then level = math.min(cap, tonumber(h[1]) + (now - tonumber(h[2])) * cap / 60000) end
  level = math.min(cap, level + refund)
  redis.call('HSET', KEYS[i], 'l', level, 't', now)
  redis.call('PEXPIRE', KEYS[i], math.ceil((cap - level) * 60000 / cap) + 1000)
end
redis.call('ZREM', KEYS[n + 1], ARGV[2 * n + 2])
return 1
"""


def lease_key(tenant: str) -> str:
    return f"pylon:quota:{{{tenant}}}:leases"


class QuotaStore:
    """The scripts and the limits hash on one Redis."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        self._acquire = redis.register_script(_ACQUIRE)
        self._settle = redis.register_script(_SETTLE)

    async def acquire(self, tenant: str, buckets: list[Bucket], max_concurrent: int, lease: str,
                      lease_ttl_s: float) -> Verdict:
        """Take every bucket's cost and a concurrency lease (when ``max_concurrent``), or nothing."""
        args: list[Any] = [len(buckets)]
        for b in buckets:
            args += [b.limit, b.cost]
        args += [max_concurrent, lease, int(lease_ttl_s * 1000)]
        out = await self._acquire(keys=[b.key for b in buckets] + [lease_key(tenant)], args=args)
        if int(out[0]) == 1:
            return Verdict(True)
        index = int(out[1]) - 1
        name = buckets[index].name if index < len(buckets) else "concurrency"
        if int(out[0]) == -1:
            return Verdict(False, name, never=True)
        return Verdict(False, name, int(out[2]) / 1000)

    async def settle(self, tenant: str, refunds: list[tuple[Bucket, int]], lease: str) -> None:
        """Give back each bucket's unused reservation (negative: take the excess) and end the lease."""
        args: list[Any] = [len(refunds)]
        for b, refund in refunds:
            args += [b.limit, refund]
        args.append(lease)
        await self._settle(keys=[b.key for b, _ in refunds] + [lease_key(tenant)], args=args)

    async def level(self, key: str) -> float | None:
        """A bucket's stored level (tests and operators; not refilled to now)."""
        raw = await self._redis.hget(key, "l")
        return float(as_text(raw)) if raw is not None else None

    async def limits(self, tenant: str) -> dict[str, Any]:
        """The fields an admin set for ``tenant`` (none: the defaults apply)."""
        raw = await self._redis.hget(_LIMITS, tenant)
        return dict(json.loads(as_text(raw))) if raw is not None else {}

    async def set_limits(self, tenant: str, overrides: dict[str, Any]) -> None:
        """Replace ``tenant``'s overrides; empty removes them."""
        if overrides:
            await self._redis.hset(_LIMITS, tenant, json.dumps(overrides, sort_keys=True))
        else:
            await self._redis.hdel(_LIMITS, tenant)
