"""Gateway wiring: settings -> Redis deployment store + platform clients -> the gRPC servicer and
the OpenAI-compatible HTTP server, both over one ``Inference`` and one API key store, and the
controller that autoscales and rolls out deployments (one gateway at a time, by a Redis lease)."""

from __future__ import annotations

import uuid

import redis.asyncio as aioredis

from pylon.gateway.v1 import gateway_pb2_grpc
from pylon_services.gateway.api.admission import Admission
from pylon_services.gateway.api.controller import Controller
from pylon_services.gateway.api.inference import Inference
from pylon_services.gateway.api.openai_http import OpenAIHttpServer
from pylon_services.gateway.api.replicas import ReplicaJobs
from pylon_services.gateway.api.servicer import GatewayServicer
from pylon_services.gateway.api.serving import AutoscaleHooks
from pylon_services.gateway.domain.replacement import ReplacePolicy
from pylon_services.gateway.store.deployments import DeploymentStore
from pylon_services.gateway.store.quotas import QuotaStore
from pylon_services.gateway.store.serving import ServingCounters
from pylon_services.runtime.auth import ApiKeyStore
from pylon_services.runtime.peers import PlatformClients
from pylon_services.runtime.server import ServiceParts
from pylon_services.runtime.settings import Settings


async def build(settings: Settings, redis: aioredis.Redis) -> ServiceParts:
    clients = PlatformClients(settings, redis)
    store = DeploymentStore(redis)
    jobs = ReplicaJobs(store, clients, settings.internal_key, settings.gateway_replica_max_retries)
    counters = ServingCounters(redis, uuid.uuid4().hex[:12])
    hooks = AutoscaleHooks(store, counters, jobs, settings.admin_key, settings.gateway_cold_start_wait_s)
    serve = Inference(store, clients, settings, hooks)
    store.on_write(serve.forget)  # this gateway's writes (API and controller) reach its cache at once
    # Quotas in the platform's Redis (shared by every gateway); the fair queue in this process.
    admission = Admission(QuotaStore(redis), settings)
    servicer = GatewayServicer(store, clients, serve, jobs, counters, admission)
    replacing = ReplacePolicy(settings.gateway_replace_backoff_s, settings.gateway_replace_backoff_max_s,
                              settings.gateway_replace_max_failures)
    controller = Controller(store, counters, jobs, clients, hooks, settings.admin_key,
                            settings.gateway_controller_interval_s, replacing)
    # One key store for both transports: one cache, so a revoked key stops working on both at once.
    keys = ApiKeyStore(redis, settings.admin_key, settings.auth_cache_ttl_s)
    http = OpenAIHttpServer(serve, keys, settings, admission)

    async def start() -> None:
        await http.start()
        await controller.start()

    async def stop() -> None:
        await controller.stop()
        await clients.close()

    return ServiceParts("gateway", [(gateway_pb2_grpc.add_GatewayServiceServicer_to_server, servicer,
                                     "pylon.gateway.v1.GatewayService")],
                        on_start=start, on_drain=http.stop, on_stop=stop,
                        extra={"http": http, "controller": controller, "admission": admission}, keys=keys)
