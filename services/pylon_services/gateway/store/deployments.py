"""Deployment records and replica registrations in Redis.

Every write of a record is a compare-and-swap on its ``version`` counter (one Lua script), so
two gateways changing the same deployment at once cannot lose an update: the slower one re-reads
and applies its change again, or gives up with ABORTED.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis

from pylon_services.common.errors import Aborted, NotFound
from pylon_services.engines.registration import replicas_key
from pylon_services.gateway.domain.autoscale import ReplicaLoad
from pylon_services.gateway.domain.deployments import DeploymentRecord
from pylon_services.gateway.domain.routing import ReplicaView

# KEYS[1] record; ARGV[1] expected version; ARGV[2] new JSON. 1 written, 0 stale, -1 missing.
# Records written before the counter existed count as version 0.
_CAS = """
local raw = redis.call('GET', KEYS[1])
if not raw then return -1 end
local version = cjson.decode(raw)['version']
if type(version) ~= 'number' then version = 0 end
if version ~= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1
"""
CAS_TRIES = 16
ALL_KEY = "pylon:deployments:all"  # "tenant/deployment" of every deployment: what the controller visits


def serving_key(tenant: str, dep: str) -> str:
    """Redis hash of what the gateways counted of a deployment's requests (``store/serving.py``)."""
    return f"pylon:gw:serving:{tenant}:{dep}"


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


class DeploymentStore:
    """``DeploymentRecords`` in Redis."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.r = redis
        self._cas = redis.register_script(_CAS)

    @staticmethod
    def _key(tenant: str, dep: str) -> str:
        return f"pylon:deployment:{tenant}:{dep}"

    async def create(self, rec: DeploymentRecord) -> bool:
        """Create-only (version 1): False if the id is taken."""
        tenant, dep = rec.tenant, rec.deployment_id
        doc = dataclasses.replace(rec, version=1).to_dict()
        if not await self.r.set(self._key(tenant, dep), json.dumps(doc), nx=True):
            return False
        await self.r.zadd(f"pylon:deployments:{tenant}", {dep: 0})
        await self.r.sadd(ALL_KEY, f"{tenant}/{dep}")
        return True

    async def replace(self, tenant: str, dep: str, rec: DeploymentRecord, expected_version: int) -> bool:
        """Write ``rec`` as version ``expected_version + 1`` if the stored record is still at
        ``expected_version``; False when another write came first."""
        doc = dataclasses.replace(rec, version=expected_version + 1).to_dict()
        written = await self._cas(keys=[self._key(tenant, dep)], args=[expected_version, json.dumps(doc)])
        if written == -1:
            raise NotFound(f"tenants/{tenant}/deployments/{dep} not found")
        return bool(written == 1)

    async def update(self, tenant: str, dep: str,
                     change: Callable[[DeploymentRecord], DeploymentRecord]) -> DeploymentRecord:
        """Read-modify-write under compare-and-swap: ``change`` maps the current record to the new
        one (or raises to refuse); re-applied to a fresh read when a concurrent write wins."""
        for attempt in range(CAS_TRIES):
            rec = await self.get(tenant, dep)
            new = change(rec)
            if new == rec:  # nothing to write: the etag stays as it is
                return rec
            if await self.replace(tenant, dep, new, rec.version):
                return dataclasses.replace(new, version=rec.version + 1)
            await asyncio.sleep(random.uniform(0, 0.002 * (attempt + 1)))  # spread out the writers that lost
        raise Aborted(f"tenants/{tenant}/deployments/{dep} is changing too often to update; retry")

    async def get(self, tenant: str, dep: str) -> DeploymentRecord:
        raw = await self.r.get(self._key(tenant, dep))
        if raw is None:
            raise NotFound(f"tenants/{tenant}/deployments/{dep} not found")
        return DeploymentRecord.from_dict(json.loads(raw))

    async def delete(self, tenant: str, dep: str) -> None:
        await self.r.delete(self._key(tenant, dep), replicas_key(tenant, dep), serving_key(tenant, dep))
        await self.r.zrem(f"pylon:deployments:{tenant}", dep)
        await self.r.srem(ALL_KEY, f"{tenant}/{dep}")

    async def all_deployments(self) -> list[tuple[str, str]]:
        """(tenant, deployment) of every deployment created since the index existed."""
        return sorted(tuple(_text(m).split("/", 1)) for m in await self.r.smembers(ALL_KEY))  # type: ignore[misc]

    async def list_deployments(self, tenant: str, page_size: int, after: str) -> tuple[list[DeploymentRecord], str]:
        """One page of records by id after ``after``, and the token of the next page ("" at the end)."""
        ids = [_text(i) for i in await self.r.zrangebylex(f"pylon:deployments:{tenant}", f"({after}" if after else "-",
                                                          "+", start=0, num=page_size)]
        out = []
        for i in ids:
            try:
                out.append(await self.get(tenant, i))
            except NotFound:  # deleted between the index read and this one
                continue
        return out, ids[-1] if len(ids) == page_size else ""

    async def forget_replicas(self, tenant: str, dep: str, job_ids: set[str]) -> None:
        """Drop the registrations of stopped replicas (a killed engine cannot remove its own)."""
        if job_ids:
            await self.r.hdel(replicas_key(tenant, dep), *sorted(job_ids))

    async def replicas(self, tenant: str, dep: str) -> list[ReplicaView]:
        raw: dict[Any, Any] = await self.r.hgetall(replicas_key(tenant, dep))
        out = []
        for job_id, value in raw.items():
            out.append(ReplicaView.from_heartbeat(_text(job_id), json.loads(value)))
        return out

    async def replica_loads(self, tenant: str, dep: str) -> list[ReplicaLoad]:
        """The replicas' last heartbeats: requests on them and KV-cache use (the autoscaler's signals)."""
        raw: dict[Any, Any] = await self.r.hgetall(replicas_key(tenant, dep))
        out = []
        for job_id, value in raw.items():
            v = json.loads(value)
            out.append(ReplicaLoad(_text(job_id), float(v["ts"]), int(v.get("running", 0)),
                                   float(v.get("kv_cache_usage", 0.0))))
        return out
