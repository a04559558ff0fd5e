"""What serving tells the autoscaler and the rollouts, and what they change in serving.

``Inference`` calls three hooks: ``hold`` when a request finds no ready replica (a deployment
with autoscaling holds it, starting a replica at zero, for a bounded wait: scale from zero),
``pool`` to choose which replicas may serve it (a canary gets its share), and ``served`` when a
replica answered or failed (per-version counts and TTFT, which the controller reads). The base
class does nothing, so ``Inference`` works without them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable

from pylon_services.gateway.api.replicas import Acting, ReplicaJobs
from pylon_services.gateway.domain import deployments as records
from pylon_services.gateway.domain.deployments import DeploymentRecord
from pylon_services.gateway.domain.ports import DeploymentRecords, ServingCounts
from pylon_services.gateway.domain.rollouts import canary_share
from pylon_services.gateway.domain.routing import ReplicaView

log = logging.getLogger("pylon.gateway")
ReadyFn = Callable[[DeploymentRecord], Awaitable[list[ReplicaView]]]
POLL_S = 0.2


class ServingHooks:
    """No autoscaling, no canaries: requests without a ready replica are not held."""

    async def hold(self, rec: DeploymentRecord, ready: ReadyFn, timeout: float) -> list[ReplicaView]:
        return []

    def pool(self, rec: DeploymentRecord, ready: list[ReplicaView]) -> list[ReplicaView]:
        return ready

    def served(self, rec: DeploymentRecord, job_id: str, ttft_s: float | None, ok: bool) -> None:
        return None


class AutoscaleHooks(ServingHooks):
    """The hooks of a gateway that autoscales and rolls out; counts go to Redis about once a
    second (``flush``), held requests at once."""

    def __init__(self, deployments: DeploymentRecords, counters: ServingCounts, jobs: ReplicaJobs,
                 admin_key: str, cold_start_wait_s: float) -> None:
        self._d = deployments
        self._counters = counters
        self._jobs = jobs
        self._admin_key = admin_key
        self._wait_s = cold_start_wait_s
        self._held: dict[tuple[str, str], int] = defaultdict(int)
        # (tenant, deployment) -> version -> counter name -> value, since the last flush.
        self._counts: dict[tuple[str, str], dict[str, dict[str, float]]] = {}
        self._last_request: dict[tuple[str, str], float] = {}

    async def hold(self, rec: DeploymentRecord, ready: ReadyFn, timeout: float) -> list[ReplicaView]:
        """Wait (at most ``cold_start_wait_s`` and the caller's ``timeout``) for a ready replica
        of an autoscaled deployment, starting one if it is at zero; [] when none came."""
        if not rec.autoscaling.enabled or rec.deleting:
            return []
        key = (rec.tenant, rec.deployment_id)
        self._last_request[key] = time.time()
        self._held[key] += 1
        start, cold = time.monotonic(), rec.replicas == 0
        deadline = start + min(self._wait_s, max(timeout - 1.0, 0.0))
        try:
            await self._counters.set_held(*key, self._held[key])
            while time.monotonic() < deadline:
                current = await self._d.get(*key)
                if current.replicas == 0 and not current.deleting:
                    await self._wake(current)
                    continue
                found = await ready(current)
                if found:
                    waited = time.monotonic() - start
                    if cold:
                        await self._counters.set_cold_start(*key, waited)
                        log.info("cold start", extra={"deployment": rec.name, "cold_start_s": round(waited, 3)})
                    return found
                await asyncio.sleep(POLL_S)
            return []
        finally:
            self._held[key] -= 1
            with contextlib.suppress(Exception):
                await self._counters.set_held(*key, self._held[key])

    async def _wake(self, rec: DeploymentRecord) -> None:
        """Scale a deployment at zero to its minimum (at least 1) and submit the replica, as
        the platform: the request that woke it may come from a viewer's key."""
        n = max(1, rec.autoscaling.min_replicas)
        now = time.time()

        def up(r: DeploymentRecord) -> DeploymentRecord:
            if r.replicas or r.deleting:
                return r
            return records.autoscale_to(r, n, "request", "a request arrived at zero replicas", now)

        try:
            await self._d.update(rec.tenant, rec.deployment_id, up)
            await self._jobs.settle(rec.tenant, rec.deployment_id, Acting.platform(self._admin_key))
        except Exception:  # noqa: BLE001 - the controller sees the held request and tries again
            log.exception("starting a replica for a held request failed", extra={"deployment": rec.name})
            await asyncio.sleep(1.0)

    def pool(self, rec: DeploymentRecord, ready: list[ReplicaView]) -> list[ReplicaView]:
        """The replicas this request may go to: a ready canary gets its share of requests."""
        self._last_request[(rec.tenant, rec.deployment_id)] = time.time()
        if not rec.canary_slots or rec.canary is None:
            return ready
        canary_jobs = rec.canary_job_ids()
        canary = [r for r in ready if r.job_id in canary_jobs]
        stable = [r for r in ready if r.job_id not in canary_jobs]
        if not canary or not stable:
            return ready
        return canary if random.random() < canary_share(rec.rollout) else stable

    def served(self, rec: DeploymentRecord, job_id: str, ttft_s: float | None, ok: bool) -> None:
        """Count one request a replica answered (``ttft_s`` once its first token came) or failed."""
        version = rec.canary.version if rec.canary and job_id in rec.canary_job_ids() else rec.model_version
        c = self._counts.setdefault((rec.tenant, rec.deployment_id), {}).setdefault(
            version, {"req": 0.0, "err": 0.0, "ttft_ms_sum": 0.0, "ttft_n": 0.0})
        c["req"] += 1
        c["err"] += 0 if ok else 1
        if ttft_s is not None:
            c["ttft_ms_sum"] += ttft_s * 1000
            c["ttft_n"] += 1

    async def flush(self) -> None:
        """Add what was counted since the last flush to Redis."""
        counts, self._counts = self._counts, {}
        last, self._last_request = self._last_request, {}
        for key in set(counts) | set(last):
            await self._counters.add(*key, counts.get(key, {}), last.get(key, 0.0))
