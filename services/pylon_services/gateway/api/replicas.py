"""A deployment's replica jobs on the scheduler: submit, cancel, and read their states.

Calls go to the scheduler's public API with the caller's key, so the scheduler applies the
caller's tenant, role and quotas to replica jobs exactly as to any job.
"""

from __future__ import annotations

import asyncio

import grpc

from pylon.scheduler.v1 import scheduler_pb2 as spb
from pylon_services.gateway.domain import deployments as records
from pylon_services.gateway.domain.deployments import DeploymentRecord
from pylon_services.gateway.domain.ports import DeploymentRecords
from pylon_services.runtime.context import forward_metadata, remaining_timeout
from pylon_services.runtime.peers import PlatformClients
from pylon_services.runtime.protoconv import struct

# A replica job whose attempt fails (its process killed, its node lost) is restarted by the
# scheduler this many times: the new attempt registers under the same job, so the slot is
# replaced without the gateway doing anything. A model that cannot load fails every attempt.
REPLICA_MAX_RETRIES = 3
_ENDED = {spb.JOB_STATE_FAILED: "failed", spb.JOB_STATE_CANCELLED: "cancelled", spb.JOB_STATE_SUCCEEDED: "exited"}
# A cancel of a job that is already over, or gone, has nothing left to do.
_ALREADY_OVER = (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND)


class ReplicaJobs:
    def __init__(self, deployments: DeploymentRecords, clients: PlatformClients) -> None:
        self._d = deployments
        self._c = clients

    async def submit(self, rec: DeploymentRecord, index: int, context: grpc.aio.ServicerContext) -> str:
        """Submit (or, with the slot's request id, find again) the job of replica ``index``."""
        spec = spb.JobSpec(
            workers=1, priority_class="high", max_retries=REPLICA_MAX_RETRIES, display_name=f"{rec.name} replica {index}",
            resources=spb.WorkerResources(gpus=rec.gpus, gpu_types=list(rec.gpu_types), cpus=1),
            engine=spb.EngineReplica(deployment=rec.name, model_version=rec.model_version, engine=rec.engine,
                                     engine_config=struct(dict(rec.engine_config))),
            labels={"pylon.dev/deployment": rec.deployment_id})
        sched = await self._c.scheduler()
        resp = await sched.SubmitJob(spb.SubmitJobRequest(parent=f"tenants/{rec.tenant}", spec=spec,
                                                          request_id=rec.request_id_of(index)),
                                     metadata=forward_metadata(), timeout=remaining_timeout(context))
        return str(resp.job.name)

    async def cancel(self, job: str, context: grpc.aio.ServicerContext) -> None:
        sched = await self._c.scheduler()
        try:
            await sched.CancelJob(spb.CancelJobRequest(name=job), metadata=forward_metadata(),
                                  timeout=remaining_timeout(context))
        except grpc.aio.AioRpcError as e:
            if e.code() not in _ALREADY_OVER:
                raise

    async def settle(self, tenant: str, dep: str, context: grpc.aio.ServicerContext) -> DeploymentRecord:
        """Make the scheduler match the record: submit the slots that have no job yet, cancel
        the retired slots' jobs, and record both (compare-and-swap). Idempotent: any number of
        gateways may settle the same deployment at once."""
        rec = await self._d.get(tenant, dep)
        todo = records.unsubmitted(rec)
        names = await asyncio.gather(*(self.submit(rec, i, context) for i in todo))
        submitted = dict(zip(todo, names, strict=True))
        if submitted:
            rec = await self._d.update(tenant, dep, lambda r: records.record_jobs(r, submitted))
        stop = records.to_cancel(rec, submitted)
        await asyncio.gather(*(self.cancel(job, context) for job in sorted(stop)))
        if stop:
            await self._d.forget_replicas(tenant, dep, {job.rsplit("/", 1)[-1] for job in stop})
        if rec.retired:
            rec = await self._d.update(tenant, dep, lambda r: records.drop_retired(r, stop))
        return rec

    async def ended(self, jobs: list[str], context: grpc.aio.ServicerContext) -> list[str]:
        """One line per job of ``jobs`` that is over, with the scheduler's reason. A job whose
        state cannot be read now counts as not over (the next read asks again)."""
        if not jobs:
            return []
        sched = await self._c.scheduler()

        async def state(job: str) -> str:
            try:
                resp = await sched.GetJob(spb.GetJobRequest(name=job), metadata=forward_metadata(),
                                          timeout=remaining_timeout(context, 5.0))
            except grpc.aio.AioRpcError:
                return ""
            s = resp.job.status
            return f"replica job {job} {_ENDED[s.state]}: {s.message}" if s.state in _ENDED else ""

        return [line for line in await asyncio.gather(*(state(j) for j in jobs)) if line]
