"""GatewayService: deployments (engine replicas run as scheduler jobs) and streaming Generate."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc

from pylon.engine.v1 import engine_pb2
from pylon.gateway.v1 import gateway_pb2 as pb
from pylon.gateway.v1 import gateway_pb2_grpc
from pylon.registry.v1 import registry_pb2
from pylon.scheduler.v1 import scheduler_pb2 as spb
from pylon_services.common.errors import AlreadyExists, InvalidArgument, Unavailable
from pylon_services.common.names import check_id, parse_name, parse_parent
from pylon_services.gateway.domain.routing import deployment_state, pick_replica
from pylon_services.gateway.store.deployments import DeploymentStore
from pylon_services.runtime.context import forward_metadata, principal, remaining_timeout
from pylon_services.runtime.peers import PlatformClients
from pylon_services.runtime.protoconv import page_size, struct, ts

MAX_REPLICAS = 16
_STATES = {"pending": pb.DEPLOYMENT_STATE_PENDING, "ready": pb.DEPLOYMENT_STATE_READY,
           "failed": pb.DEPLOYMENT_STATE_FAILED}


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    def __init__(self, deployments: DeploymentStore, clients: PlatformClients) -> None:
        self._d = deployments
        self._c = clients
        self._inflight: dict[str, int] = {}

    async def _view(self, tenant: str, dep: str, doc: dict[str, Any]) -> pb.Deployment:
        replicas = await self._d.replicas(tenant, dep)
        now = time.time()
        state, message = deployment_state(replicas, now, doc.get("failed_jobs", 0), doc["replicas"])
        live = {r.job_id: r for r in replicas}
        status = [pb.Replica(job=j, address=live[j.rsplit("/", 1)[1]].address if j.rsplit("/", 1)[1] in live else "",
                             ready=j.rsplit("/", 1)[1] in live and live[j.rsplit("/", 1)[1]].fresh(now))
                  for j in doc["jobs"]]
        return pb.Deployment(name=doc["name"], model_uri=doc["model_uri"], model_version=doc["model_version"],
                             engine=doc["engine"], replicas=doc["replicas"], gpus_per_replica=doc["gpus"],
                             gpu_types=doc["gpu_types"], engine_config=struct(doc.get("engine_config")),
                             state=_STATES[state], message=message, replica_status=status,
                             create_time=ts(doc["create_time"]))

    async def _submit_replica(self, tenant: str, doc: dict[str, Any], index: int, context: Any) -> str:
        spec = spb.JobSpec(
            workers=1, priority_class="high", display_name=f"{doc['name']} replica {index}",
            resources=spb.WorkerResources(gpus=doc["gpus"], gpu_types=doc["gpu_types"], cpus=1),
            engine=spb.EngineReplica(deployment=doc["name"], model_version=doc["model_version"], engine=doc["engine"]),
            labels={"pylon.dev/deployment": doc["name"].rsplit("/", 1)[1]})
        sched = await self._c.scheduler()
        resp = await sched.SubmitJob(spb.SubmitJobRequest(parent=f"tenants/{tenant}", spec=spec,
                                                          request_id=f"{doc['uid']}-r{index}"),
                                     metadata=forward_metadata(), timeout=remaining_timeout(context))
        return resp.job.name

    async def CreateDeployment(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        p = principal()
        tenant = parse_parent("parent", request.parent, p)
        dep_id = check_id("deployment_id", request.deployment_id)
        d = request.deployment
        replicas = d.replicas or 1
        if not 1 <= replicas <= MAX_REPLICAS:
            raise InvalidArgument.field("deployment.replicas", f"must be between 1 and {MAX_REPLICAS}")
        engine = d.engine or "torch"
        if engine not in ("torch", "vllm"):
            raise InvalidArgument.field("deployment.engine", "must be 'torch' or 'vllm'")
        registry = await self._c.registry()
        resolved = await registry.ResolveModelUri(registry_pb2.ResolveModelUriRequest(uri=d.model_uri),
                                                  metadata=forward_metadata(), timeout=remaining_timeout(context))
        doc = {"name": f"tenants/{tenant}/deployments/{dep_id}", "model_uri": d.model_uri,
               "model_version": resolved.version.name, "engine": engine, "replicas": replicas,
               "gpus": d.gpus_per_replica, "gpu_types": list(d.gpu_types), "jobs": [], "uid": uuid.uuid4().hex[:10],
               "create_time": time.time(), "request_id": request.request_id}
        if not await self._d.create(tenant, dep_id, doc):
            existing = await self._d.get(tenant, dep_id)
            if request.request_id and existing.get("request_id") == request.request_id:
                return pb.CreateDeploymentResponse(deployment=await self._view(tenant, dep_id, existing))
            raise AlreadyExists(f"{doc['name']} already exists")
        doc["jobs"] = [await self._submit_replica(tenant, doc, i, context) for i in range(replicas)]
        await self._d.save(tenant, dep_id, doc)
        await registry.RecordDeployment(registry_pb2.RecordDeploymentRequest(
            name=doc["model_version"], deployment=doc["name"]), metadata=forward_metadata(),
            timeout=remaining_timeout(context))
        return pb.CreateDeploymentResponse(deployment=await self._view(tenant, dep_id, doc))

    async def GetDeployment(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        tenant, dep = parse_name("name", request.name, ("tenants", "deployments"), principal())
        return pb.GetDeploymentResponse(deployment=await self._view(tenant, dep, await self._d.get(tenant, dep)))

    async def ListDeployments(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        tenant = parse_parent("parent", request.parent, principal())
        size = page_size(request.page_size)
        docs = await self._d.list_deployments(tenant, size, request.page_token)
        views = [await self._view(tenant, d["name"].rsplit("/", 1)[1], d) for d in docs]
        token = docs[-1]["name"].rsplit("/", 1)[1] if len(docs) == size else ""
        return pb.ListDeploymentsResponse(deployments=views, next_page_token=token)

    async def DeleteDeployment(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        tenant, dep = parse_name("name", request.name, ("tenants", "deployments"), principal())
        doc = await self._d.get(tenant, dep)
        sched = await self._c.scheduler()
        for job in doc["jobs"]:
            try:
                await sched.CancelJob(spb.CancelJobRequest(name=job), metadata=forward_metadata(),
                                      timeout=remaining_timeout(context))
            except grpc.aio.AioRpcError as e:
                if e.code() not in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
                    raise
        registry = await self._c.registry()
        await registry.RecordDeployment(registry_pb2.RecordDeploymentRequest(
            name=doc["model_version"], deployment=doc["name"], removed=True), metadata=forward_metadata(),
            timeout=remaining_timeout(context))
        await self._d.delete(tenant, dep)
        return pb.DeleteDeploymentResponse()

    async def Generate(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        tenant, dep = parse_name("deployment", request.deployment, ("tenants", "deployments"), principal())
        if not request.prompt:
            raise InvalidArgument.field("prompt", "must not be empty")
        s = request.sampling
        if s.max_tokens < 0 or s.temperature < 0 or not 0 <= s.top_p <= 1 or s.top_k < 0:
            raise InvalidArgument.field("sampling", "max_tokens, temperature and top_k must be >= 0; top_p in [0, 1]")
        await self._d.get(tenant, dep)
        replica = pick_replica(await self._d.replicas(tenant, dep), self._inflight, time.time())
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
