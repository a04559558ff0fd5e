"""What the serving path reads on every request (a deployment's record, its replicas'
heartbeats), kept in memory for a moment.

Each read is a Redis round trip on the request's critical path, before its first token; a gateway
serving many requests to the same deployment reads the same values over and over. Envoy-based
gateways and AIBrix keep their routing tables in memory the same way. A record is kept for
``ttl_s`` (``PYLON_GATEWAY_ROUTE_CACHE_S``): a change made through another gateway reaches this one
within it, and one made through this gateway (its API or its controller) at once: the store calls
``forget`` after each write. A missing deployment is not
kept, so one just created serves at once. A replica that fails a call is left out at once by the
router whatever its cached heartbeat says (``Inference._routable``).
"""

from __future__ import annotations

import time
from typing import TypeVar

from pylon_services.gateway.domain.deployments import DeploymentRecord
from pylon_services.gateway.domain.ports import DeploymentRecords
from pylon_services.gateway.domain.routing import ReplicaView

V = TypeVar("V")
MAX_ENTRIES = 10_000  # deployments kept; past it the cache starts over (a bound, not an LRU)


class RouteCache:
    def __init__(self, store: DeploymentRecords, ttl_s: float) -> None:
        self._store = store
        self._ttl = ttl_s
        self._records: dict[tuple[str, str], tuple[float, DeploymentRecord]] = {}
        self._replicas: dict[tuple[str, str], tuple[float, list[ReplicaView]]] = {}

    async def get(self, tenant: str, dep: str) -> DeploymentRecord:
        """The deployment's record (NotFound as the store raises it)."""
        key = (tenant, dep)
        hit = self._records.get(key)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        rec = await self._store.get(tenant, dep)
        self._keep(self._records, key, rec)
        return rec

    async def replicas(self, tenant: str, dep: str) -> list[ReplicaView]:
        """The replicas' last heartbeats, as the store lists them."""
        key = (tenant, dep)
        hit = self._replicas.get(key)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        views = await self._store.replicas(tenant, dep)
        self._keep(self._replicas, key, views)
        return views

    def forget(self, tenant: str, dep: str) -> None:
        """Drop what is kept of a deployment (this gateway changed or deleted it)."""
        self._records.pop((tenant, dep), None)
        self._replicas.pop((tenant, dep), None)

    def _keep(self, table: dict[tuple[str, str], tuple[float, V]], key: tuple[str, str], value: V) -> None:
        if self._ttl <= 0:
            return
        if len(table) >= MAX_ENTRIES:
            table.clear()
        table[key] = (time.monotonic() + self._ttl, value)
