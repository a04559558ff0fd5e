"""Registry wiring: settings -> object store + Redis index -> domain -> servicers (plus AdminService).

At start the index is rebuilt from storage if Redis has none (a new or flushed Redis); a
background loop resyncs models whose writers died mid-write (their write-ahead markers are
older than ``REPAIR_AFTER_S``) and, about hourly, purges the artifacts of versions deleted more
than ``registry_retention_s`` ago.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import redis
import redis.asyncio as aioredis

from pylon.admin.v1 import admin_pb2_grpc
from pylon.registry.v1 import registry_pb2_grpc
from pylon_services.registry.api.servicer import RegistryServicer
from pylon_services.registry.domain import rebuild, retention
from pylon_services.registry.domain.registry import Registry
from pylon_services.registry.store.read_cache import CachedIndexReader
from pylon_services.registry.store.redis_index import AsyncIndexReader, RedisRegistryIndex
from pylon_services.runtime.admin_api import AdminServicer
from pylon_services.runtime.auth import ApiKeyStore
from pylon_services.runtime.server import ServiceParts
from pylon_services.runtime.settings import Settings
from pylon_services.runtime.stores import object_store

log = logging.getLogger("pylon.registry")
REPAIR_AFTER_S = 5.0
REPAIR_EVERY_S = 2.0
PURGE_EVERY_ROUNDS = 1800  # about hourly


async def _repair_loop(registry: Registry, retention_s: float) -> None:
    rounds = 0
    while True:
        await asyncio.sleep(REPAIR_EVERY_S)
        rounds += 1
        try:
            await asyncio.to_thread(rebuild.repair, registry.store, registry.index, REPAIR_AFTER_S)
            if rounds % PURGE_EVERY_ROUNDS == 0:
                purged = await asyncio.to_thread(retention.purge_expired, registry.store, registry.index, retention_s)
                if purged["versions"]:
                    log.info("purged the artifacts of deleted versions: %s", purged)
                abandoned = await asyncio.to_thread(retention.purge_abandoned_uploads, registry.store, registry.index)
                if abandoned:
                    log.info("discarded %d upload sessions never registered", abandoned)
        except Exception:  # keep repairing; the next round retries
            log.exception("registry index repair failed")


async def build(settings: Settings, redis_async: aioredis.Redis) -> ServiceParts:
    index = RedisRegistryIndex(redis.Redis.from_url(settings.redis_url, max_connections=64))
    registry = Registry(object_store(settings), index, settings.registry_verified_put_max_bytes)
    keys = ApiKeyStore(redis_async, settings.admin_key, settings.auth_cache_ttl_s)
    reader = CachedIndexReader(AsyncIndexReader(redis_async), redis_async, settings.registry_read_cache_ttl_s)
    index.listeners.append(reader.invalidate)  # read-your-writes here, before the message arrives
    task: asyncio.Task[None] | None = None

    async def start() -> None:
        nonlocal task
        await reader.start()
        if not await asyncio.to_thread(index.is_built):
            await asyncio.to_thread(rebuild.rebuild_all, registry.store, index)
        task = asyncio.create_task(_repair_loop(registry, settings.registry_retention_s))

    async def stop() -> None:
        await reader.stop()
        if task:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return ServiceParts("registry", [
        (registry_pb2_grpc.add_RegistryServiceServicer_to_server, RegistryServicer(registry, reader, settings.internal_key),
         "pylon.registry.v1.RegistryService"),
        (admin_pb2_grpc.add_AdminServiceServicer_to_server, AdminServicer(keys), "pylon.admin.v1.AdminService"),
    ], on_start=start, on_stop=stop, keys=keys)
