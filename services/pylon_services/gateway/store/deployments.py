"""Deployment records and replica registrations in Redis."""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as aioredis

from pylon_services.common.errors import NotFound
from pylon_services.engines.registration import replicas_key
from pylon_services.gateway.domain.routing import ReplicaView


class DeploymentStore:
    def __init__(self, redis: aioredis.Redis) -> None:
        self.r = redis

    @staticmethod
    def _key(tenant: str, dep: str) -> str:
        return f"pylon:deployment:{tenant}:{dep}"

    async def create(self, tenant: str, dep: str, doc: dict[str, Any]) -> bool:
        """Create-only: False if the id is taken."""
        if not await self.r.set(self._key(tenant, dep), json.dumps(doc), nx=True):
            return False
        await self.r.zadd(f"pylon:deployments:{tenant}", {dep: 0})
        return True

    async def save(self, tenant: str, dep: str, doc: dict[str, Any]) -> None:
        await self.r.set(self._key(tenant, dep), json.dumps(doc))

    async def get(self, tenant: str, dep: str) -> dict[str, Any]:
        raw = await self.r.get(self._key(tenant, dep))
        if raw is None:
            raise NotFound(f"tenants/{tenant}/deployments/{dep} not found")
        return json.loads(raw)

    async def delete(self, tenant: str, dep: str) -> None:
        await self.r.delete(self._key(tenant, dep), replicas_key(tenant, dep))
        await self.r.zrem(f"pylon:deployments:{tenant}", dep)

    async def list_deployments(self, tenant: str, page_size: int, after: str) -> list[dict[str, Any]]:
        ids = await self.r.zrangebylex(f"pylon:deployments:{tenant}", f"({after}" if after else "-", "+",
                                       start=0, num=page_size)
        return [await self.get(tenant, i.decode()) for i in ids]

    async def replicas(self, tenant: str, dep: str) -> list[ReplicaView]:
        raw = await self.r.hgetall(replicas_key(tenant, dep))
        out = []
        for job_id, value in raw.items():
            v = json.loads(value)
            out.append(ReplicaView(job_id.decode(), v["address"], v["ts"], v.get("running", 0)))
        return out
