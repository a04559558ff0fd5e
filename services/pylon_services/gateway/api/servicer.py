"""GatewayService: deployments (engine replicas run as scheduler jobs), and Generate, Complete,
Chat and ListModels over ``inference.py`` (which the OpenAI-compatible HTTP server shares).

Every request field is checked before anything is stored or called (``inputs.py``,
``domain/requests.py``); errors of the services called pass on without internal addresses.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import TypeVar

import grpc

from pylon.engine.v1 import engine_pb2
from pylon.gateway.v1 import gateway_pb2 as pb
from pylon.gateway.v1 import gateway_pb2_grpc
from pylon.registry.v1 import registry_pb2
from pylon_services.common.errors import AlreadyExists, FieldViolation, InvalidArgument
from pylon_services.gateway.api import inputs
from pylon_services.gateway.api.inference import (
    SESSION_HEADER,
    Inference,
    Piece,
    calling,
    checked_sampling,
    session_id,
)
from pylon_services.gateway.api.replicas import ReplicaJobs
from pylon_services.gateway.domain import deployments as records
from pylon_services.gateway.domain import requests
from pylon_services.gateway.domain.chat import ChatMessage
from pylon_services.gateway.domain.deployments import DeploymentRecord
from pylon_services.gateway.domain.ports import DeploymentRecords
from pylon_services.gateway.domain.routing import deployment_state
from pylon_services.runtime.context import forward_metadata, principal, remaining_timeout
from pylon_services.runtime.peers import PlatformClients
from pylon_services.runtime.protoconv import page_size, plain_struct, struct, ts
from pylon_services.workloads import REGISTRY, WorkloadKind

_Piece = TypeVar("_Piece", pb.GenerateResponse, pb.ChatResponse)

MAX_REPLICAS = records.MAX_REPLICAS
_STATES = {"pending": pb.DEPLOYMENT_STATE_PENDING, "ready": pb.DEPLOYMENT_STATE_READY,
           "failed": pb.DEPLOYMENT_STATE_FAILED, "deleting": pb.DEPLOYMENT_STATE_DELETING}
# A ListDeployments page ends once its deployments reach this, far below the message limit.
LIST_MAX_BYTES = 4 << 20


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    def __init__(self, deployments: DeploymentRecords, clients: PlatformClients,
                 serve: Inference | None = None) -> None:
        self._d = deployments
        self._c = clients
        self._jobs = ReplicaJobs(deployments, clients)
        self._serve = serve or Inference(deployments, clients)

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
        tenant = inputs.parent(request.parent, principal())
        dep_id = inputs.deployment_id(request.deployment_id)
        request_id = inputs.request_id(request.request_id)
        d = request.deployment
        replicas = records.check_replicas("deployment.replicas", d.replicas or 1)
        uri = inputs.model_uri(d.model_uri)
        engine = d.engine or "torch"
        workload = REGISTRY.get(WorkloadKind.ENGINE, engine)
        bad = requests.resource_violations(d.gpus_per_replica, list(d.gpu_types))
        if workload is None:
            bad.append(FieldViolation("deployment.engine", f"must be one of {', '.join(REGISTRY.names(WorkloadKind.ENGINE))}"))
        elif workload.max_gpus_per_worker is not None and d.gpus_per_replica > workload.max_gpus_per_worker:
            bad.append(FieldViolation("deployment.gpus_per_replica", f"the {engine} engine uses at most "
                                      f"{workload.max_gpus_per_worker:g} GPU per replica: ask for more replicas instead"))
        config = plain_struct(d.engine_config)
        config_bad = requests.config_violations("deployment.engine_config", config)
        bad += config_bad
        if workload is not None and not config_bad:
            bad += [FieldViolation(f"deployment.engine_config.{f[:64]}", m[:200]) for f, m in workload.check_config(config)]
        if bad:
            raise requests.invalid(bad)
        with calling("registry"):
            registry = await self._c.registry()
            resolved = await registry.ResolveModelUri(registry_pb2.ResolveModelUriRequest(uri=uri),
                                                      metadata=forward_metadata(), timeout=remaining_timeout(context))
        if not resolved.version.name.startswith(f"tenants/{tenant}/"):  # an admin creating for another tenant
            raise InvalidArgument.field("deployment.model_uri", f"must name a model of tenant {tenant}")
        rec = records.new_record(
            f"tenants/{tenant}/deployments/{dep_id}", uuid.uuid4().hex[:10], replicas, model_uri=uri,
            model_version=resolved.version.name, engine=engine, gpus=d.gpus_per_replica,
            gpu_types=tuple(d.gpu_types), engine_config=config, create_time=time.time(), request_id=request_id)
        if not await self._d.create(rec):
            existing = await self._d.get(tenant, dep_id)
            if not request_id or existing.request_id != request_id:
                raise AlreadyExists(f"{rec.name} already exists")
        with calling("scheduler"):
            rec = await self._jobs.settle(tenant, dep_id, context)  # also finishes a retried create
        with calling("registry"):
            await registry.RecordDeployment(registry_pb2.RecordDeploymentRequest(
                name=rec.model_version, deployment=rec.name), metadata=forward_metadata(),
                timeout=remaining_timeout(context))
        return pb.CreateDeploymentResponse(deployment=await self._view(rec, context))

    async def GetDeployment(self, request: pb.GetDeploymentRequest,
                            context: grpc.aio.ServicerContext) -> pb.GetDeploymentResponse:
        tenant, dep = inputs.deployment_name("name", request.name, principal())
        return pb.GetDeploymentResponse(deployment=await self._view(await self._d.get(tenant, dep), context))

    async def ListDeployments(self, request: pb.ListDeploymentsRequest,
                              context: grpc.aio.ServicerContext) -> pb.ListDeploymentsResponse:
        """One page; it ends early once its deployments reach ``LIST_MAX_BYTES``."""
        tenant = inputs.parent(request.parent, principal())
        recs, token = await self._d.list_deployments(tenant, page_size(request.page_size),
                                                     inputs.page_token(request.page_token))
        views: list[pb.Deployment] = []
        size = 0
        for rec in recs:
            view = await self._view(rec, context)
            if views and size + view.ByteSize() > LIST_MAX_BYTES:
                return pb.ListDeploymentsResponse(deployments=views, next_page_token=views[-1].name.rsplit("/", 1)[1])
            views.append(view)
            size += view.ByteSize()
        return pb.ListDeploymentsResponse(deployments=views, next_page_token=token)

    async def ScaleDeployment(self, request: pb.ScaleDeploymentRequest,
                              context: grpc.aio.ServicerContext) -> pb.ScaleDeploymentResponse:
        """Change the desired replica count (compare-and-swap, optionally against ``etag``),
        then submit the new slots' jobs and cancel the retired ones."""
        tenant, dep = inputs.deployment_name("name", request.name, principal())
        replicas = records.check_replicas("replicas", request.replicas)
        etag = inputs.etag(request.etag)
        await self._d.update(tenant, dep, lambda r: records.resize(r, replicas, etag))
        with calling("scheduler"):
            rec = await self._jobs.settle(tenant, dep, context)
        return pb.ScaleDeploymentResponse(deployment=await self._view(rec, context))

    async def DeleteDeployment(self, request: pb.DeleteDeploymentRequest,
                               context: grpc.aio.ServicerContext) -> pb.DeleteDeploymentResponse:
        tenant, dep = inputs.deployment_name("name", request.name, principal())
        await self._d.update(tenant, dep, records.retire_all)
        with calling("scheduler"):
            rec = await self._jobs.settle(tenant, dep, context)
        with calling("registry"):
            registry = await self._c.registry()
            await registry.RecordDeployment(registry_pb2.RecordDeploymentRequest(
                name=rec.model_version, deployment=rec.name, removed=True), metadata=forward_metadata(),
                timeout=remaining_timeout(context))
        await self._d.delete(tenant, dep)
        return pb.DeleteDeploymentResponse()

    async def Generate(self, request: pb.GenerateRequest,
                       context: grpc.aio.ServicerContext) -> AsyncIterator[pb.GenerateResponse]:
        async for piece in self._generate(request, context):
            yield _response(piece, pb.GenerateResponse)

    async def Complete(self, request: pb.CompleteRequest, context: grpc.aio.ServicerContext) -> pb.CompleteResponse:
        """Generate, gathered: every completion's pieces joined, by index."""
        out = pb.CompleteResponse()
        by_index: dict[int, pb.Completion] = {}
        async for piece in self._generate(request, context):
            r = piece.response
            c = by_index.get(r.index)
            if c is None:
                c = by_index[r.index] = pb.Completion(index=r.index)
            c.text += r.text
            c.token_ids.extend(r.token_ids)
            c.logprobs.extend(r.logprobs)
            c.finish_reason = r.finish_reason or c.finish_reason
            out.usage.CopyFrom(r.usage)
            out.replica, out.deployment = piece.replica, piece.deployment
        out.completions.extend(by_index[i] for i in sorted(by_index))
        return out

    async def _generate(self, request: pb.GenerateRequest | pb.CompleteRequest,
                        context: grpc.aio.ServicerContext) -> AsyncIterator[Piece]:
        sampling = checked_sampling(request.sampling, request.prompt)
        request_id = inputs.request_id(request.request_id)
        rec = await self._serve.resolve(request.deployment, request.model, remaining_timeout(context))
        engine_request = engine_pb2.GenerateRequest(request_id=request_id, prompt=request.prompt, sampling=sampling)
        async for piece in self._serve.relay(rec, engine_request, remaining_timeout(context, 300), _session(context)):
            yield piece

    async def Chat(self, request: pb.ChatRequest,
                   context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ChatResponse]:
        sampling = checked_sampling(request.sampling, None)
        request_id = inputs.request_id(request.request_id)
        rec = await self._serve.resolve(request.deployment, request.model, remaining_timeout(context))
        messages = [ChatMessage(m.role, m.content) for m in request.messages]
        ids = await self._serve.chat_prompt(rec, messages, remaining_timeout(context))
        engine_request = engine_pb2.GenerateRequest(request_id=request_id, prompt_token_ids=ids, sampling=sampling)
        async for piece in self._serve.relay(rec, engine_request, remaining_timeout(context, 300), _session(context)):
            yield _response(piece, pb.ChatResponse)

    async def ListModels(self, request: pb.ListModelsRequest,
                         context: grpc.aio.ServicerContext) -> pb.ListModelsResponse:
        tenant = inputs.parent(request.parent, principal())
        return pb.ListModelsResponse(models=[
            pb.ServedModel(deployment=rec.name, model_uri=rec.model_uri, model_version=rec.model_version, ready=ready,
                           create_time=ts(rec.create_time)) for rec, ready in await self._serve.list_models(tenant)])


def _session(context: grpc.aio.ServicerContext) -> str:
    """The caller's session (``x-session-id`` metadata) for session affinity."""
    for key, value in context.invocation_metadata() or ():
        if key == SESSION_HEADER and isinstance(value, str):
            return session_id(value)
    return ""


def _response(piece: Piece, cls: type[_Piece]) -> _Piece:
    r = piece.response
    return cls(text=r.text, token_ids=r.token_ids, finish_reason=r.finish_reason, usage=r.usage,
               replica=piece.replica, index=r.index, logprobs=r.logprobs, deployment=piece.deployment)
