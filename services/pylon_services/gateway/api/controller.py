"""The gateway's control loop: canary rollouts, replacement of ended replicas and autoscaling of
every deployment.

One gateway at a time acts: the holder of a Redis lease (``store/serving.py``), renewed every
tick and lost when that gateway stops renewing it, like the scheduler's leader. Every change of
a record is still a compare-and-swap on its version and every settle is idempotent, so a
second gateway acting for a moment (a lease lost mid-tick) cannot corrupt a record or leak a
replica job. The policies are pure (``domain/autoscale.py``, ``domain/rollouts.py``,
``domain/replacement.py``); this module
reads their signals and applies their answers through the scheduler and the registry, as the
platform (``Acting.platform``) in each deployment's own tenant.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass

import grpc

from pylon.registry.v1 import registry_pb2
from pylon_services.gateway.api.replicas import Acting, ReplicaJobs
from pylon_services.gateway.api.serving import AutoscaleHooks
from pylon_services.gateway.domain import autoscale, rollouts
from pylon_services.gateway.domain import deployments as records
from pylon_services.gateway.domain.deployments import DeploymentRecord
from pylon_services.gateway.domain.ports import DeploymentRecords, ServingCounts, ServingView
from pylon_services.gateway.domain.replacement import ReplacePolicy
from pylon_services.gateway.domain.routing import STALE_AFTER_S
from pylon_services.runtime.peers import PlatformClients

log = logging.getLogger("pylon.gateway.controller")


@dataclass
class _Memory:
    """What the controller keeps of one deployment between ticks (lost with the lease, which
    only makes the next holder wait a scale-down delay again)."""

    window: autoscale.Window
    ttft_ms_sum: float = -1.0
    ttft_n: int = 0


class Controller:
    def __init__(self, store: DeploymentRecords, counters: ServingCounts, jobs: ReplicaJobs,
                 clients: PlatformClients, hooks: AutoscaleHooks, admin_key: str, interval_s: float,
                 replacing: ReplacePolicy | None = None) -> None:
        self._d = store
        self._counters = counters
        self._jobs = jobs
        self._c = clients
        self._hooks = hooks
        self._admin_key = admin_key
        self._interval = interval_s
        self._replacing = replacing or ReplacePolicy()
        self._id = f"gateway-{uuid.uuid4().hex[:12]}"
        self._memory: dict[tuple[str, str], _Memory] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self._hooks.flush()
            await self._counters.release_lease(self._id)

    async def _run(self) -> None:
        while True:
            try:
                await self._hooks.flush()
                if await self._counters.hold_lease(self._id, max(3 * self._interval, 5.0)):
                    for tenant, dep in await self._d.all_deployments():
                        await self._tick_one(tenant, dep)
                else:
                    self._memory.clear()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - Redis away for a moment: the next tick retries
                log.exception("controller tick failed")
            await asyncio.sleep(self._interval)

    async def _tick_one(self, tenant: str, dep: str) -> None:
        try:
            await self.tick(tenant, dep)
        except Exception as e:  # noqa: BLE001 - one deployment's trouble does not stop the others
            detail = e.details() if isinstance(e, grpc.aio.AioRpcError) else str(e)
            log.warning("controller: %s/%s: %s", tenant, dep, (detail or type(e).__name__)[:300])

    async def tick(self, tenant: str, dep: str) -> None:
        """One look at one deployment: roll out, replace the replicas whose jobs ended, then scale."""
        try:
            rec = await self._d.get(tenant, dep)
        except Exception:  # noqa: BLE001 - deleted meanwhile
            return
        if rec.deleting:
            return
        by = Acting.platform(self._admin_key)
        view = await self._counters.read(tenant, dep)
        if rec.rollout.follow_alias or rec.canary is not None:
            rec = await self._rollout(rec, view, by)
        if rec.slots:
            rec = await self._replace(rec, by)
        if rec.autoscaling.enabled:
            await self._autoscale(rec, view, by)

    # -- autoscaling ------------------------------------------------------------------------------
    async def _autoscale(self, rec: DeploymentRecord, view: ServingView, by: Acting) -> None:
        key = (rec.tenant, rec.deployment_id)
        mem = self._memory.setdefault(key, _Memory(autoscale.Window()))
        now = time.time()
        stable = rec.model_version
        c = view.versions.get(stable, rollouts.VersionCounters())
        ttft = 0.0
        if mem.ttft_ms_sum >= 0 and c.ttft_count > mem.ttft_n:
            ttft = (c.ttft_ms_sum - mem.ttft_ms_sum) / (c.ttft_count - mem.ttft_n)
        mem.ttft_ms_sum, mem.ttft_n = c.ttft_ms_sum, c.ttft_count
        loads = await self._d.replica_loads(rec.tenant, rec.deployment_id)
        idle = now - (view.last_request or rec.create_time)
        signals = autoscale.signals(loads, {s.job_id for s in rec.slots if s.job}, view.held, ttft, idle, now,
                                    STALE_AFTER_S)
        want, why, mem.window = autoscale.desired(rec.autoscaling, rec.replicas, signals, mem.window, now)
        if want != rec.replicas:
            log.info("autoscale", extra={"deployment": rec.name, "from": rec.replicas, "to": want, "reason": why})
            await self._d.update(rec.tenant, rec.deployment_id,
                                 lambda r: r if r.deleting else records.autoscale_to(r, want, "autoscaler", why, now))
        if want != rec.replicas or records.unsubmitted(rec) or rec.retired:
            await self._jobs.settle(rec.tenant, rec.deployment_id, by)

    # -- replacing ended replicas ----------------------------------------------------------------
    async def _replace(self, rec: DeploymentRecord, by: Acting) -> DeploymentRecord:
        """Swap the live slots whose jobs ended for new ones (``domain/replacement.py``), then
        submit them. Only replicas that do not serve now have their jobs' states read."""
        t, d, now = rec.tenant, rec.deployment_id, time.time()
        fresh = {r.job_id for r in await self._d.replicas(t, d) if r.fresh(now)}
        ready = [s.index for s in rec.slots if s.job and s.job_id in fresh]
        ended = await self._jobs.ended_jobs(sorted(s.job for s in rec.slots if s.job and s.job_id not in fresh), by)
        loop = rec.crash_loop
        if not ended and not ((loop.failures or loop.stopped) and any(i >= loop.since_index for i in ready)):
            return rec
        by_job = {e.job: e for e in ended}
        rec = await self._d.update(t, d, lambda r: records.replace_ended(r, by_job, ready, self._replacing, now))
        if records.unsubmitted(rec):
            log.info("replacing replicas", extra={"deployment": rec.name, "ended": sorted(by_job)})
            rec = await self._jobs.settle(t, d, by)
        return rec

    # -- rollouts ---------------------------------------------------------------------------------
    async def _alias_target(self, rec: DeploymentRecord, by: Acting) -> str:
        """The version the alias of the deployment's model URI names now ("" if it is gone)."""
        model, _, alias = rec.model_uri.removeprefix("models:/").partition("@")
        registry = await self._c.registry()
        try:
            resp = await registry.GetAlias(registry_pb2.GetAliasRequest(
                name=f"tenants/{rec.tenant}/models/{model}/aliases/{alias}"), metadata=by.metadata, timeout=by.timeout)
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return ""
            raise
        return f"tenants/{rec.tenant}/models/{model}/versions/{resp.alias.version}"

    async def _rollout(self, rec: DeploymentRecord, view: ServingView, by: Acting) -> DeploymentRecord:
        t, d, now = rec.tenant, rec.deployment_id, time.time()
        target = await self._alias_target(rec, by) if rec.rollout.follow_alias else ""
        step = rollouts.next_step(rec.rollout, rec.model_version, target, rec.canary, rec.rejected_version)
        if step == "start":
            base = view.versions.get(target, rollouts.VersionCounters())
            canary = rollouts.Canary(target, now, base.requests, base.errors, base.ttft_ms_sum, base.ttft_count)
            await self._jobs.record_deployment(rec, target, by)  # the version on trial cannot be deleted
            rec = await self._d.update(t, d, lambda r: records.start_canary(
                r, canary, f"alias {rec.model_uri} moved to {target}"))
            log.info("canary started", extra={"deployment": rec.name, "version": target})
            return await self._jobs.settle(t, d, by)
        if step == "abandon" and rec.canary is not None:
            return await self._end(rec, "rollback", f"the alias moved on to {target or 'nothing'}", by, reject=False)
        if rec.canary is None:
            return rec
        canary_jobs = rec.canary_job_ids()
        ready = [r for r in await self._d.replicas(t, d) if r.job_id in canary_jobs and r.fresh(now)]
        if ready and not rec.canary.ready_time:
            rec = await self._d.update(t, d, lambda r: records.mark_canary_ready(r, now))
        assert rec.canary is not None
        if not rec.canary.ready_time:
            ended = await self._jobs.ended(sorted(s.job for s in rec.canary_slots if s.job), by)
            if ended and len(ended) == len(rec.canary_slots):
                return await self._end(rec, "rollback", f"canary replicas did not start: {ended[0]}", by)
        verdict, why = rollouts.judge(rec.rollout, rec.canary, view.versions.get(
            rec.canary.version, rollouts.VersionCounters()), now)
        if verdict == "wait":
            return rec
        return await self._end(rec, verdict, why, by)

    async def _end(self, rec: DeploymentRecord, verdict: str, why: str, by: Acting, reject: bool = True
                   ) -> DeploymentRecord:
        """Promote or roll back the canary, stop the replicas that go, and tell the registry which
        version the deployment no longer serves."""
        assert rec.canary is not None
        old, new, now = rec.model_version, rec.canary.version, time.time()
        if verdict == "promote":
            rec = await self._d.update(rec.tenant, rec.deployment_id, lambda r: records.promote(r, why, now))
        else:
            rec = await self._d.update(rec.tenant, rec.deployment_id, lambda r: records.roll_back(r, why, now, reject))
        log.info("rollout %s", verdict, extra={"deployment": rec.name, "version": new, "reason": why})
        rec = await self._jobs.settle(rec.tenant, rec.deployment_id, by)
        with contextlib.suppress(grpc.aio.AioRpcError):  # a deleted version has nothing to record
            await self._jobs.record_deployment(rec, old if verdict == "promote" else new, by, removed=True)
        return rec
