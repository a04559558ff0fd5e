"""Build adapters from settings (the one place that reads object-store settings)."""

from __future__ import annotations

from pylon_services.runtime.settings import Settings
from pylon_services.storage.base import ObjectStore


def object_store(settings: Settings) -> ObjectStore:
    from pylon_services.storage.factory import open_store

    return open_store(settings.object_store_url, endpoint_url=settings.s3_endpoint_url or None,
                      public_endpoint_url=settings.s3_public_endpoint_url or None,
                      access_key=settings.s3_access_key or None, secret_key=settings.s3_secret_key or None,
                      region=settings.s3_region)
