"""Registry wiring: settings -> object store -> domain -> servicers (plus AdminService)."""

from __future__ import annotations

import redis.asyncio as aioredis

from pylon.admin.v1 import admin_pb2_grpc
from pylon.registry.v1 import registry_pb2_grpc
from pylon_services.registry.api.servicer import RegistryServicer
from pylon_services.registry.domain.service import Registry
from pylon_services.runtime.admin_api import AdminServicer
from pylon_services.runtime.auth import ApiKeyStore
from pylon_services.runtime.server import ServiceParts
from pylon_services.runtime.settings import Settings
from pylon_services.runtime.stores import object_store


async def build(settings: Settings, redis: aioredis.Redis) -> ServiceParts:
    registry = Registry(object_store(settings))
    keys = ApiKeyStore(redis, settings.admin_key, settings.auth_cache_ttl_s)
    return ServiceParts("registry", [
        (registry_pb2_grpc.add_RegistryServiceServicer_to_server, RegistryServicer(registry),
         "pylon.registry.v1.RegistryService"),
        (admin_pb2_grpc.add_AdminServiceServicer_to_server, AdminServicer(keys), "pylon.admin.v1.AdminService"),
    ])
