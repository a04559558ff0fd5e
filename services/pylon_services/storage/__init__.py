"""Object storage adapters (S3 and local filesystem) behind ``ObjectStore``."""

from pylon_services.storage.base import (
    CompletedPart,
    EtagMismatch,
    ListPage,
    ObjectExists,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
)

__all__ = [
    "CompletedPart",
    "EtagMismatch",
    "ListPage",
    "ObjectExists",
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectStore",
]
