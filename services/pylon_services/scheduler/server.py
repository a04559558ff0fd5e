"""Scheduler wiring: settings -> Redis ledger + Ray executor -> controller loop -> servicer."""

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
from pylon_services.scheduler.store.ray_exec import RayExecutor
from pylon_services.scheduler.store.redis_jobs import JobStore
from pylon_services.scheduler.store.redis_sched import SchedState


async def build(settings: Settings, redis: aioredis.Redis, cfg: SchedulerConfig | None = None) -> ServiceParts:
    jobs = JobStore(redis)
    cfg = cfg or SchedulerConfig()
    executor = RayExecutor(settings.ray_address, settings.model_dump(exclude={"admin_key"}), settings.ray_node_ip_address,
                           cfg.instance)
    controller = Controller(jobs, SchedState(redis), executor, redis, cfg)

    async def on_start() -> None:
        await asyncio.to_thread(executor.connect)
        controller.start()

    servicer = SchedulerServicer(jobs, controller, object_store(settings), PlatformClients(settings, redis))
    return ServiceParts("scheduler", [(scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server,
                                       servicer, "pylon.scheduler.v1.SchedulerService")],
                        on_start=on_start, on_stop=controller.stop)
