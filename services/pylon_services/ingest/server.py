"""Ingest wiring: settings -> object store -> domain -> servicer."""

from __future__ import annotations

import redis.asyncio as aioredis

from pylon.ingest.v1 import ingest_pb2_grpc
from pylon_services.ingest.api.servicer import IngestServicer
from pylon_services.ingest.domain.datasets import Datasets
from pylon_services.runtime.server import ServiceParts
from pylon_services.runtime.settings import Settings
from pylon_services.runtime.stores import object_store

MAX_STREAMED_UPLOAD_BYTES = 1 << 30


async def build(settings: Settings, redis: aioredis.Redis) -> ServiceParts:
    servicer = IngestServicer(Datasets(object_store(settings)), MAX_STREAMED_UPLOAD_BYTES)
    return ServiceParts("ingest", [(ingest_pb2_grpc.add_IngestServiceServicer_to_server, servicer,
                                    "pylon.ingest.v1.IngestService")])
