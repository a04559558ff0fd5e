"""Gateway wiring: settings -> Redis deployment store + platform clients -> servicer."""

from __future__ import annotations

import redis.asyncio as aioredis

from pylon.gateway.v1 import gateway_pb2_grpc
from pylon_services.gateway.api.servicer import GatewayServicer
from pylon_services.gateway.store.deployments import DeploymentStore
from pylon_services.runtime.peers import PlatformClients
from pylon_services.runtime.server import ServiceParts
from pylon_services.runtime.settings import Settings


async def build(settings: Settings, redis: aioredis.Redis) -> ServiceParts:
    clients = PlatformClients(settings, redis)
    servicer = GatewayServicer(DeploymentStore(redis), clients)
    return ServiceParts("gateway", [(gateway_pb2_grpc.add_GatewayServiceServicer_to_server, servicer,
                                     "pylon.gateway.v1.GatewayService")], on_stop=clients.close)
