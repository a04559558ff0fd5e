"""A deployment's replica jobs on the scheduler: submit, cancel, and read their states.

Calls made for a user's request go to the scheduler's public API with the caller's key, so the
scheduler applies the caller's tenant, role and quotas to replica jobs exactly as to any job.
The autoscaler and the rollouts act with no caller: they use the platform's key (the bootstrap
admin key only platform processes hold, as the scheduler's registrar does) in the deployment's
own tenant, so that tenant's quotas still apply. Calls to the registry that record a deployment
also carry the internal key, which the registry requires of them (only the gateway records).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import grpc

from pylon.registry.v1 import registry_pb2
from pylon.scheduler.v1 import scheduler_pb2 as spb
from pylon_services.gateway.domain import deployments as records
from pylon_services.gateway.domain.deployments import DeploymentRecord
from pylon_services.gateway.domain.ports import DeploymentRecords
from pylon_services.gateway.domain.replacement import EndedJob
from pylon_services.runtime.context import forward_metadata, remaining_timeout
from pylon_services.runtime.internal_auth import internal_header
from pylon_services.runtime.peers import PlatformClients
from pylon_services.runtime.protoconv import struct

# A replica job whose attempt fails (its process killed, its node lost) is restarted by the
# scheduler this many times (PYLON_GATEWAY_REPLICA_MAX_RETRIES): the new attempt registers under
# the same job. A job that ends anyway is replaced by the controller (``domain/replacement.py``).
REPLICA_MAX_RETRIES = 3
_ENDED = {spb.JOB_STATE_FAILED: "failed", spb.JOB_STATE_CANCELLED: "cancelled", spb.JOB_STATE_SUCCEEDED: "exited"}
# A cancel of a job that is already over, or gone, has nothing left to do.
_ALREADY_OVER = (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND)


@dataclass(frozen=True)
class Acting:
    """Who a call to another service is made as, and how long it may take."""

    metadata: tuple[tuple[str, str], ...]
    timeout: float

    @classmethod
    def caller(cls, context: grpc.aio.ServicerContext, default: float = 30.0) -> Acting:
        """On behalf of the current gRPC caller, within its deadline."""
        return cls(forward_metadata(), remaining_timeout(context, default))

    @classmethod
    def platform(cls, admin_key: str, timeout: float = 30.0) -> Acting:
        """As the platform (the controller: no caller)."""
        return cls((("authorization", f"Bearer {admin_key}"),), timeout)

    def with_internal(self, internal_key: str) -> tuple[tuple[str, str], ...]:
        return (*self.metadata, internal_header(internal_key))


class ReplicaJobs:
    def __init__(self, deployments: DeploymentRecords, clients: PlatformClients, internal_key: str = "",
                 max_retries: int = REPLICA_MAX_RETRIES) -> None:
        self._d = deployments
        self._c = clients
        self._internal_key = internal_key
        self._max_retries = max_retries

    async def submit(self, rec: DeploymentRecord, index: int, by: Acting) -> str:
        """Submit (or, with the slot's request id, find again) the job of replica ``index``, at the
        deployment's priority class: a class above a running preemptible job's lets the scheduler
        preempt it for the replica."""
        version = rec.version_of(index)
        spec = spb.JobSpec(
            workers=1, priority_class=rec.priority_class, max_retries=self._max_retries,
            display_name=f"{rec.name} replica {index}",
            resources=spb.WorkerResources(gpus=rec.gpus, gpu_types=list(rec.gpu_types), cpus=1),
            engine=spb.EngineReplica(deployment=rec.name, model_version=version, engine=rec.engine,
                                     engine_config=struct(dict(rec.engine_config))),
            labels={"pylon.dev/deployment": rec.deployment_id})
        sched = await self._c.scheduler()
        resp = await sched.SubmitJob(spb.SubmitJobRequest(parent=f"tenants/{rec.tenant}", spec=spec,
                                                          request_id=rec.request_id_of(index)),
                                     metadata=by.metadata, timeout=by.timeout)
        return str(resp.job.name)

    async def cancel(self, job: str, by: Acting) -> None:
        sched = await self._c.scheduler()
        try:
            await sched.CancelJob(spb.CancelJobRequest(name=job), metadata=by.metadata, timeout=by.timeout)
        except grpc.aio.AioRpcError as e:
            if e.code() not in _ALREADY_OVER:
                raise

    async def settle(self, tenant: str, dep: str, by: Acting) -> DeploymentRecord:
        """Make the scheduler match the record: submit the slots that have no job yet, cancel
        the retired slots' jobs, and record both (compare-and-swap). Idempotent: any number of
        gateways may settle the same deployment at once. A refused submission is raised after
        the ones that went through are recorded, so they can be cancelled."""
        rec = await self._d.get(tenant, dep)
        todo = records.unsubmitted(rec)
        results = await asyncio.gather(*(self.submit(rec, i, by) for i in todo), return_exceptions=True)
        submitted = {i: r for i, r in zip(todo, results, strict=True) if isinstance(r, str)}
        refused = [r for r in results if isinstance(r, BaseException)]
        if submitted:
            rec = await self._d.update(tenant, dep, lambda r: records.record_jobs(r, submitted))
        if refused:
            raise refused[0]
        stop = records.to_cancel(rec, submitted)
        await asyncio.gather(*(self.cancel(job, by) for job in sorted(stop)))
        if stop:
            await self._d.forget_replicas(tenant, dep, {job.rsplit("/", 1)[-1] for job in stop})
        if rec.retired:
            rec = await self._d.update(tenant, dep, lambda r: records.drop_retired(r, stop))
        return rec

    async def cancel_all(self, rec: DeploymentRecord, by: Acting) -> None:
        """Cancel every job the record knows (undoing a create that failed)."""
        jobs = {s.job for s in rec.slots + rec.canary_slots + rec.retired if s.job}
        await asyncio.gather(*(self.cancel(job, by) for job in sorted(jobs)), return_exceptions=True)

    async def record_deployment(self, rec: DeploymentRecord, version: str, by: Acting, removed: bool = False) -> None:
        """Tell the registry that ``rec`` serves (or stopped serving) ``version``; the internal
        key shows the registry the call is the gateway's."""
        registry = await self._c.registry()
        await registry.RecordDeployment(registry_pb2.RecordDeploymentRequest(
            name=version, deployment=rec.name, removed=removed),
            metadata=by.with_internal(self._internal_key), timeout=by.timeout)

    async def ended(self, jobs: list[str], by: Acting) -> list[str]:
        """One line per job of ``jobs`` that is over, with the scheduler's reason. A job whose
        state cannot be read now counts as not over (the next read asks again)."""
        return [e.line() for e in await self.ended_jobs(jobs, by) if e.state != "gone"]

    async def ended_jobs(self, jobs: list[str], by: Acting) -> list[EndedJob]:
        """The jobs of ``jobs`` that are over (or that the scheduler no longer has), with the
        scheduler's reason; a job whose state cannot be read now counts as not over."""
        if not jobs:
            return []
        sched = await self._c.scheduler()

        async def state(job: str) -> EndedJob | None:
            try:
                resp = await sched.GetJob(spb.GetJobRequest(name=job), metadata=by.metadata,
                                          timeout=min(by.timeout, 5.0))
            except grpc.aio.AioRpcError as e:
                gone = e.code() == grpc.StatusCode.NOT_FOUND
                return EndedJob(job, "gone", "the scheduler has no such job") if gone else None
            s = resp.job.status
            if s.state not in _ENDED:
                return None
            # Failed with retries left: the workload told the scheduler a retry fails the same way.
            permanent = s.state == spb.JOB_STATE_FAILED and s.retries < resp.job.spec.max_retries
            return EndedJob(job, _ENDED[s.state], s.message, permanent)

        return [e for e in await asyncio.gather(*(state(j) for j in jobs)) if e is not None]
