"""Ingest wiring: settings -> object store, Redis state, Ray runner -> use cases -> servicer."""

from __future__ import annotations

import redis.asyncio as aioredis
from pydantic_settings import BaseSettings, SettingsConfigDict

from pylon.ingest.v1 import ingest_pb2_grpc
from pylon_services.ingest.api.servicer import IngestServicer
from pylon_services.ingest.domain.service import Ingest
from pylon_services.ingest.store.ray_runner import RayRunner
from pylon_services.ingest.store.redis_state import RedisState
from pylon_services.runtime.server import ServiceParts
from pylon_services.runtime.settings import Settings
from pylon_services.runtime.stores import object_store


class IngestSettings(BaseSettings):
    """Ingest-only knobs (``PYLON_INGEST_*``)."""

    model_config = SettingsConfigDict(env_prefix="PYLON_INGEST_", frozen=True, extra="ignore")

    # Largest file accepted through gRPC streaming (bigger files use an upload session).
    max_streamed_upload_bytes: int = 1 << 30
    # Default part size handed to upload sessions whose client does not choose one.
    default_part_size: int = 16 << 20
    # An operation whose runner stops renewing its lease for this long is adopted by another
    # replica (or by this one after a restart) and run again.
    op_lease_s: float = 15.0
    # CPUs each processing task reserves on Ray.
    task_cpus: float = 1.0
    # Uncompressed JSONL/CSV/text files (and Parquet, by row groups) larger than this are split
    # into chunks of about this size, each processed by its own Ray task.
    chunk_bytes: int = 64 << 20
    # ... but only on a Ray cluster with at least this many CPUs: chunks cost ~1.5x the CPU work
    # of one pass (their merge re-reads the output), which a 2-core machine does not win back.
    chunk_min_cpus: float = 4


def store_connection(settings: Settings) -> dict[str, object]:
    """What a Ray task needs to open the same object store (credentials travel with the task)."""
    return {"url": settings.object_store_url, "endpoint_url": settings.s3_endpoint_url or None,
            "access_key": settings.s3_access_key or None, "secret_key": settings.s3_secret_key or None,
            "region": settings.s3_region}


async def build(settings: Settings, redis: aioredis.Redis) -> ServiceParts:
    own = IngestSettings()
    store = object_store(settings)
    state = RedisState(redis)
    runner = RayRunner(state, store, store_connection(settings), settings.redis_url, ray_address=settings.ray_address,
                       node_ip=settings.ray_node_ip_address, lease_s=own.op_lease_s, task_cpus=own.task_cpus,
                       chunk_bytes=own.chunk_bytes, chunk_min_cpus=own.chunk_min_cpus,
                       connect_timeout_s=settings.ray_connect_timeout_s)
    ingest = Ingest(store, state, runner, own.default_part_size)
    servicer = IngestServicer(ingest, own.max_streamed_upload_bytes)
    return ServiceParts("ingest", [(ingest_pb2_grpc.add_IngestServiceServicer_to_server, servicer,
                                    "pylon.ingest.v1.IngestService")], on_start=runner.start, on_stop=runner.stop)
