"""Scheduler wiring: settings -> Redis ledger + Ray executor -> controller loop -> servicer.

The API process serves the RPCs; the leader's loop (``controller.py``) runs in a child process
it supervises (``leader_proc.py``), or on the API's own event loop with
``PYLON_SCHED_LEADER_MODE=inline``. Either way only the holder of the Redis lease acts.
"""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from pylon.scheduler.v1 import scheduler_pb2_grpc
from pylon_services.runtime.peers import PlatformClients
from pylon_services.runtime.server import ServiceParts
from pylon_services.runtime.settings import Settings
from pylon_services.runtime.stores import object_store
from pylon_services.scheduler.api.servicer import SchedulerServicer
from pylon_services.scheduler.config import SchedulerConfig
from pylon_services.scheduler.controller import Controller
from pylon_services.scheduler.leader_proc import LeaderProcess
from pylon_services.scheduler.store.ray_exec import RayExecutor
from pylon_services.scheduler.store.redis_jobs import JobStore
from pylon_services.scheduler.store.redis_sched import SchedState


def _joined_ray_address(settings: Settings) -> str:
    """The cluster this process joined: the configured one, or the local one ray.init started."""
    if settings.ray_address:
        return settings.ray_address
    import ray

    return str(ray.get_runtime_context().gcs_address)


async def build(settings: Settings, redis: aioredis.Redis, cfg: SchedulerConfig | None = None) -> ServiceParts:
    cfg = cfg or SchedulerConfig()
    if cfg.leader_mode not in ("process", "inline"):
        raise ValueError(f"PYLON_SCHED_LEADER_MODE must be process or inline, not {cfg.leader_mode!r}")
    inline = cfg.leader_mode == "inline"
    jobs = JobStore(redis, track_changes=inline)
    executor = RayExecutor(settings.ray_address, settings.model_dump(exclude={"admin_key"}), settings.ray_node_ip_address,
                           cfg.instance)
    # In process mode this controller is never started: the API uses it for cancel and views.
    controller = Controller(jobs, SchedState(redis), executor, redis, cfg)
    child = LeaderProcess(settings, cfg)

    async def on_start() -> None:
        if inline:
            await asyncio.to_thread(executor.connect)
            controller.start()
            return
        # Both processes join Ray; in parallel when the cluster's address is known up front.
        ready = child.spawn(settings.ray_address) if settings.ray_address else None
        await asyncio.to_thread(executor.connect)
        await child.wait_ready(ready if ready is not None else child.spawn(_joined_ray_address(settings)))

    async def on_stop() -> None:
        await (controller.stop() if inline else child.stop())

    servicer = SchedulerServicer(jobs, controller, object_store(settings), PlatformClients(settings, redis))
    return ServiceParts("scheduler", [(scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server,
                                       servicer, "pylon.scheduler.v1.SchedulerService")],
                        on_start=on_start, on_stop=on_stop)
