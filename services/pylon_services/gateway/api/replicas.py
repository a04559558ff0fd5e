"""A deployment's replica jobs on the scheduler: submit, cancel, and read their states.

Calls go to the scheduler's public API with the caller's key, so the scheduler applies the
caller's tenant, role and quotas to replica jobs exactly as to any job.
"""

from __future__ import annotations

import asyncio

import grpc

from pylon.scheduler.v1 import scheduler_pb2 as spb
from pylon_services.gateway.domain import deployments as records
from pylon_services.gateway.domain.deployments import Doc
from pylon_services.gateway.store.deployments import DeploymentStore
from pylon_services.runtime.context import forward_metadata, remaining_timeout
from pylon_services.runtime.peers import PlatformClients

_ENDED = {spb.JOB_STATE_FAILED: "failed", spb.JOB_STATE_CANCELLED: "cancelled", spb.JOB_STATE_SUCCEEDED: "exited"}
# A cancel of a job that is already over, or gone, has nothing left to do.
_ALREADY_OVER = (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND)


class ReplicaJobs:
    def __init__(self, deployments: DeploymentStore, clients: PlatformClients) -> None:
        self._d = deployments
        self._c = clients

    async def submit(self, doc: Doc, index: int, context: grpc.aio.ServicerContext) -> str:
        """Submit (or, with the slot's request id, find again) the job of replica ``index``."""
        spec = spb.JobSpec(
            workers=1, priority_class="high", display_name=f"{doc['name']} replica {index}",
            resources=spb.WorkerResources(gpus=doc["gpus"], gpu_types=doc["gpu_types"], cpus=1),
            engine=spb.EngineReplica(deployment=doc["name"], model_version=doc["model_version"], engine=doc["engine"]),
            labels={"pylon.dev/deployment": doc["name"].rsplit("/", 1)[1]})
        tenant = doc["name"].split("/")[1]
        sched = await self._c.scheduler()
        resp = await sched.SubmitJob(spb.SubmitJobRequest(parent=f"tenants/{tenant}", spec=spec,
                                                          request_id=records.request_id(doc, index)),
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

    async def settle(self, tenant: str, dep: str, context: grpc.aio.ServicerContext) -> Doc:
        """Make the scheduler match the record: submit the slots that have no job yet, cancel
        the retired slots' jobs, and record both (compare-and-swap). Idempotent: any number of
        gateways may settle the same deployment at once."""
        doc = await self._d.get(tenant, dep)
        todo = records.unsubmitted(doc)
        names = await asyncio.gather(*(self.submit(doc, i, context) for i in todo))
        submitted = dict(zip(todo, names, strict=True))
        if submitted:
            doc = await self._d.update(tenant, dep, lambda d: records.record_jobs(d, submitted))
        stop = records.to_cancel(doc, submitted)
        await asyncio.gather(*(self.cancel(job, context) for job in sorted(stop)))
        if stop:
            await self._d.forget_replicas(tenant, dep, {job.rsplit("/", 1)[-1] for job in stop})
        if doc["retired"]:
            doc = await self._d.update(tenant, dep, lambda d: records.drop_retired(d, stop))
        return doc

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
