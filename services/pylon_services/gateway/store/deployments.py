"""Deployment records and replica registrations in Redis.

Every write of a record is a compare-and-swap on its ``version`` counter (one Lua script), so
two gateways changing the same deployment at once cannot lose an update: the slower one re-reads
and applies its change again, or gives up with ABORTED. The same scripts keep the index of what is
shared with whom (``domain/sharing.py``) in step with the records.
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
from pylon_services.gateway.domain.sharing import EVERYONE, visible_to

# The index of shared deployments: "{owner}/{dep}" in the set of every tenant a deployment is
# shared with, and in one set for those shared with every tenant ("*"). Each script below changes
# a record and its index entries together, from the shared_with lists of the stored record and of
# the new one, so the index never disagrees with the records (a failed or repeated call included).
# The index keys follow from the records' contents, so the scripts name them from ARGV prefixes:
# the store runs on one Redis (its records and indexes already span every tenant), not a cluster.
_SHARE_FNS = """
local function share_key(t) if t == '*' then return ARGV[5] end return ARGV[4] .. t end
local function shared(doc)
  local s = doc['shared_with']
  if type(s) ~= 'table' then return {} end
  return s
end
"""
# KEYS[1] record; ARGV[1] expected version; ARGV[2] new JSON; ARGV[3] "{owner}/{dep}";
# ARGV[4] share-set prefix; ARGV[5] the "*" set. 1 written, 0 stale, -1 missing.
# Records written before the counter existed count as version 0.
_CAS = _SHARE_FNS + """
local raw = redis.call('GET', KEYS[1])
if not raw then return -1 end
local old = cjson.decode(raw)
local version = old['version']
if type(version) ~= 'number' then version = 0 end
if version ~= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
local new = {}
for _, t in ipairs(shared(cjson.decode(ARGV[2]))) do new[t] = true end
for _, t in ipairs(shared(old)) do
  if not new[t] then redis.call('SREM', share_key(t), ARGV[3]) end
end
for t, _ in pairs(new) do redis.call('SADD', share_key(t), ARGV[3]) end
return 1
"""
# KEYS[1] record, KEYS[2] the tenant's deployments, KEYS[3] every deployment; ARGV[1] JSON;
# ARGV[2] deployment id; ARGV[3..5] as _CAS's. 1 created, 0 the name is taken.
_CREATE = _SHARE_FNS + """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX') then return 0 end
redis.call('ZADD', KEYS[2], 0, ARGV[2])
redis.call('SADD', KEYS[3], ARGV[3])
for _, t in ipairs(shared(cjson.decode(ARGV[1]))) do redis.call('SADD', share_key(t), ARGV[3]) end
return 1
"""
# KEYS[1] record, KEYS[2] replicas, KEYS[3] serving counts, KEYS[4] the tenant's deployments,
# KEYS[5] every deployment; ARGV[2] deployment id; ARGV[3..5] as _CAS's. Idempotent.
_DELETE = _SHARE_FNS + """
local raw = redis.call('GET', KEYS[1])
if raw then
  for _, t in ipairs(shared(cjson.decode(raw))) do redis.call('SREM', share_key(t), ARGV[3]) end
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('ZREM', KEYS[4], ARGV[2])
redis.call('SREM', KEYS[5], ARGV[3])
return 1
"""
CAS_TRIES = 16
ALL_KEY = "pylon:deployments:all"  # "tenant/deployment" of every deployment: what the controller visits
SHARED_PREFIX = "pylon:deployments:shared-with:"  # + tenant: "owner/deployment" shared with it
SHARED_ALL_KEY = "pylon:deployments:shared-with-all"  # "owner/deployment" shared with every tenant


def shared_key(tenant: str) -> str:
    """The index set of deployments shared with ``tenant`` ("*": with every tenant)."""
    return SHARED_ALL_KEY if tenant == EVERYONE else SHARED_PREFIX + tenant


def serving_key(tenant: str, dep: str) -> str:
    """Redis hash of what the gateways counted of a deployment's requests (``store/serving.py``)."""
    return f"pylon:gw:serving:{tenant}:{dep}"


def _index_args(tenant: str, dep: str) -> list[str]:
    """ARGV[3..5] of the scripts: the index member and where its sets are."""
    return [f"{tenant}/{dep}", SHARED_PREFIX, SHARED_ALL_KEY]


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


class DeploymentStore:
    """``DeploymentRecords`` in Redis."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.r = redis
        self._cas = redis.register_script(_CAS)
        self._create = redis.register_script(_CREATE)
        self._delete = redis.register_script(_DELETE)
        self._listeners: list[Callable[[str, str], None]] = []

    def on_write(self, listener: Callable[[str, str], None]) -> None:
        """Call ``listener(tenant, deployment)`` after every write of a deployment through this
        store (the serving path's cache drops its copy: ``api/route_cache.py``)."""
        self._listeners.append(listener)

    def _written(self, tenant: str, dep: str) -> None:
        for listener in self._listeners:
            listener(tenant, dep)

    @staticmethod
    def _key(tenant: str, dep: str) -> str:
        return f"pylon:deployment:{tenant}:{dep}"

    async def create(self, rec: DeploymentRecord) -> bool:
        """Create-only (version 1): False if the id is taken."""
        tenant, dep = rec.tenant, rec.deployment_id
        doc = dataclasses.replace(rec, version=1).to_dict()
        created = await self._create(keys=[self._key(tenant, dep), f"pylon:deployments:{tenant}", ALL_KEY],
                                     args=[json.dumps(doc), dep, *_index_args(tenant, dep)])
        self._written(tenant, dep)
        return bool(created == 1)

    async def replace(self, tenant: str, dep: str, rec: DeploymentRecord, expected_version: int) -> bool:
        """Write ``rec`` as version ``expected_version + 1`` if the stored record is still at
        ``expected_version``; False when another write came first."""
        doc = dataclasses.replace(rec, version=expected_version + 1).to_dict()
        written = await self._cas(keys=[self._key(tenant, dep)],
                                  args=[expected_version, json.dumps(doc), *_index_args(tenant, dep)])
        self._written(tenant, dep)
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
        """The record, its registrations, its counts and its index entries, at once."""
        await self._delete(keys=[self._key(tenant, dep), replicas_key(tenant, dep), serving_key(tenant, dep),
                                 f"pylon:deployments:{tenant}", ALL_KEY], args=["", dep, *_index_args(tenant, dep)])
        self._written(tenant, dep)

    async def shared_with_tenant(self, tenant: str) -> list[DeploymentRecord]:
        """Other tenants' deployments shared with ``tenant`` (or with every tenant), by name."""
        members = sorted(_text(m) for m in await self.r.sunion([shared_key(tenant), SHARED_ALL_KEY]))  # type: ignore[misc]
        out = []
        for member in members:
            owner, _, dep = member.partition("/")
            try:
                rec = await self.get(owner, dep)
            except NotFound:  # deleted between the index read and this one
                continue
            if owner != tenant and visible_to(rec, tenant):  # the record decides, whatever the index says
                out.append(rec)
        return sorted(out, key=lambda r: r.name)

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
