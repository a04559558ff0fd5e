"""Queues: a tenant's quotas per GPU type, usage and borrowing (list, create, update)."""

from __future__ import annotations

from pylon.resources._base import _Resource
from pylon.scheduler.v1 import scheduler_pb2
from pylon.types import Queue


class Queues(_Resource):
    def list(self, tenant: str = "-") -> list[Queue]:
        """The tenant's queues: nominal quota, used and borrowed GPUs per type, job counts (the
        RPC returns them all at once: a tenant has a handful)."""
        resp = self._c.call(self._c.scheduler.ListQueues, scheduler_pb2.ListQueuesRequest(parent=f"tenants/{tenant}"))
        return [Queue.from_proto(q) for q in resp.queues]

    def create(self, tenant: str, queue_id: str, *, nominal_gpus: dict[str, float], cohort: str = "",
               borrowing_limit_gpus: dict[str, float] | None = None, weight: float = 1.0) -> Queue:
        """Declare a queue and its quota (admin key)."""
        q = scheduler_pb2.Queue(nominal_gpus=nominal_gpus, cohort=cohort, borrowing_limit_gpus=borrowing_limit_gpus or {},
                                weight=weight)
        resp = self._c.call(self._c.scheduler.CreateQueue, scheduler_pb2.CreateQueueRequest(
            parent=f"tenants/{tenant}", queue_id=queue_id, queue=q))
        return Queue.from_proto(resp.queue)

    def update(self, name: str, *, nominal_gpus: dict[str, float], cohort: str = "",
               borrowing_limit_gpus: dict[str, float] | None = None, weight: float = 1.0) -> Queue:
        """Replace a queue's quota fields (admin key); ``name`` is tenants/{t}/queues/{q}."""
        q = scheduler_pb2.Queue(name=name, nominal_gpus=nominal_gpus, cohort=cohort,
                                borrowing_limit_gpus=borrowing_limit_gpus or {}, weight=weight)
        resp = self._c.call(self._c.scheduler.UpdateQueue, scheduler_pb2.UpdateQueueRequest(queue=q))
        return Queue.from_proto(resp.queue)
