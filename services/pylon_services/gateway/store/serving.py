"""What the gateways count of a deployment's requests, shared through Redis, and the lease that
lets one gateway at a time run the controller.

Every gateway serves requests, but only the lease holder scales and rolls out, so the counts
must be in one place: each gateway adds its per-version request, error and TTFT counts to the
deployment's hash (``serving_key``) about once a second, sets the time of the last request, and
publishes how many requests it holds for want of a ready replica (``held:{gateway}``, with a
time so a gateway that died stops counting).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping

import redis.asyncio as aioredis

from pylon_services.gateway.domain.ports import ServingView
from pylon_services.gateway.domain.rollouts import VersionCounters
from pylon_services.gateway.store.deployments import serving_key

HELD_FRESH_S = 10.0
LEASE_KEY = "pylon:gateway:controller"
# KEYS[1] lease; ARGV[1] holder; ARGV[2] ttl ms. Takes a free lease or renews one's own.
_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
# KEYS[1] lease; ARGV[1] holder. Frees the lease only if this holder still has it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


class ServingCounters:
    def __init__(self, redis: aioredis.Redis, gateway_id: str) -> None:
        self.r = redis
        self.gateway_id = gateway_id
        self._lease = redis.register_script(_LEASE)
        self._release = redis.register_script(_RELEASE)

    async def add(self, tenant: str, dep: str, counts: Mapping[str, Mapping[str, float]], last_request: float) -> None:
        """Add per-version counts ({version: {"req", "err", "ttft_ms_sum", "ttft_n"}})."""
        key = serving_key(tenant, dep)
        async with self.r.pipeline(transaction=False) as pipe:
            for version, c in counts.items():
                for name, value in c.items():
                    if value:
                        pipe.hincrbyfloat(key, f"{name}|{version}", value)
            if last_request:
                pipe.hset(key, "last_request", last_request)
            await pipe.execute()

    async def set_held(self, tenant: str, dep: str, held: int) -> None:
        key, name = serving_key(tenant, dep), f"held|{self.gateway_id}"
        if held:
            await self.r.hset(key, name, json.dumps([held, time.time()]))
        else:
            await self.r.hdel(key, name)

    async def set_cold_start(self, tenant: str, dep: str, seconds: float) -> None:
        await self.r.hset(serving_key(tenant, dep), "cold_start_s", seconds)

    async def read(self, tenant: str, dep: str) -> ServingView:
        raw = {_text(k): _text(v) for k, v in (await self.r.hgetall(serving_key(tenant, dep))).items()}
        per: dict[str, dict[str, float]] = {}
        held, now = 0, time.time()
        for name, value in raw.items():
            kind, _, rest = name.partition("|")
            if kind == "held":
                n, ts = json.loads(value)
                held += int(n) if now - ts <= HELD_FRESH_S else 0
            elif rest:
                per.setdefault(rest, {})[kind] = float(value)
        versions = {v: VersionCounters(int(c.get("req", 0)), int(c.get("err", 0)), c.get("ttft_ms_sum", 0.0),
                                       int(c.get("ttft_n", 0))) for v, c in per.items()}
        return ServingView(versions, held, float(raw.get("last_request", 0.0)), float(raw.get("cold_start_s", 0.0)))

    async def hold_lease(self, holder: str, ttl_s: float) -> bool:
        """Take or renew the controller lease; False while another gateway holds it."""
        return bool(await self._lease(keys=[LEASE_KEY], args=[holder, int(ttl_s * 1000)]))

    async def release_lease(self, holder: str) -> None:
        """Free the lease if ``holder`` still has it (one script: a lease that expired and was
        taken by another gateway meanwhile is left alone)."""
        await self._release(keys=[LEASE_KEY], args=[holder])
