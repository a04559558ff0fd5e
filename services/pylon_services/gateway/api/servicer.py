"""GatewayService: deployments (engine replicas run as scheduler jobs), and Generate, Complete,
Chat and ListModels over ``inference.py`` (which the OpenAI-compatible HTTP server shares).

Every request field is checked before anything is stored or called (``inputs.py``,
``domain/requests.py``); errors of the services called pass on without internal addresses.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TypeVar

import grpc

from pylon.engine.v1 import engine_pb2
from pylon.gateway.v1 import gateway_pb2 as pb
from pylon.gateway.v1 import gateway_pb2_grpc
from pylon.registry.v1 import registry_pb2
from pylon_services.common.errors import AlreadyExists, FieldViolation, InvalidArgument, Unimplemented
from pylon_services.gateway.api import inputs, policies
from pylon_services.gateway.api.admission import Admission, grpc_priority
from pylon_services.gateway.api.inference import (
    SESSION_HEADER,
    Inference,
    Piece,
    calling,
    checked_sampling,
    session_id,
)
from pylon_services.gateway.api.replicas import Acting, ReplicaJobs
from pylon_services.gateway.domain import deployments as records
from pylon_services.gateway.domain import replacement, requests
from pylon_services.gateway.domain.chat import ChatMessage
from pylon_services.gateway.domain.deployments import DeploymentRecord
from pylon_services.gateway.domain.ports import ServingCounts, ServingView
from pylon_services.gateway.domain.routing import deployment_state
from pylon_services.gateway.domain.sharing import SharedDeploymentRecords, checked_sharing, share, sharing_violations
from pylon_services.runtime.context import forward_metadata, principal, remaining_timeout
from pylon_services.runtime.peers import PlatformClients
from pylon_services.runtime.protoconv import page_size, plain_struct, struct, ts
from pylon_services.workloads import REGISTRY, WorkloadKind

log = logging.getLogger("pylon.gateway")
_Piece = TypeVar("_Piece", pb.GenerateResponse, pb.ChatResponse)

MAX_REPLICAS = records.MAX_REPLICAS
_STATES = {"pending": pb.DEPLOYMENT_STATE_PENDING, "ready": pb.DEPLOYMENT_STATE_READY,
           "failed": pb.DEPLOYMENT_STATE_FAILED, "deleting": pb.DEPLOYMENT_STATE_DELETING,
           "idle": pb.DEPLOYMENT_STATE_IDLE}
# A ListDeployments page ends once its deployments reach this, far below the message limit.
LIST_MAX_BYTES = 4 << 20


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    def __init__(self, deployments: SharedDeploymentRecords, clients: PlatformClients,
                 serve: Inference | None = None, jobs: ReplicaJobs | None = None,
                 counters: ServingCounts | None = None, admission: Admission | None = None) -> None:
        self._d = deployments
        self._admission = admission
        self._c = clients
        self._jobs = jobs or ReplicaJobs(deployments, clients)
        self._serve = serve or Inference(deployments, clients)
        self._counters = counters

    async def _view(self, rec: DeploymentRecord, context: grpc.aio.ServicerContext) -> pb.Deployment:
        """The deployment as the API shows it. Replicas that do not serve have their jobs' states
        read from the scheduler, so a deployment whose every replica job ended reads FAILED."""
        now = time.time()
        live = {r.job_id: r for r in await self._d.replicas(rec.tenant, rec.deployment_id)}
        status = []
        for slot, canary in [(s, False) for s in rec.slots] + [(s, True) for s in rec.canary_slots]:
            reg = live.get(slot.job_id) if slot.job else None
            status.append(pb.Replica(job=slot.job, address=reg.address if reg else "",
                                     ready=bool(reg and reg.fresh(now)), running_requests=reg.running if reg else 0,
                                     model_version=slot.version or rec.model_version, canary=canary))
        stable = status[:len(rec.slots)]
        waiting = [r.job for r in stable if r.job and not r.ready]
        ready = sum(r.ready for r in stable)
        ended = await self._jobs.ended(waiting, Acting.caller(context)) if not ready else []
        state, message = replacement.shown(*deployment_state(ready, rec.replicas, ended, len(stable), rec.deleting),
                                           rec.crash_loop)
        view = await self._counters.read(rec.tenant, rec.deployment_id) if self._counters else ServingView()
        return pb.Deployment(name=rec.name, model_uri=rec.model_uri, model_version=rec.model_version,
                             engine=rec.engine, replicas=rec.replicas, gpus_per_replica=rec.gpus,
                             gpu_types=list(rec.gpu_types), engine_config=struct(dict(rec.engine_config)),
                             state=_STATES[state], message=message, replica_status=status,
                             create_time=ts(rec.create_time), etag=rec.etag,
                             priority_class=rec.priority_class, shared_with=list(rec.shared_with),
                             **policies.history_fields(rec, view))  # type: ignore[arg-type]

    async def CreateDeployment(self, request: pb.CreateDeploymentRequest,
                               context: grpc.aio.ServicerContext) -> pb.CreateDeploymentResponse:
        tenant = inputs.parent(request.parent, principal())
        dep_id = inputs.deployment_id(request.deployment_id)
        request_id = inputs.request_id(request.request_id)
        d = request.deployment
        uri = inputs.model_uri(d.model_uri)
        scaling = policies.autoscaling_from_pb(d.autoscaling, "deployment.autoscaling")
        rollout = policies.rollout_from_pb(d.rollout, "deployment.rollout", uri)
        if scaling.enabled:
            replicas = records.check_replicas("deployment.replicas", d.replicas or max(scaling.min_replicas, 1),
                                              max(scaling.min_replicas, 1), scaling.max_replicas)
        else:
            replicas = records.check_replicas("deployment.replicas", d.replicas or 1)
        engine = d.engine or "torch"
        workload = REGISTRY.get(WorkloadKind.ENGINE, engine)
        bad = requests.resource_violations(d.gpus_per_replica, list(d.gpu_types))
        if workload is None:
            bad.append(FieldViolation("deployment.engine", f"must be one of {', '.join(REGISTRY.names(WorkloadKind.ENGINE))}"))
        elif workload.max_gpus_per_worker is not None and d.gpus_per_replica > workload.max_gpus_per_worker:
            bad.append(FieldViolation("deployment.gpus_per_replica", f"the {engine} engine uses at most "
                                      f"{workload.max_gpus_per_worker:g} GPU per replica: ask for more replicas instead"))
        bad += records.priority_violations("deployment.priority_class", d.priority_class)
        config = plain_struct(d.engine_config)
        config_bad = requests.config_violations("deployment.engine_config", config)
        bad += config_bad + sharing_violations(list(d.shared_with), tenant, "deployment.shared_with")
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
            gpu_types=tuple(d.gpu_types), engine_config=config, create_time=time.time(), request_id=request_id,
            autoscaling=scaling, rollout=rollout, priority_class=d.priority_class or records.DEFAULT_PRIORITY_CLASS,
            shared_with=tuple(d.shared_with))
        if not await self._d.create(rec):
            existing = await self._d.get(tenant, dep_id)
            if not request_id or existing.request_id != request_id:
                raise AlreadyExists(f"{rec.name} already exists")
        by = Acting.caller(context)
        try:
            with calling("scheduler"):
                rec = await self._jobs.settle(tenant, dep_id, by)  # also finishes a retried create
            with calling("registry"):
                await self._jobs.record_deployment(rec, rec.model_version, by)
        except BaseException:
            await self._undo_create(tenant, dep_id, by)
            raise
        return pb.CreateDeploymentResponse(deployment=await self._view(rec, context))

    async def _undo_create(self, tenant: str, dep_id: str, by: Acting) -> None:
        """A create the scheduler or the registry refused leaves nothing behind: the jobs it
        submitted are cancelled and the record removed, so the name is free again."""
        try:
            rec = await self._d.get(tenant, dep_id)
            await self._jobs.cancel_all(rec, by)
            await self._d.delete(tenant, dep_id)
        except Exception:  # noqa: BLE001 - the original error is the one to report
            log.exception("undoing a failed create", extra={"deployment": f"tenants/{tenant}/deployments/{dep_id}"})

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
        etag = inputs.etag(request.etag)
        scaling = (policies.autoscaling_from_pb(request.autoscaling, "autoscaling")
                   if request.HasField("autoscaling") else None)
        if scaling is None and not request.replicas:
            records.check_replicas("replicas", request.replicas)
        now = time.time()

        def change(r: DeploymentRecord) -> DeploymentRecord:
            policy = scaling or r.autoscaling
            if policy.enabled:
                n = request.replicas or min(max(r.replicas, policy.min_replicas), policy.max_replicas)
                n = records.check_replicas("replicas", n, policy.min_replicas, policy.max_replicas)
            else:
                n = records.check_replicas("replicas", request.replicas or max(r.replicas, 1))
            r = dataclasses.replace(records.resize(r, r.replicas, etag), autoscaling=policy)
            return records.autoscale_to(r, n, "user", "ScaleDeployment", now)

        await self._d.update(tenant, dep, change)
        with calling("scheduler"):
            rec = await self._jobs.settle(tenant, dep, Acting.caller(context))
        return pb.ScaleDeploymentResponse(deployment=await self._view(rec, context))

    async def UpdateDeploymentSharing(self, request: pb.UpdateDeploymentSharingRequest,
                                      context: grpc.aio.ServicerContext) -> pb.UpdateDeploymentSharingResponse:
        """Replace who else may send requests to the deployment (compare-and-swap, optionally
        against ``etag``); owner only: another tenant reads NOT_FOUND, shared with it or not."""
        tenant, dep = inputs.deployment_name("name", request.name, principal())
        etag = inputs.etag(request.etag)
        shared = checked_sharing(list(request.shared_with), tenant, "shared_with")
        rec = await self._d.update(tenant, dep, lambda r: share(r, shared, etag))
        return pb.UpdateDeploymentSharingResponse(deployment=await self._view(rec, context))

    async def DeleteDeployment(self, request: pb.DeleteDeploymentRequest,
                               context: grpc.aio.ServicerContext) -> pb.DeleteDeploymentResponse:
        tenant, dep = inputs.deployment_name("name", request.name, principal())
        before = await self._d.get(tenant, dep)
        await self._d.update(tenant, dep, records.retire_all)
        by = Acting.caller(context)
        with calling("scheduler"):
            rec = await self._jobs.settle(tenant, dep, by)
        with calling("registry"):
            for version in sorted({rec.model_version} | ({before.canary.version} if before.canary else set())):
                await self._jobs.record_deployment(rec, version, by, removed=True)
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
        async for piece in self._admitted(rec, engine_request, context):
            yield piece

    async def Chat(self, request: pb.ChatRequest,
                   context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ChatResponse]:
        sampling = checked_sampling(request.sampling, None)
        request_id = inputs.request_id(request.request_id)
        rec = await self._serve.resolve(request.deployment, request.model, remaining_timeout(context))
        messages = [ChatMessage(m.role, m.content) for m in request.messages]
        ids = await self._serve.chat_prompt(rec, messages, remaining_timeout(context))
        engine_request = engine_pb2.GenerateRequest(request_id=request_id, prompt_token_ids=ids, sampling=sampling)
        async for piece in self._admitted(rec, engine_request, context):
            yield _response(piece, pb.ChatResponse)

    def _admitted(self, rec: DeploymentRecord, engine_request: engine_pb2.GenerateRequest,
                  context: grpc.aio.ServicerContext) -> AsyncGenerator[Piece, None]:
        """The relay of ``engine_request`` behind admission (quotas, the fair queue); its
        deadline is what is left of the call's once it is dispatched."""
        def relay() -> AsyncGenerator[Piece, None]:
            return self._serve.relay(rec, engine_request, remaining_timeout(context, 300), _session(context))

        if self._admission is None:
            return relay()
        return self._admission.serve(rec, engine_request, grpc_priority(context), relay)

    async def ListModels(self, request: pb.ListModelsRequest,
                         context: grpc.aio.ServicerContext) -> pb.ListModelsResponse:
        tenant = inputs.parent(request.parent, principal())
        return pb.ListModelsResponse(models=[
            pb.ServedModel(deployment=rec.name, model_uri=rec.model_uri, model_version=rec.model_version, ready=ready,
                           create_time=ts(rec.create_time)) for rec, ready in await self._serve.list_models(tenant)])

    async def SetServingLimits(self, request: pb.SetServingLimitsRequest,
                               context: grpc.aio.ServicerContext) -> pb.SetServingLimitsResponse:
        tenant = inputs.parent(request.parent, principal())
        return await self._limits().set_limits(request, tenant)

    async def GetServingLimits(self, request: pb.GetServingLimitsRequest,
                               context: grpc.aio.ServicerContext) -> pb.GetServingLimitsResponse:
        return await self._limits().get_limits(inputs.parent(request.parent, principal()))

    def _limits(self) -> Admission:
        if self._admission is None:
            raise Unimplemented("this gateway runs without admission")
        return self._admission


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
