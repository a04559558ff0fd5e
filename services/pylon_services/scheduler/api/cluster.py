"""SchedulerService RPCs about the cluster and queues: GetCluster, ListQueues, CreateQueue,
UpdateQueue (a mixin of the servicer, kept apart to keep each file small)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import grpc

from pylon.scheduler.v1 import scheduler_pb2 as pb
from pylon_services.common.errors import FieldViolation, InvalidArgument, PermissionDenied
from pylon_services.common.names import parse_name, parse_parent
from pylon_services.runtime.context import principal
from pylon_services.scheduler.domain.job import JobState
from pylon_services.scheduler.domain.scheduling import QueueQuota
from pylon_services.scheduler.snapshot import demand_of, free_nodes


def _queue_from_pb(name: str, tenant: str, q: Any) -> QueueQuota:
    bad = [FieldViolation(f"queue.{f}.{t}", "must not be negative")
           for f in ("nominal_gpus", "borrowing_limit_gpus") for t, v in getattr(q, f).items() if v < 0]
    if q.weight < 0:
        bad.append(FieldViolation("queue.weight", "must not be negative"))
    if bad:
        raise InvalidArgument("; ".join(f"{v.field}: {v.description}" for v in bad), bad)
    return QueueQuota(name=name, tenant=tenant, nominal_gpus=dict(q.nominal_gpus), cohort=q.cohort,
                      borrowing_limit_gpus=dict(q.borrowing_limit_gpus), weight=q.weight or 1.0)


def _require_admin() -> None:
    if principal().role != "admin":
        raise PermissionDenied("queues and quotas are managed by admins")


class ClusterViews:
    _ctl: Any
    _jobs: Any
    _state: Any

    async def GetCluster(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        ray_nodes = await asyncio.to_thread(self._ctl.executor.nodes)
        active = [j for j in await self._jobs.active() if not j.state.terminal]
        free = {n.id: n for n in free_nodes(ray_nodes, active)}
        bounds = self._ctl.cfg.pool_bounds()
        pools: dict[str, pb.GpuPool] = {}
        for n in ray_nodes:
            p = pools.setdefault(n.gpu_type, pb.GpuPool(gpu_type=n.gpu_type))
            p.nodes += 1
            if n.id not in free:
                continue  # dead: counted, but holds no capacity
            p.healthy_nodes += 1
            p.total_gpus += n.gpus
            p.total_cpus += n.cpus
            p.used_gpus += n.gpus - free[n.id].gpus_free
            p.used_cpus += n.cpus - free[n.id].cpus_free
        for t, b in bounds.items():
            p = pools.setdefault(t, pb.GpuPool(gpu_type=t))
            p.min_nodes, p.max_nodes = b.min_nodes, b.max_nodes
        return pb.GetClusterResponse(pools=[pools[t] for t in sorted(pools)])

    async def ListQueues(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        tenant = parse_parent("parent", request.parent, principal())
        queues = {n: q for n, q in (await self._state.queues()).items() if q.tenant == tenant}
        usage = (await self._state.usage()).get(tenant, 0.0)
        used: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        borrowed: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        running: dict[str, int] = defaultdict(int)
        for j in await self._jobs.active():
            if j.tenant != tenant or j.state.terminal:
                continue
            d = demand_of(j.spec)
            for t in j.worker_gpu_types or [j.gpu_type] * d.workers:  # a split gang=false job: per worker type
                used[j.queue][t] += d.gpus_per_worker
                if j.borrowed:
                    borrowed[j.queue][t] += d.gpus_per_worker
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

    async def CreateQueue(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        _require_admin()
        tenant = parse_parent("parent", request.parent, principal())
        if not request.queue_id or not request.queue_id.replace("-", "").isalnum() or len(request.queue_id) > 63:
            raise InvalidArgument.field("queue_id", "must be 1-63 letters, digits or '-'")
        name = f"tenants/{tenant}/queues/{request.queue_id}"
        q = await self._state.create_queue(_queue_from_pb(name, tenant, request.queue))
        return pb.CreateQueueResponse(queue=pb.Queue(name=q.name, cohort=q.cohort, nominal_gpus=q.nominal_gpus,
                                                     borrowing_limit_gpus=q.borrowing_limit_gpus, weight=q.weight))

    async def UpdateQueue(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        _require_admin()
        tenant, queue_id = parse_name("queue.name", request.queue.name, ("tenants", "queues"), principal())
        name = f"tenants/{tenant}/queues/{queue_id}"
        q = await self._state.update_queue(_queue_from_pb(name, tenant, request.queue))
        return pb.UpdateQueueResponse(queue=pb.Queue(name=q.name, cohort=q.cohort, nominal_gpus=q.nominal_gpus,
                                                     borrowing_limit_gpus=q.borrowing_limit_gpus, weight=q.weight))
