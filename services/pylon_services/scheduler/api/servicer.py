"""SchedulerService transport: proto <-> job dicts, streams; decisions live in the controller."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import json_format

from pylon.registry.v1 import registry_pb2
from pylon.scheduler.v1 import scheduler_pb2 as pb
from pylon.scheduler.v1 import scheduler_pb2_grpc
from pylon_services.common.errors import FailedPrecondition, InvalidArgument
from pylon_services.common.names import parse_name, parse_parent
from pylon_services.runtime.context import forward_metadata, principal, remaining_timeout
from pylon_services.runtime.peers import PlatformClients
from pylon_services.runtime.protoconv import page_size, struct, ts
from pylon_services.scheduler.api.cluster import ClusterViews
from pylon_services.scheduler.api.workdir import WorkdirUploads, workdir_prefix
from pylon_services.scheduler.controller import Controller
from pylon_services.scheduler.domain.autoscale import pool_capacities, with_declared
from pylon_services.scheduler.domain.job import Job, JobState, PoolCapacity, validate_spec
from pylon_services.scheduler.domain.placement import check_satisfiable
from pylon_services.scheduler.domain.scheduling import Node
from pylon_services.scheduler.snapshot import demand_of, free_nodes
from pylon_services.scheduler.store.redis_jobs import JobStore
from pylon_services.scheduler.store.redis_sched import queue_key

_POLL_S = 0.25
SPEC_CACHE_SIZE = 256  # distinct validated specs kept per node view


def _struct_ints(value: Any) -> Any:
    """protobuf Struct has only doubles: give whole numbers back their int type."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _struct_ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_struct_ints(v) for v in value]
    return value


def spec_to_dict(spec: pb.JobSpec) -> dict[str, Any]:
    d = json_format.MessageToDict(spec, preserving_proto_field_name=True)
    if "trainer" in d:
        d["trainer"]["config"] = _struct_ints(d["trainer"].get("config", {}))
    d["workers"] = int(d.get("workers", 0)) or 1
    d["placement"] = "spread" if spec.placement == pb.PLACEMENT_STRATEGY_SPREAD else "pack"
    return d


def spec_to_pb(d: dict[str, Any]) -> pb.JobSpec:
    d = dict(d)
    d["placement"] = "PLACEMENT_STRATEGY_SPREAD" if d.get("placement") == "spread" else "PLACEMENT_STRATEGY_PACK"
    return json_format.ParseDict(d, pb.JobSpec(), ignore_unknown_fields=True)


def job_pb(job: Job, spec: pb.JobSpec | None = None) -> pb.Job:
    """The job as a proto; ``spec`` skips re-encoding the stored dict when the caller has it."""
    status = pb.JobStatus(
        state=getattr(pb, f"JOB_STATE_{job.state.name}"), message=job.message, gpu_type=job.gpu_type,
        attempt=job.attempt, exit_code=job.exit_code, last_log_lines=job.last_log_lines,
        retries=job.retries, preemptions=job.preemptions, step=job.step,
        output_uri=job.output_uri, start_time=ts(job.start_time), end_time=ts(job.end_time),
        latest_metrics=struct(job.latest_metrics))
    spec = spec if spec is not None else spec_to_pb(job.spec)
    return pb.Job(name=job.name, spec=spec, status=status, create_time=ts(job.create_time),
                  creator=job.creator, request_id=job.request_id)


class SchedulerServicer(ClusterViews, WorkdirUploads, scheduler_pb2_grpc.SchedulerServiceServicer):
    def __init__(self, jobs: JobStore, controller: Controller, store: Any = None, peers: PlatformClients | None = None
                 ) -> None:
        self._peers = peers
        self._jobs = jobs
        self._ctl = controller
        self._state = controller.state
        self._store = store
        self._shape: tuple[list[Any], list[PoolCapacity], tuple[Node, ...]] | None = None
        self._specs: dict[bytes, tuple[dict[str, Any], Any]] = {}

    async def _cluster_shape(self) -> tuple[list[PoolCapacity], tuple[Node, ...]]:
        """Pool capacities and the nodes as if empty, for submit-time checks; recomputed only when
        the executor's cached node list is replaced (at most once a second), not per submit."""
        ex = self._ctl.executor
        ray_nodes = ex.cached_nodes() or await asyncio.to_thread(ex.nodes)
        if self._shape is None or self._shape[0] is not ray_nodes:
            # Declared pools count with the nodes they may still add: a job for a pool scaled to
            # zero waits for Kubernetes to add nodes instead of being refused (domain/autoscale.py).
            nodes = with_declared(free_nodes(ray_nodes, []), self._ctl.cfg.declared_pools())
            self._shape = (ray_nodes, pool_capacities(nodes), nodes)
            self._specs.clear()  # validated against the old view
        return self._shape[1], self._shape[2]

    async def _job(self, name: str) -> Job:
        tenant, job_id = parse_name("name", name, ("tenants", "jobs"), principal())
        return await self._jobs.get(tenant, job_id)

    async def SubmitJob(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        p = principal()
        tenant = parse_parent("parent", request.parent, p)
        if not request.HasField("spec"):
            raise InvalidArgument.field("spec", "is required")
        spec, spec_pb = await self._checked_spec(request.spec, context)
        wd = spec.get("command", {}).get("working_dir_key", "")
        if wd and not wd.startswith(workdir_prefix(tenant)):
            raise InvalidArgument.field("spec.command.working_dir_key", f"must be a key UploadWorkingDir returned "
                                                                        f"for this tenant ({workdir_prefix(tenant)}...)")
        queue = spec.get("queue") or "default"
        job = Job(id=JobStore.new_id(), tenant=tenant, spec=spec, creator=p.key_id, request_id=request.request_id)
        job, created = await self._jobs.create(
            job, queue_key(f"tenants/{tenant}/queues/{queue}") if queue != "default" else "")
        if created:
            self._ctl.wake()
            return pb.SubmitJobResponse(job=job_pb(job, spec_pb))
        return pb.SubmitJobResponse(job=job_pb(job))

    async def _checked_spec(self, request_spec: Any, context: grpc.aio.ServicerContext) -> tuple[dict[str, Any], Any]:
        """The spec as the stored dict and as the normalised proto, validated against the cluster.

        Specs repeat (sweeps, replicas, retries of a script): a spec validated against the current
        node view is kept, keyed by its serialized bytes, until the view changes (at most once a
        second), and shared read-only by the jobs that use it. A fine-tune's base model is resolved
        anew on every submit (it depends on the caller and on the registry), so those are not kept."""
        pools, empty = await self._cluster_shape()
        key = request_spec.SerializeToString(deterministic=True)
        hit = self._specs.get(key)
        if hit is not None:
            return hit
        spec = spec_to_dict(request_spec)
        pinned = bool(spec.get("trainer", {}).get("base_model"))
        if pinned:
            spec["trainer"].update(await self._pin_base_model(spec["trainer"]["base_model"], context))
        validate_spec(spec, pools)
        why = check_satisfiable(demand_of(spec), empty)
        if why:
            raise FailedPrecondition(why)
        spec_pb = pb.JobSpec()
        spec_pb.CopyFrom(request_spec)  # what spec_to_dict normalised, set on the request's copy
        spec_pb.workers = spec["workers"]
        if spec.get("trainer", {}).get("base_model_version"):
            spec_pb.trainer.base_model_version = spec["trainer"]["base_model_version"]
        spec_pb.placement = pb.PLACEMENT_STRATEGY_SPREAD if spec["placement"] == "spread" else pb.PLACEMENT_STRATEGY_PACK
        if not pinned:
            if len(self._specs) >= SPEC_CACHE_SIZE:
                self._specs.clear()
            self._specs[key] = (spec, spec_pb)
        return spec, spec_pb

    async def _pin_base_model(self, uri: str, context: grpc.aio.ServicerContext) -> dict[str, Any]:
        """Resolve a fine-tune's base model through the registry (as the caller) and pin the exact
        version and its artifact keys into the spec."""
        if self._peers is None:
            raise FailedPrecondition("this scheduler has no registry to resolve base models with")
        registry = await self._peers.registry()
        try:
            resp = await registry.ResolveModelUri(registry_pb2.ResolveModelUriRequest(uri=uri),
                                                  metadata=forward_metadata(), timeout=remaining_timeout(context))
        except grpc.aio.AioRpcError as e:
            if e.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                raise InvalidArgument.field("spec.trainer.base_model", f"{uri}: {e.details()}") from None
            raise
        v = resp.version
        if v.format != registry_pb2.MODEL_FORMAT_PYLON_GPT:
            fmt = registry_pb2.ModelFormat.Name(v.format)
            raise InvalidArgument.field("spec.trainer.base_model", f"{uri} is {fmt}; tiny-gpt fine-tunes PYLON_GPT models")
        if v.state != registry_pb2.MODEL_VERSION_STATE_READY:
            raise FailedPrecondition(f"{v.name} is {registry_pb2.ModelVersionState.Name(v.state)}, not READY")
        return {"base_model_version": v.name, "base_model_files": {f.path: f.object_key for f in v.files}}

    async def GetJob(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.GetJobResponse(job=job_pb(await self._job(request.name)))

    async def ListJobs(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        tenant = parse_parent("parent", request.parent, principal())
        if request.page_token and not request.page_token.isdigit():
            raise InvalidArgument.field("page_token", "is not a token this server issued")
        jobs, token = await self._jobs.list_jobs(tenant, page_size(request.page_size), request.page_token or None)
        wanted = {pb.JobState.Name(s)[len("JOB_STATE_"):].lower() for s in request.states}
        jobs = [j for j in jobs if not wanted or j.state.value in wanted]
        return pb.ListJobsResponse(jobs=[job_pb(j) for j in jobs], next_page_token=token or "")

    async def CancelJob(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.CancelJobResponse(job=job_pb(await self._ctl.cancel(await self._job(request.name))))

    async def WatchJob(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        job = await self._job(request.name)
        last = None
        while True:
            snapshot = (job.state, job.message, job.attempt)
            if snapshot != last:
                yield pb.WatchJobResponse(job=job_pb(job))
                last = snapshot
            if job.state.terminal:
                return
            await asyncio.sleep(_POLL_S)
            job = await self._jobs.get(job.tenant, job.id)

    async def StreamLogs(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        job = await self._job(request.name)
        if request.offset < 0:
            raise InvalidArgument.field("offset", "must not be negative")
        offset = request.offset
        while True:
            lines = await self._jobs.logs(job.tenant, job.id, offset)
            if lines:
                yield pb.StreamLogsResponse(lines=[
                    pb.LogLine(index=offset + i, text=x["text"], attempt=x["attempt"], time=ts(x["t"]))
                    for i, x in enumerate(lines)])
                offset += len(lines)
                continue
            if not request.follow or job.state.terminal:
                return
            await asyncio.sleep(_POLL_S)
            job = await self._jobs.get(job.tenant, job.id)

    async def ListJobMetrics(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        job = await self._job(request.name)
        keys = set(request.keys)
        points = [pb.MetricPoint(key=m["key"], step=m["step"], value=m["value"], time=ts(m["t"]))
                  for m in await self._jobs.metrics(job.tenant, job.id) if not keys or m["key"] in keys]
        return pb.ListJobMetricsResponse(points=points)

    async def ExplainJob(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
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
