"""Scheduler API wiring: settings -> Redis ledger and state, object store, platform clients ->
servicer. The API never joins Ray and never leads: the leader is its own process
(``python -m pylon_services.scheduler.leader``), found through Redis.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from pylon.scheduler.v1 import scheduler_pb2_grpc
from pylon_services.runtime.peers import PlatformClients
from pylon_services.runtime.server import ServiceParts
from pylon_services.runtime.settings import Settings
from pylon_services.runtime.stores import object_store
from pylon_services.scheduler.api.servicer import SchedulerServicer
from pylon_services.scheduler.store.redis_jobs import JobStore
from pylon_services.scheduler.store.redis_sched import SchedState


async def build(settings: Settings, redis: aioredis.Redis) -> ServiceParts:
    peers = PlatformClients(settings, redis)
    servicer = SchedulerServicer(JobStore(redis), SchedState(redis), object_store(settings), peers)
    return ServiceParts("scheduler", [(scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server,
                                       servicer, "pylon.scheduler.v1.SchedulerService")], on_stop=peers.close)
