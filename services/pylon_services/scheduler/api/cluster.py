"""SchedulerService RPCs about the cluster and queues: GetCluster, ListQueues, CreateQueue,
UpdateQueue (a mixin of the servicer, kept apart to keep each file small)."""

from __future__ import annotations

import math
from collections import defaultdict

import grpc

from pylon.scheduler.v1 import scheduler_pb2 as pb
from pylon_services.common.errors import FieldViolation, InvalidArgument, PermissionDenied
from pylon_services.runtime.context import principal
from pylon_services.scheduler.api import inputs
from pylon_services.scheduler.domain.job import JobState
from pylon_services.scheduler.domain.ports import JobLedger, SchedulerState
from pylon_services.scheduler.domain.scheduling import Node, QueueQuota
from pylon_services.scheduler.domain.snapshot import ClusterView, free_nodes
from pylon_services.scheduler.domain.spec import GPU_TYPE_RE, QUEUE_RE, QUEUE_RULE, invalid

MAX_QUOTA_TYPES = 64
MAX_GPUS = 1e9


def _queue_from_pb(name: str, tenant: str, q: pb.Queue) -> QueueQuota:
    """The quota fields of ``q``: GPU types by the spec's rule, finite non-negative numbers."""
    bad = []
    for f in ("nominal_gpus", "borrowing_limit_gpus"):
        quota = getattr(q, f)
        if len(quota) > MAX_QUOTA_TYPES:
            bad.append(FieldViolation(f"queue.{f}", f"at most {MAX_QUOTA_TYPES} GPU types"))
            continue
        for t, v in sorted(quota.items()):
            where = f"queue.{f}.{t}" if GPU_TYPE_RE.fullmatch(t) else f"queue.{f}"
            if not GPU_TYPE_RE.fullmatch(t):
                bad.append(FieldViolation(where, "GPU types are 1-64 ASCII letters, digits, '.', '_' or '-'"))
            elif not (math.isfinite(v) and 0 <= v <= MAX_GPUS):
                bad.append(FieldViolation(where, "must be a finite number, not negative"))
    if not (math.isfinite(q.weight) and 0 <= q.weight <= MAX_GPUS):
        bad.append(FieldViolation("queue.weight", "must be a finite number, not negative"))
    if q.cohort and not QUEUE_RE.fullmatch(q.cohort):
        bad.append(FieldViolation("queue.cohort", QUEUE_RULE))
    if bad:
        raise invalid(bad)
    return QueueQuota(name=name, tenant=tenant, nominal_gpus=dict(q.nominal_gpus), cohort=q.cohort,
                      borrowing_limit_gpus=dict(q.borrowing_limit_gpus), weight=q.weight or 1.0)


def _require_admin() -> None:
    if principal().role != "admin":
        raise PermissionDenied("queues and quotas are managed by admins")


def _queue_pb(q: QueueQuota) -> pb.Queue:
    return pb.Queue(name=q.name, cohort=q.cohort, nominal_gpus=q.nominal_gpus,
                    borrowing_limit_gpus=q.borrowing_limit_gpus, weight=q.weight)


class ClusterViews:
    _jobs: JobLedger
    _state: SchedulerState

    async def cluster_view(self) -> tuple[ClusterView, tuple[Node, ...]]:
        raise NotImplementedError

    async def GetCluster(self, request: pb.GetClusterRequest, context: grpc.aio.ServicerContext
                         ) -> pb.GetClusterResponse:
        view, _ = await self.cluster_view()
        active = await self._jobs.active()
        free = {n.id: n for n in free_nodes(view.nodes, active)}
        pools: dict[str, pb.GpuPool] = {}
        for n in view.nodes:
            p = pools.setdefault(n.gpu_type, pb.GpuPool(gpu_type=n.gpu_type))
            p.nodes += 1
            if n.id not in free:
                continue  # dead: counted, but holds no capacity
            p.healthy_nodes += 1
            p.total_gpus += n.gpus
            p.total_cpus += n.cpus
            p.used_gpus += n.gpus - free[n.id].gpus_free
            p.used_cpus += n.cpus - free[n.id].cpus_free
        for declared in view.pools:
            p = pools.setdefault(declared.gpu_type, pb.GpuPool(gpu_type=declared.gpu_type))
            p.min_nodes, p.max_nodes = declared.min_nodes, declared.max_nodes
        return pb.GetClusterResponse(pools=[pools[t] for t in sorted(pools)])

    async def ListQueues(self, request: pb.ListQueuesRequest, context: grpc.aio.ServicerContext
                         ) -> pb.ListQueuesResponse:
        tenant = inputs.parent("parent", request.parent, principal())
        queues = {n: q for n, q in (await self._state.queues()).items() if q.tenant == tenant}
        usage = (await self._state.usage()).get(tenant, 0.0)
        used: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        borrowed: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        running: dict[str, int] = defaultdict(int)
        for j in await self._jobs.active():
            if j.tenant != tenant:
                continue
            gpus = j.spec.resources.gpus
            for t in j.worker_gpu_types or [j.gpu_type] * j.workers:  # a split gang=false job: per worker type
                used[j.queue][t] += gpus
                if j.borrowed:
                    borrowed[j.queue][t] += gpus
            running[j.queue] += 1
        pending: dict[str, int] = defaultdict(int)
        for j in await self._jobs.get_many([k for k, _ in await self._jobs.pending_scored() if k.startswith(f"{tenant}/")]):
            if j.state == JobState.PENDING:
                pending[j.queue] += 1
        names = sorted(set(queues) | set(used) | set(pending))
        out = []
        for n in names:
            q = queues.get(n) or QueueQuota(name=n, tenant=tenant)
            out.append(pb.Queue(name=n, cohort=q.cohort, nominal_gpus=q.nominal_gpus, used_gpus=dict(used[n]),
                                borrowed_gpus=dict(borrowed[n]), pending_jobs=pending[n], running_jobs=running[n],
                                borrowing_limit_gpus=q.borrowing_limit_gpus, weight=q.weight, usage_gpu_seconds=usage))
        return pb.ListQueuesResponse(queues=out)

    async def CreateQueue(self, request: pb.CreateQueueRequest, context: grpc.aio.ServicerContext
                          ) -> pb.CreateQueueResponse:
        _require_admin()
        tenant = inputs.parent("parent", request.parent, principal())
        if not QUEUE_RE.fullmatch(request.queue_id):
            raise InvalidArgument.field("queue_id", QUEUE_RULE)
        name = f"tenants/{tenant}/queues/{request.queue_id}"
        q = await self._state.create_queue(_queue_from_pb(name, tenant, request.queue))
        return pb.CreateQueueResponse(queue=_queue_pb(q))

    async def UpdateQueue(self, request: pb.UpdateQueueRequest, context: grpc.aio.ServicerContext
                          ) -> pb.UpdateQueueResponse:
        _require_admin()
        tenant, queue_id = inputs.queue_name("queue.name", request.queue.name, principal())
        name = f"tenants/{tenant}/queues/{queue_id}"
        q = await self._state.update_queue(_queue_from_pb(name, tenant, request.queue))
        return pb.UpdateQueueResponse(queue=_queue_pb(q))
