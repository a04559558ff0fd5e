"""GatewayService: deployments (engine replicas run as scheduler jobs) and streaming Generate."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import grpc
from google.protobuf import json_format

from pylon.engine.v1 import engine_pb2
from pylon.gateway.v1 import gateway_pb2 as pb
from pylon.gateway.v1 import gateway_pb2_grpc
from pylon.registry.v1 import registry_pb2
from pylon_services.common.errors import AlreadyExists, FieldViolation, InvalidArgument, Unavailable
from pylon_services.common.names import check_id, parse_name, parse_parent
from pylon_services.gateway.api.replicas import ReplicaJobs
from pylon_services.gateway.domain import deployments as records
from pylon_services.gateway.domain.deployments import DeploymentRecord
from pylon_services.gateway.domain.ports import DeploymentRecords
from pylon_services.gateway.domain.routing import deployment_state, pick_replica
from pylon_services.runtime.context import forward_metadata, principal, remaining_timeout
from pylon_services.runtime.peers import PlatformClients
from pylon_services.runtime.protoconv import page_size, struct, ts
from pylon_services.workloads import REGISTRY, WorkloadKind

MAX_REPLICAS = records.MAX_REPLICAS
_STATES = {"pending": pb.DEPLOYMENT_STATE_PENDING, "ready": pb.DEPLOYMENT_STATE_READY,
           "failed": pb.DEPLOYMENT_STATE_FAILED, "deleting": pb.DEPLOYMENT_STATE_DELETING}
_DEPLOYMENT = ("tenants", "deployments")


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    def __init__(self, deployments: DeploymentRecords, clients: PlatformClients) -> None:
        self._d = deployments
        self._c = clients
        self._jobs = ReplicaJobs(deployments, clients)
        self._inflight: dict[str, int] = {}

    async def _view(self, rec: DeploymentRecord, context: grpc.aio.ServicerContext) -> pb.Deployment:
        """The deployment as the API shows it. Replicas that do not serve have their jobs' states
        read from the scheduler, so a deployment whose every replica job ended reads FAILED."""
        now = time.time()
        live = {r.job_id: r for r in await self._d.replicas(rec.tenant, rec.deployment_id)}
        status = []
        for slot in rec.slots:
            reg = live.get(slot.job_id) if slot.job else None
            status.append(pb.Replica(job=slot.job, address=reg.address if reg else "",
                                     ready=bool(reg and reg.fresh(now)), running_requests=reg.running if reg else 0))
        waiting = [r.job for r in status if r.job and not r.ready]
        ready = sum(r.ready for r in status)
        ended = await self._jobs.ended(waiting, context) if not ready else []
        state, message = deployment_state(ready, rec.replicas, ended, len(status), rec.deleting)
        return pb.Deployment(name=rec.name, model_uri=rec.model_uri, model_version=rec.model_version,
                             engine=rec.engine, replicas=rec.replicas, gpus_per_replica=rec.gpus,
                             gpu_types=list(rec.gpu_types), engine_config=struct(dict(rec.engine_config)),
                             state=_STATES[state], message=message, replica_status=status,
                             create_time=ts(rec.create_time), etag=rec.etag)

    async def CreateDeployment(self, request: pb.CreateDeploymentRequest,
                               context: grpc.aio.ServicerContext) -> pb.CreateDeploymentResponse:
        tenant = parse_parent("parent", request.parent, principal())
        dep_id = check_id("deployment_id", request.deployment_id)
        d = request.deployment
        replicas = records.check_replicas("deployment.replicas", d.replicas or 1)
        engine = d.engine or "torch"
        workload = REGISTRY.get(WorkloadKind.ENGINE, engine)
        if workload is None:
            names = ", ".join(REGISTRY.names(WorkloadKind.ENGINE))
            raise InvalidArgument.field("deployment.engine", f"must be one of {names}, got {engine!r}")
        config = json_format.MessageToDict(d.engine_config)
        if bad := workload.check_config(config):
            raise InvalidArgument("; ".join(f"deployment.engine_config.{f}: {m}" for f, m in bad),
                                  [FieldViolation(f"deployment.engine_config.{f}", m) for f, m in bad])
        registry = await self._c.registry()
        resolved = await registry.ResolveModelUri(registry_pb2.ResolveModelUriRequest(uri=d.model_uri),
                                                  metadata=forward_metadata(), timeout=remaining_timeout(context))
        rec = records.new_record(
            f"tenants/{tenant}/deployments/{dep_id}", uuid.uuid4().hex[:10], replicas, model_uri=d.model_uri,
            model_version=resolved.version.name, engine=engine, gpus=d.gpus_per_replica,
            gpu_types=tuple(d.gpu_types), engine_config=config, create_time=time.time(),
            request_id=request.request_id)
        if not await self._d.create(rec):
            existing = await self._d.get(tenant, dep_id)
            if not request.request_id or existing.request_id != request.request_id:
                raise AlreadyExists(f"{rec.name} already exists")
        rec = await self._jobs.settle(tenant, dep_id, context)  # also finishes a retried create
        await registry.RecordDeployment(registry_pb2.RecordDeploymentRequest(
            name=rec.model_version, deployment=rec.name), metadata=forward_metadata(),
            timeout=remaining_timeout(context))
        return pb.CreateDeploymentResponse(deployment=await self._view(rec, context))

    async def GetDeployment(self, request: pb.GetDeploymentRequest,
                            context: grpc.aio.ServicerContext) -> pb.GetDeploymentResponse:
        tenant, dep = parse_name("name", request.name, _DEPLOYMENT, principal())
        return pb.GetDeploymentResponse(deployment=await self._view(await self._d.get(tenant, dep), context))

    async def ListDeployments(self, request: pb.ListDeploymentsRequest,
                              context: grpc.aio.ServicerContext) -> pb.ListDeploymentsResponse:
        tenant = parse_parent("parent", request.parent, principal())
        recs, token = await self._d.list_deployments(tenant, page_size(request.page_size), request.page_token)
        views = [await self._view(r, context) for r in recs]
        return pb.ListDeploymentsResponse(deployments=views, next_page_token=token)

    async def ScaleDeployment(self, request: pb.ScaleDeploymentRequest,
                              context: grpc.aio.ServicerContext) -> pb.ScaleDeploymentResponse:
        """Change the desired replica count (compare-and-swap, optionally against ``etag``),
        then submit the new slots' jobs and cancel the retired ones."""
        tenant, dep = parse_name("name", request.name, _DEPLOYMENT, principal())
        replicas = records.check_replicas("replicas", request.replicas)
        await self._d.update(tenant, dep, lambda r: records.resize(r, replicas, request.etag))
        rec = await self._jobs.settle(tenant, dep, context)
        return pb.ScaleDeploymentResponse(deployment=await self._view(rec, context))

    async def DeleteDeployment(self, request: pb.DeleteDeploymentRequest,
                               context: grpc.aio.ServicerContext) -> pb.DeleteDeploymentResponse:
        tenant, dep = parse_name("name", request.name, _DEPLOYMENT, principal())
        await self._d.update(tenant, dep, records.retire_all)
        rec = await self._jobs.settle(tenant, dep, context)
        registry = await self._c.registry()
        await registry.RecordDeployment(registry_pb2.RecordDeploymentRequest(
            name=rec.model_version, deployment=rec.name, removed=True), metadata=forward_metadata(),
            timeout=remaining_timeout(context))
        await self._d.delete(tenant, dep)
        return pb.DeleteDeploymentResponse()

    async def Generate(self, request: pb.GenerateRequest,
                       context: grpc.aio.ServicerContext) -> AsyncIterator[pb.GenerateResponse]:
        tenant, dep = parse_name("deployment", request.deployment, _DEPLOYMENT, principal())
        if not request.prompt:
            raise InvalidArgument.field("prompt", "must not be empty")
        s = request.sampling
        if s.max_tokens < 0 or s.temperature < 0 or not 0 <= s.top_p <= 1 or s.top_k < 0:
            raise InvalidArgument.field("sampling", "max_tokens, temperature and top_k must be >= 0; top_p in [0, 1]")
        rec = await self._d.get(tenant, dep)
        # Only replicas of live slots: a retired replica may still look fresh for a few seconds.
        slots = rec.live_job_ids()
        registered = [r for r in await self._d.replicas(tenant, dep) if r.job_id in slots]
        replica = pick_replica(registered, self._inflight, time.time())
        if replica is None:
            raise Unavailable(f"{request.deployment} has no ready replica yet; retry shortly")
        engine = await self._c.engine(replica.address)
        self._inflight[replica.address] = self._inflight.get(replica.address, 0) + 1
        try:
            stream = engine.Generate(engine_pb2.GenerateRequest(request_id=request.request_id, prompt=request.prompt,
                                                                sampling=s), timeout=remaining_timeout(context, 300))
            async for piece in stream:
                yield pb.GenerateResponse(text=piece.text, token_ids=piece.token_ids,
                                          finish_reason=piece.finish_reason, usage=piece.usage, replica=replica.job_id)
        finally:
            self._inflight[replica.address] -= 1
