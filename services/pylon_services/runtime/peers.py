"""gRPC clients one service uses to reach another (registry, scheduler, engine replicas).

Calls forward the caller's API key and request id, and never outlive the caller's deadline.
"""

from __future__ import annotations

import json

import grpc
import redis.asyncio as aioredis

from pylon.registry.v1 import registry_pb2_grpc
from pylon.scheduler.v1 import scheduler_pb2_grpc
from pylon_services.common.errors import Unavailable
from pylon_services.runtime.internal_auth import EngineStub
from pylon_services.runtime.server import ENDPOINTS_KEY
from pylon_services.runtime.settings import Settings


class PlatformClients:
    def __init__(self, settings: Settings, redis: aioredis.Redis) -> None:
        self._settings = settings
        self._redis = redis
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._engines: dict[str, EngineStub] = {}

    async def _channel(self, address: str) -> grpc.aio.Channel:
        ch = self._channels.get(address)
        if ch is None:
            opts = [("grpc.max_receive_message_length", self._settings.max_message_bytes)]
            ch = self._channels[address] = grpc.aio.insecure_channel(address, options=opts)
        return ch

    async def _service_address(self, service: str) -> str:
        configured = getattr(self._settings, f"{service}_address")
        if configured:
            return configured
        raw = await self._redis.hget(ENDPOINTS_KEY, service)
        if raw is None:
            raise Unavailable(f"the {service} service is not registered; is it running?")
        return json.loads(raw)["address"]

    async def registry(self) -> registry_pb2_grpc.RegistryServiceStub:
        return registry_pb2_grpc.RegistryServiceStub(await self._channel(await self._service_address("registry")))

    async def scheduler(self) -> scheduler_pb2_grpc.SchedulerServiceStub:
        return scheduler_pb2_grpc.SchedulerServiceStub(await self._channel(await self._service_address("scheduler")))

    async def engine(self, address: str) -> EngineStub:
        """A replica's EngineService; every call carries the platform's internal key."""
        stub = self._engines.get(address)
        if stub is None:
            opts = [("grpc.max_receive_message_length", self._settings.max_message_bytes)]
            channel = self._channels[f"engine:{address}"] = grpc.aio.insecure_channel(address, options=opts)
            stub = self._engines[address] = EngineStub(channel, self._settings.internal_key)
        return stub

    async def close(self) -> None:
        for ch in self._channels.values():
            await ch.close()

