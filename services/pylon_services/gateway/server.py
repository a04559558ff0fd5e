"""Gateway wiring: settings -> Redis deployment store + platform clients -> the gRPC servicer and
the OpenAI-compatible HTTP server, both over one ``Inference`` and one API key store."""

from __future__ import annotations

import redis.asyncio as aioredis

from pylon.gateway.v1 import gateway_pb2_grpc
from pylon_services.gateway.api.inference import Inference
from pylon_services.gateway.api.openai_http import OpenAIHttpServer
from pylon_services.gateway.api.servicer import GatewayServicer
from pylon_services.gateway.store.deployments import DeploymentStore
from pylon_services.runtime.auth import ApiKeyStore
from pylon_services.runtime.peers import PlatformClients
from pylon_services.runtime.server import ServiceParts
from pylon_services.runtime.settings import Settings


async def build(settings: Settings, redis: aioredis.Redis) -> ServiceParts:
    clients = PlatformClients(settings, redis)
    store = DeploymentStore(redis)
    serve = Inference(store, clients, settings)
    servicer = GatewayServicer(store, clients, serve)
    # One key store for both transports: one cache, so a revoked key stops working on both at once.
    keys = ApiKeyStore(redis, settings.admin_key, settings.auth_cache_ttl_s)
    http = OpenAIHttpServer(serve, keys, settings)

    return ServiceParts("gateway", [(gateway_pb2_grpc.add_GatewayServiceServicer_to_server, servicer,
                                     "pylon.gateway.v1.GatewayService")],
                        on_start=http.start, on_drain=http.stop, on_stop=clients.close, extra={"http": http}, keys=keys)
