"""SchedulerService transport: requests become domain calls on the ledger; no Ray, no leader.

The API validates submits against the cluster view the leader publishes (``ClusterView``), so
this process never joins Ray; decisions are the leader's (``orchestration/``). Every request field
is checked here or in ``domain/spec.py`` before it reaches the ledger (``inputs.py``).
"""

from __future__ import annotations

import asyncio
import dataclasses

import grpc

from pylon.registry.v1 import registry_pb2
from pylon.scheduler.v1 import scheduler_pb2 as pb
from pylon.scheduler.v1 import scheduler_pb2_grpc
from pylon_services.common.errors import FailedPrecondition, InvalidArgument, Unavailable
from pylon_services.runtime.context import forward_metadata, principal, remaining_timeout
from pylon_services.runtime.peers import PlatformClients
from pylon_services.runtime.protoconv import page_size, ts
from pylon_services.scheduler.api import inputs, pinning
from pylon_services.scheduler.api.cluster import ClusterViews
from pylon_services.scheduler.api.convert import job_to_pb, spec_from_pb, states_from_pb
from pylon_services.scheduler.api.streams import JobStreams
from pylon_services.scheduler.api.workdir import WorkdirUploads
from pylon_services.scheduler.domain.cancel import cancel_job
from pylon_services.scheduler.domain.job import Job, JobState, new_job_id
from pylon_services.scheduler.domain.placement import check_satisfiable
from pylon_services.scheduler.domain.ports import JobLedger, SchedulerState
from pylon_services.scheduler.domain.scheduling import Node
from pylon_services.scheduler.domain.snapshot import ClusterView
from pylon_services.scheduler.domain.spec import JobSpec, Trainer, invalid, validate_spec
from pylon_services.storage.base import ObjectStore
from pylon_services.workloads import REGISTRY, Workload, WorkloadKind

VIEW_MAX_AGE_S = 1.0  # the published cluster view is re-read at most this often
# A ListJobs page ends once its jobs' stored documents reach this (a spec is at most a few
# hundred KiB: domain/spec.py), so a page stays far below the message limit.
LIST_MAX_BYTES = 4 << 20
_PAGE_TOKEN_CHARS = 12
# Registry answers to a base model's resolution that are the caller's to fix.
_CALLER_CODES = (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)


class SchedulerServicer(ClusterViews, WorkdirUploads, JobStreams, scheduler_pb2_grpc.SchedulerServiceServicer):
    def __init__(self, jobs: JobLedger, state: SchedulerState, store: ObjectStore, peers: PlatformClients | None = None
                 ) -> None:
        self._jobs = jobs
        self._state = state
        self._store = store
        self._peers = peers
        self._init_streams()  # WatchJob and StreamLogs share one poller per job
        self._view: tuple[float, ClusterView | None, tuple[Node, ...]] = (float("-inf"), None, ())

    async def cluster_view(self) -> tuple[ClusterView, tuple[Node, ...]]:
        """The leader's latest view and the nodes a job could ever get (re-read at most once a
        second, not per submit); UNAVAILABLE before any leader published one."""
        read_at, view, nodes = self._view
        now = asyncio.get_running_loop().time()
        if now - read_at >= VIEW_MAX_AGE_S:
            fresh = await self._state.cluster()
            if fresh != view:
                view, nodes = fresh, fresh.submit_nodes() if fresh is not None else ()
            self._view = (now, view, nodes)
        if view is None:
            raise Unavailable("no scheduler leader has reported the cluster yet; is "
                              "`python -m pylon_services.scheduler.leader` running? Retry shortly")
        return view, nodes

    async def _job(self, name: str) -> Job:
        tenant, job_id = inputs.job_name("name", name, principal())
        return await self._jobs.get(tenant, job_id)

    async def SubmitJob(self, request: pb.SubmitJobRequest, context: grpc.aio.ServicerContext
                        ) -> pb.SubmitJobResponse:
        p = principal()
        tenant = inputs.parent("parent", request.parent, p)
        request_id = inputs.request_id(request.request_id)
        if not request.HasField("spec"):
            raise InvalidArgument.field("spec", "is required")
        spec = spec_from_pb(request.spec)
        bad = []
        try:
            validate_spec(spec)
        except InvalidArgument as e:
            bad = e.violations
        try:
            spec = inputs.in_tenant(spec, tenant, p)
        except InvalidArgument as e:
            bad += e.violations
        if bad:
            raise invalid(bad)
        _, nodes = await self.cluster_view()
        if why := check_satisfiable(spec.demand(), nodes):
            raise FailedPrecondition(why)
        spec = await self._pin(spec, tenant, context)
        job = Job(id=new_job_id(), tenant=tenant, spec=spec, creator=p.key_id, request_id=request_id)
        queue = f"tenants/{tenant}/queues/{spec.queue}" if spec.queue != "default" else ""
        job, _ = await self._jobs.create(job, queue)
        return pb.SubmitJobResponse(job=job_to_pb(job))

    async def _pin(self, spec: JobSpec, tenant: str, context: grpc.aio.ServicerContext) -> JobSpec:
        """Pin what the spec refers to (``pinning.py``): dataset versions by number, a token-reading
        trainer's tokenizations, a base model's exact version, after checking its format and
        tokenizer."""
        spec = await pinning.pin_datasets(self._store, spec)
        w = spec.workload
        if not isinstance(w, Trainer):
            return spec
        workload = REGISTRY.get(WorkloadKind.TRAINER, w.trainer)
        assert workload is not None  # validate_spec refused unknown trainers
        if workload.needs_tokens:
            w = await pinning.pin_tokens(self._store, w)
        if w.base_model:
            w = await self._pin_base_model(w, workload, tenant, context)
        return dataclasses.replace(spec, workload=w)

    async def _pin_base_model(self, trainer: Trainer, workload: Workload, tenant: str,
                              context: grpc.aio.ServicerContext) -> Trainer:
        """Resolve a fine-tune's base model through the registry (as the caller) and pin the exact
        version and its artifact keys; it must be in the job's tenant, of a format the trainer
        takes, and (for a trainer on tokens) have the datasets' tokenizer."""
        if self._peers is None:
            raise FailedPrecondition("this scheduler has no registry to resolve base models with")
        uri = trainer.base_model
        try:
            registry = await self._peers.registry()
            resp = await registry.ResolveModelUri(registry_pb2.ResolveModelUriRequest(uri=uri),
                                                  metadata=forward_metadata(), timeout=remaining_timeout(context))
        except grpc.aio.AioRpcError as e:
            if e.code() in _CALLER_CODES:
                raise InvalidArgument.field("spec.trainer.base_model", f"{uri}: {(e.details() or '')[:300]}") from None
            # Anything else is the registry's trouble; its details may name internal addresses.
            raise Unavailable(f"the registry could not resolve {uri} now ({e.code().name}); retry") from None
        v = resp.version
        if not v.name.startswith(f"tenants/{tenant}/"):
            raise InvalidArgument.field("spec.trainer.base_model", f"must be a model of the job's tenant ({tenant})")
        pinning.check_base_model_format(workload, uri, registry_pb2.ModelFormat.Name(v.format))
        if v.state != registry_pb2.MODEL_VERSION_STATE_READY:
            raise FailedPrecondition(f"{v.name} is {registry_pb2.ModelVersionState.Name(v.state)}, not READY")
        files = {f.path: f.object_key for f in v.files}
        if workload.needs_tokens and trainer.token_data:
            await pinning.check_base_model_tokenizer(self._store, v.name, files, trainer.token_data[0])
        return dataclasses.replace(trainer, base_model_version=v.name, base_model_files=files)

    async def GetJob(self, request: pb.GetJobRequest, context: grpc.aio.ServicerContext) -> pb.GetJobResponse:
        return pb.GetJobResponse(job=job_to_pb(await self._job(request.name)))

    async def ListJobs(self, request: pb.ListJobsRequest, context: grpc.aio.ServicerContext) -> pb.ListJobsResponse:
        tenant = inputs.parent("parent", request.parent, principal())
        states = states_from_pb(request.states)
        token = request.page_token
        if len(token) > _PAGE_TOKEN_CHARS or (token and not token.isascii()):
            raise InvalidArgument.field("page_token", "is not a token this server issued")
        jobs, token = await self._jobs.list_jobs(tenant, page_size(request.page_size), token, states,
                                                 max_bytes=LIST_MAX_BYTES)
        return pb.ListJobsResponse(jobs=[job_to_pb(j) for j in jobs], next_page_token=token)

    async def CancelJob(self, request: pb.CancelJobRequest, context: grpc.aio.ServicerContext) -> pb.CancelJobResponse:
        return pb.CancelJobResponse(job=job_to_pb(await cancel_job(self._jobs, await self._job(request.name))))

    async def ListJobMetrics(self, request: pb.ListJobMetricsRequest, context: grpc.aio.ServicerContext
                             ) -> pb.ListJobMetricsResponse:
        keys = inputs.metric_keys(list(request.keys))
        job = await self._job(request.name)
        points = [pb.MetricPoint(key=m["key"], step=m["step"], value=m["value"], time=ts(m["t"]))
                  for m in await self._jobs.metrics(job.tenant, job.id) if not keys or m["key"] in keys]
        return pb.ListJobMetricsResponse(points=points)

    async def ExplainJob(self, request: pb.ExplainJobRequest, context: grpc.aio.ServicerContext
                         ) -> pb.ExplainJobResponse:
        job = await self._job(request.name)
        if job.state != JobState.PENDING:
            raise FailedPrecondition(f"{job.name} is {job.state.value}, not pending: {job.message}")
        exp = await self._state.explanation(job.key)
        if exp is None:
            keys = [k for k, _ in await self._jobs.pending_scored()]
            position = keys.index(job.key) + 1 if job.key in keys else 0
            return pb.ExplainJobResponse(reasons=["queued; the next scheduling pass has not considered it yet"],
                                         position=position)
        reasons = [exp.reason, *(b for b in exp.blocking if b != exp.reason)]
        return pb.ExplainJobResponse(reasons=reasons, position=exp.position,
                                     estimated_start_time=ts(exp.estimated_start) if exp.estimated_start else None)

